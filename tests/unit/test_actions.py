"""Deploy plan: sections, placeholder quoting, step order and dedup, prepare commands (running
them through real processes is tests/e2e/test_actions.py)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import pytest

from lematt.config import Actions, Section, Settings, SshForward, SshRun, SshUpload
from lematt.deploy.plan import LOCAL, Step, deploy_plan
from lematt.execution import UploadFile
from lematt.model import CertLine
from lematt.store.layout import Layout

A = CertLine(1, ("a.example.com", "www.a.example.com"))
MAIL = CertLine(2, ("mail.example.com",))
ACTIONS = Actions(
    default=Section("default", upload_certs=("cp CERTS /srv",), update=("reload nginx",)),
    every=Section("every", upload_keys=("push KEYS",), update=("reload nginx", "log DOMAINS_ALL")),
    overrides=(Section("override-mail", domains=frozenset({"mail.example.com"}),
                       prepare=("fwd DOMAIN",), update=("reload postfix DOMAINS_CN",)),),
)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(Settings(conf_dir=tmp_path / "my conf", account_key=tmp_path / "k"),
                  test=False)


def no_files(lines: object, kind: str, mode: int | None) -> tuple[()]:
    return ()


def hosts_of(dest: str) -> str:
    """Stand-in resolver: aliases web-a and web-b are one machine."""
    return {"web-a": "[127.0.0.2]:2222", "web-b": "[127.0.0.2]:2222"}.get(dest, dest)


def stored_files(lines: Sequence[CertLine], kind: str, mode: int | None
                 ) -> tuple[UploadFile, ...]:
    """Stand-in for deploy.files: per line, its real file and its per-name links."""
    where = Path("/my conf/prod/.pairs") if kind == "uploadCerts" else Path("/k $(x)")
    return tuple(UploadFile(where / f"{n}-{kind}", f"{n}-{kind}")
                 for line in lines for n in line.names)


def test_steps_uploads_first_then_distinct_updates(layout: Layout) -> None:
    plan = deploy_plan(ACTIONS, [A, MAIL], layout, hosts_of, stored_files)
    assert list(plan) == [LOCAL]
    steps = plan[LOCAL]
    kinds = [s.kind for s in steps]
    assert kinds == ["uploadCerts", "uploadKeys", "update", "update", "update"]
    # CERTS / KEYS: the listed files, each quoted, in order (no glob for the shell).
    assert steps[0] == Step("uploadCerts", "default", LOCAL,
                            "cp '/my conf/prod/.pairs/a.example.com-uploadCerts' "
                            "'/my conf/prod/.pairs/www.a.example.com-uploadCerts' /srv")
    assert steps[1].section == "every"
    assert shlex.split(steps[1].command) == [  # every renewed cert's files
        "push", "/k $(x)/a.example.com-uploadKeys", "/k $(x)/www.a.example.com-uploadKeys",
        "/k $(x)/mail.example.com-uploadKeys"]
    updates = [s.command for s in steps[2:]]
    assert updates == ["reload nginx", "reload postfix mail.example.com",
                       "log a.example.com www.a.example.com mail.example.com"]


def test_only_sections_of_renewed_certs_run(layout: Layout) -> None:
    steps = deploy_plan(ACTIONS, [MAIL], layout, hosts_of, no_files)[LOCAL]
    assert {s.section for s in steps} == {"override-mail", "every"}


def test_two_aliases_of_one_host_share_one_queue(layout: Layout) -> None:
    actions = Actions(default=Section(
        "default",
        upload_certs=(SshUpload("web-a", "/etc/ssl"),),
        upload_keys=(SshUpload("web-b", "/etc/ssl/private"),),
        update=(SshRun("web-b", "reload DOMAINS_CN"), SshRun("web-a"), "echo local",
                SshRun("web-b", "reload DOMAINS_CN")),
    ))
    plan = deploy_plan(actions, [A], layout, hosts_of, no_files)
    assert list(plan) == ["[127.0.0.2]:2222", LOCAL]
    remote = plan["[127.0.0.2]:2222"]
    assert [(s.kind, s.destination, s.command) for s in remote] == [
        ("uploadCerts", "web-a", None), ("uploadKeys", "web-b", None),
        ("update", "web-b", "reload a.example.com"), ("update", "web-a", None)]
    assert remote[0].remote_dir == "/etc/ssl"
    assert [s.command for s in plan[LOCAL]] == ["echo local"]


def test_forwarders_once_per_line() -> None:
    fwd = SshForward("web-a", "http://central.example.com")
    actions = Actions(default=Section("default", prepare=(fwd, "local DOMAIN")),
                      every=Section("every", prepare=(fwd,)))
    assert actions.forwarders_for(A) == [fwd]
    assert actions.prepares_for(A) == [("local", "a.example.com"), ("local", "www.a.example.com")]


def test_prepare_one_per_name_with_domain_quoted() -> None:
    assert ACTIONS.prepares_for(MAIL) == [("fwd", "mail.example.com")]
    assert ACTIONS.prepares_for(A) == []


def test_local_and_ssh_runners_are_runners() -> None:
    from lematt.execution import Runner
    from lematt.execution.local import LocalRunner
    from lematt.execution.ssh import SshPool
    from lematt.execution.ssh_config import SshDestination

    assert isinstance(LocalRunner(), Runner)
    destination = SshDestination.resolve("deploy@127.0.0.2:2222", None)
    assert isinstance(SshPool().runner(destination), Runner)


def test_certs_name_the_real_files_and_only_the_lines_own_links(tmp_path: Path) -> None:
    """What CERTS / KEYS stand for, on a stored tree: the regular file behind each upstream
    name (in .pairs, under that same name) and the line's own per-name links; a name that
    is also a single-name line stays that line's (its upstream name is a link into .pairs
    too, and must never be sent as the SAN line's link)."""
    from datetime import UTC, datetime

    from lematt import crypto
    from lematt.deploy.files import upload_files
    from lematt.store.tree import Store
    from lematt.testing.certs import LocalCA

    settings = Settings(conf_dir=tmp_path, account_key=tmp_path / "k", key_types=("ec",))
    store = Store(settings, test=False)
    store.ensure_dirs()
    single = CertLine(1, ("mail.example.com",))
    san = CertLine(2, ("example.com", "mail.example.com", "www.example.com"))
    for line in (single, san):
        key = crypto.load_private_key(crypto.generate_private_pem("ec"))
        store.commit(line, "ec", key_pem=crypto.private_key_pem(key),
                     csr_pem=crypto.csr_pem(crypto.make_csr(key, line.names)),
                     chain_pem=LocalCA().issue_days(key, line.names, datetime.now(UTC), 1))
    files = upload_files(store.layout, ("ec",), [san], "uploadCerts", None)
    main = store.layout.paths(san, "ec").cert
    assert [f.name for f in files] == [main.name, "example.com-cert-combined.prime256v1.pem",
                                       "www.example.com-cert-combined.prime256v1.pem"]
    real = files[0]
    assert real.local.name == main.name and real.symlink_target is None
    assert real.local.parent.parent == store.root / ".pairs" and not real.local.is_symlink()
    assert real.local.read_bytes() == main.read_bytes()
    assert {f.symlink_target for f in files[1:]} == {main.name}
    # The single line's own name is still its own file.
    (only,) = upload_files(store.layout, ("ec",), [single], "uploadCerts", None)
    assert only.name == "mail.example.com-cert-combined.prime256v1.pem"
    assert only.local.read_bytes() == store.layout.paths(single, "ec").cert.read_bytes()
