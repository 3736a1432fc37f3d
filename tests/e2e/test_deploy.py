"""Remote deploys end to end: lematt against a real Pebble, uploading to real sshd hosts."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lematt.testing.sshd import ClientKit
from tests.e2e.conftest import MakeConf, RunLematt, SshdHostFactory
from tests.e2e.faults.pairs import check_pairs


def conf_with(make_conf: MakeConf, tmp_path: Path, kit: ClientKit, domains: str,
              actions: dict[str, Any], *, yaml_form: bool = False, **extra: Any) -> Path:
    """lematt.conf using the kit's ssh config, plus actions written as INI (JSON values) or
    YAML from the same structure."""
    conf = make_conf(tmp_path, domains, extra_conf={"sshConfig": kit.ssh_config, **extra})
    if yaml_form:
        (tmp_path / "actions.yaml").write_text(yaml.safe_dump(actions))
    else:
        text = ""
        for section, keys in actions.items():
            text += f"[{section}]\n" + "".join(
                f"{k}: {v if isinstance(v, str) else json.dumps(v)}\n" for k, v in keys.items())
        (tmp_path / "actions.conf").write_text(text)
    return conf


def listing(directory: Path) -> dict[str, tuple[str, int | str]]:
    """name -> ("link", target) or ("file", mode)."""
    out: dict[str, tuple[str, int | str]] = {}
    for p in directory.iterdir():
        if p.is_symlink():
            out[p.name] = ("link", os.readlink(p))
        else:
            out[p.name] = ("file", stat.S_IMODE(p.stat().st_mode))
    return out


def summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_uploads_land_and_updates_run_after_them_once(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    a, b = sshd_host("127.0.0.2"), sshd_host("127.0.0.3")
    # b is named as user@address:port; a Host block for the address supplies key and
    # known_hosts, as a user's ~/.ssh/config would.
    ssh_client_kit.add_alias(b.address, b.address, b.port)
    certs_a, keys_a, certs_b = tmp_path / "a-certs", tmp_path / "a-keys", tmp_path / "b-certs"
    for d in (certs_a, keys_a, certs_b):
        d.mkdir()
    events = tmp_path / "events.log"
    update_a = {"ssh": a.alias, "run": f"ls {certs_a} {keys_a} >> {events}; "
                                       f"echo reload-a DOMAINS_CN >> {events}"}
    actions = {
        "default": {
            "uploadCerts": [{"ssh": a.alias, "to": str(certs_a)},
                            {"ssh": f"{b.user}@{b.address}:{b.port}", "to": str(certs_b),
                             "mode": "0640"}],
            "uploadKeys": [{"ssh": a.alias, "to": str(keys_a)}],
            "update": [update_a],
        },
        "every": {"update": [update_a]},
    }
    conf = conf_with(make_conf, tmp_path, ssh_client_kit, "dep.deploy.test www\n", actions)
    result = run_lematt("--test", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 0, result.stderr
    stem = "dep.deploy.test_www.dep.deploy.test"
    expected_certs = {}
    for tag in ("rsa2048", "prime256v1"):
        main = f"{stem}-cert-combined.{tag}.test.pem"
        expected_certs[main] = ("file", 0o644)
        for name in ("dep.deploy.test", "www.dep.deploy.test"):
            expected_certs[f"{name}-cert-combined.{tag}.test.pem"] = ("link", main)
    assert listing(certs_a) == expected_certs
    assert listing(certs_b) == {k: (v[0], 0o640 if v[0] == "file" else v[1])
                                for k, v in expected_certs.items()}
    keys = listing(keys_a)
    assert keys[f"{stem}-key.prime256v1.test.pem"] == ("file", 0o600)
    assert keys["www.dep.deploy.test-key.rsa2048.test.pem"] == (
        "link", f"{stem}-key.rsa2048.test.pem")
    assert len(keys) == 6
    # The update ran once, after every upload to its host: it saw all the files.
    log = events.read_text().splitlines()
    assert log.count("reload-a dep.deploy.test") == 1
    assert set(expected_certs) | set(keys) <= set(log)
    hosts = {s["host"] for s in summary(tmp_path / "run.json")["actions"]}
    assert hosts == {f"[127.0.0.2]:{a.port}", f"[127.0.0.3]:{b.port}"}


def test_two_aliases_of_one_host_form_one_queue(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.2", alias="upload-2")
    ssh_client_kit.add_alias("reload-2", host.address, host.port)
    target = tmp_path / "certs"
    target.mkdir()
    seen = tmp_path / "seen"
    actions = {"default": {
        "uploadCerts": [{"ssh": "upload-2", "to": str(target)}],
        "update": [{"ssh": "reload-2", "run": f"ls {target} > {seen}"}],
    }}
    conf = conf_with(make_conf, tmp_path, ssh_client_kit, "alias.deploy.test\n", actions,
                     keyTypes="ec")
    result = run_lematt("--test", "--cron", "--config", conf, "--json", tmp_path / "run.json")
    assert result.returncode == 0, result.stderr
    steps = summary(tmp_path / "run.json")["actions"]
    assert [(s["kind"], s["host"]) for s in steps] == [
        ("uploadCerts", f"[127.0.0.2]:{host.port}"), ("update", f"[127.0.0.2]:{host.port}")]
    assert seen.read_text().split() == ["alias.deploy.test-cert-combined.prime256v1.test.pem"]


def test_unreachable_and_wrong_key_hosts_fail_alone_then_pending_deploy_is_retried(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    good, liar = sshd_host("127.0.0.2"), sshd_host("127.0.0.4")
    # The client believes another key for 127.0.0.4: its real key now looks "changed".
    ssh_client_kit.add_known_host(liar.address, liar.port, ssh_client_kit.public_line)
    ssh_client_kit.add_alias("nobody-9", "127.0.0.9", good.port)
    dirs = {n: tmp_path / n for n in ("good", "liar", "nobody")}
    for d in dirs.values():
        d.mkdir()
    marker = tmp_path / "liar-reloaded"
    actions = {"default": {
        "uploadCerts": [{"ssh": good.alias, "to": str(dirs["good"])},
                        {"ssh": liar.alias, "to": str(dirs["liar"])},
                        {"ssh": "nobody-9", "to": str(dirs["nobody"])}],
        "update": [{"ssh": liar.alias, "run": f"touch {marker}"}],
    }}
    conf = conf_with(make_conf, tmp_path, ssh_client_kit, "iso.deploy.test\n", actions,
                     keyTypes="ec", sshConnectTimeout=5)
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 1
    assert "renewed iso.deploy.test (EC)" in first.stdout
    assert "connection refused" in first.stderr and "nobody-9" in first.stderr
    assert "does not match" in first.stderr and liar.alias in first.stderr
    assert "skipped" in first.stderr and not marker.exists()
    assert [p.name for p in dirs["good"].iterdir()] == [
        "iso.deploy.test-cert-combined.prime256v1.test.pem"]
    assert list(dirs["liar"].iterdir()) == []
    cert = tmp_path / "test/cert/iso.deploy.test-cert-combined.prime256v1.test.pem"
    issued = cert.read_bytes()

    # Fix the host key; the next run retries only what is pending, without a new order.
    ssh_client_kit.add_known_host(liar.address, liar.port, liar.host_key)
    second = run_lematt("--test", "--cron", "--config", conf)
    assert second.returncode == 1  # 127.0.0.9 still has nobody listening
    assert "retrying the pending deploy" in second.stdout
    assert "renewed" not in second.stdout and cert.read_bytes() == issued
    assert [p.name for p in dirs["liar"].iterdir()] == [cert.name]
    assert marker.exists()
    assert f"127.0.0.2]:{good.port}: " not in second.stderr  # the good host was not redone
    pending = json.loads((tmp_path / "test/.deploy-pending.json").read_text())
    assert pending["owed"] == [{"names": ["iso.deploy.test"],
                                "hosts": [f"[127.0.0.9]:{good.port}"]}]

    # The user drops the dead host from actions.conf: its debt is void, the run is quiet.
    del actions["default"]["uploadCerts"][2]
    conf_with(make_conf, tmp_path, ssh_client_kit, "iso.deploy.test\n", actions,
              keyTypes="ec", sshConnectTimeout=5)
    third = run_lematt("--test", "--cron", "--config", conf)
    assert (third.returncode, third.stdout, third.stderr) == (0, "", "")
    assert not (tmp_path / "test/.deploy-pending.json").exists()


def test_hanging_command_is_stopped_at_its_timeout(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.5")
    actions = {"default": {"update": [{"ssh": host.alias, "run": "sleep 313; echo never"}]}}
    conf = conf_with(make_conf, tmp_path, ssh_client_kit, "hang.deploy.test\n", actions,
                     keyTypes="ec", sshCommandTimeout=2)
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 1
    assert "sleep 313" in result.stderr and "timed out" in result.stderr
    alive = subprocess.run(["pgrep", "-f", "sleep 313"], capture_output=True, check=False)
    assert alive.returncode == 1, alive.stdout


def test_forced_command_key_runs_with_a_bare_ssh_action(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    marker = tmp_path / "forced-ran"
    host = sshd_host("127.0.0.6", forced_command=f"touch {marker}")
    actions = {"default": {"update": [{"ssh": host.alias}]}}
    conf = conf_with(make_conf, tmp_path, ssh_client_kit, "forced.deploy.test\n", actions,
                     keyTypes="ec")
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 0, result.stderr
    assert marker.exists()


def test_ini_and_yaml_actions_deploy_the_same(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt,
        sshd_host: SshdHostFactory, ssh_client_kit: ClientKit) -> None:
    host = sshd_host("127.0.0.7")
    results = []
    for form in ("ini", "yaml"):
        work = tmp_path / form
        target = work / "remote"
        target.mkdir(parents=True)
        actions = {"default": {"uploadCerts": [{"ssh": host.alias, "to": str(target),
                                                "mode": "0600"}],
                               "uploadKeys": [{"ssh": host.alias, "to": str(target)}]}}
        conf = conf_with(make_conf, work, ssh_client_kit, "form.deploy.test alt\n", actions,
                         yaml_form=form == "yaml", keyTypes="ec")
        result = run_lematt("--test", "--config", conf)
        assert result.returncode == 0, result.stderr
        results.append(listing(target))
    assert results[0] == results[1] and len(results[0]) == 6


def test_rsync_a_of_certs_and_keys_delivers_regular_files_that_match(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    """The original lematt's documented deploy, ``rsync -a CERTS host:dir/`` as a shell
    action, on lematt's tree whose upstream names are links into ``.pairs``: what arrives is
    a regular file under each upstream name (not a link that dangles on the other side), the
    per-name links point at it, and every key matches its certificate - after the first
    order and again after a renewal with new keys. The conf dir has a space in its name, so
    the expanded paths must be quoted."""
    if shutil.which("rsync") is None:
        pytest.fail("rsync is missing: apt-get install rsync (.ci/run installs it)")
    remote = tmp_path / "remote"
    certs_out, keys_out = remote / "certs", remote / "keys"
    certs_out.mkdir(parents=True)
    keys_out.mkdir()
    actions = ("[default]\n"
               f'uploadCerts: ["rsync -a CERTS \'{certs_out}/\'"]\n'
               f'uploadKeys: ["rsync -a KEYS \'{keys_out}/\'"]\n')
    conf = make_conf(tmp_path / "my conf", "rs.deploy.test www\nsolo.deploy.test\n",
                     actions_text=actions,
                     # Due at every run (Pebble's certificates last 5 years), new keys.
                     extra_conf={"reauthorizeDays": 5000, "alwaysGenerateNewKeys": "yes"})
    tree = conf.parent / "test"
    for run in range(2):
        result = run_lematt("--test", "--config", conf)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "renewed solo.deploy.test" in result.stdout
        for out, local in ((certs_out, tree / "cert"), (keys_out, tree / "key")):
            # Every name of the tree arrived; the upstream names as regular files with the
            # bytes they show in the tree, the per-name links as links beside them.
            assert sorted(p.name for p in out.iterdir()) == sorted(
                p.name for p in local.iterdir() if not p.name.startswith("."))
            for path in out.iterdir():
                shown = local / path.name
                if os.readlink(shown).startswith("../.pairs/"):
                    assert not path.is_symlink() and path.is_file(), path
                else:
                    assert os.readlink(path) == os.readlink(shown)
                    assert not Path(os.readlink(path)).is_absolute()
                assert path.read_bytes() == shown.read_bytes(), f"{path.name} (run {run + 1})"
        # 2 lines x 2 key types, plus the SAN line's two per-name links per key type.
        assert len(check_pairs(certs_out, keys_out)) == 8
        mains = [p for p in certs_out.iterdir() if not p.is_symlink()]
        assert len(mains) == 4
