"""End to end: `python -m lematt` against a real Pebble, through the normal CLI path."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lematt import crypto
from lematt.testing.pebble import PebbleRig
from tests.e2e.conftest import REPO_ROOT, ChallengeDrop, MakeConf, RunLematt


def tree(conf: Path, mode: str = "test") -> dict[str, Path]:
    root = conf.parent / mode
    return {"key": root / "key", "cert": root / "cert", "csr": root / "csr"}


def leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(path: Path) -> list[str]:
    ext = leaf(path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sorted(ext.value.get_values_for_type(x509.DNSName))


def assert_pair(key_path: Path, cert_path: Path) -> None:
    key = crypto.load_private_key(key_path.read_bytes())
    assert crypto.public_key_der(key) == crypto.read_certificate(
        cert_path.read_bytes()).public_key_der
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_issues_single_san_and_shorthand_lines_rsa_and_ec(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "# comment\n\nsingle.run.test\nsan.run.test www api\n")
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 0, first.stderr
    t = tree(conf)
    for tag, kind in (("rsa2048", rsa.RSAPrivateKey), ("prime256v1", ec.EllipticCurvePrivateKey)):
        key = t["key"] / f"single.run.test-key.{tag}.test.pem"
        cert = t["cert"] / f"single.run.test-cert-combined.{tag}.test.pem"
        assert_pair(key, cert)
        assert isinstance(crypto.load_private_key(key.read_bytes()), kind)
        assert san(cert) == ["single.run.test"]
        # The original's name: first name, then the others sorted by reversed labels.
        stem = "san.run.test_api.san.run.test_www.san.run.test"
        san_cert = t["cert"] / f"{stem}-cert-combined.{tag}.test.pem"
        assert_pair(t["key"] / f"{stem}-key.{tag}.test.pem", san_cert)
        assert san(san_cert) == ["api.san.run.test", "san.run.test", "www.san.run.test"]
        for name in ("san.run.test", "www.san.run.test", "api.san.run.test"):
            link = t["cert"] / f"{name}-cert-combined.{tag}.test.pem"
            assert link.is_symlink() and os.readlink(link) == san_cert.name
            assert os.readlink(t["key"] / f"{name}-key.{tag}.test.pem") == (
                f"{stem}-key.{tag}.test.pem")
        # The upstream names switch key and certificate together: links through the pair's
        # one pointer in .pairs (lematt.store.pairs).
        # The file it resolves to carries the upstream name itself.
        assert os.readlink(san_cert) == f"../.pairs/{stem}.{tag}/{san_cert.name}"
        assert (t["csr"] / f"{stem}-csr.{tag}.test.csr").read_bytes().startswith(
            b"-----BEGIN CERTIFICATE REQUEST-----")
    # Full chain: leaf plus at least one intermediate.
    assert (t["cert"] / "single.run.test-cert-combined.prime256v1.test.pem").read_text().count(
        "BEGIN CERTIFICATE") >= 2
    assert "renewed single.run.test (RSA)" in first.stdout
    assert not (conf.parent / "prod").exists()

    before = {p: p.read_bytes() for p in t["cert"].iterdir()}
    second = run_lematt("--test", "--config", conf)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout and "renewed" not in second.stdout
    assert {p: p.read_bytes() for p in t["cert"].iterdir()} == before
    quiet = run_lematt("--test", "--cron", "--config", conf)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_reauthorize_renews_with_same_key_and_always_new_keys_rotates(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "keep.run.test\n", extra_conf={"keyTypes": "ec"})
    assert run_lematt("--prod", "--config", conf).returncode == 0
    key = tree(conf, "prod")["key"] / "keep.run.test-key.prime256v1.pem"
    cert = tree(conf, "prod")["cert"] / "keep.run.test-cert-combined.prime256v1.pem"
    key1, cert1 = key.read_bytes(), cert.read_bytes()
    assert not (tree(conf, "prod")["key"] / "keep.run.test-key.rsa2048.pem").exists()

    # A window longer than any Pebble certificate's lifetime makes every cert due.
    conf = make_conf(tmp_path, "keep.run.test\n",
                     extra_conf={"keyTypes": "ec", "reauthorizeDays": 100000})
    renewed = run_lematt("--prod", "--cron", "--config", conf)
    assert renewed.returncode == 0, renewed.stderr
    assert "renewed keep.run.test (EC)" in renewed.stdout and "same key" in renewed.stdout
    assert key.read_bytes() == key1 and cert.read_bytes() != cert1
    assert_pair(key, cert)

    conf = make_conf(tmp_path, "keep.run.test\n", extra_conf={
        "keyTypes": "ec", "reauthorizeDays": 100000, "alwaysGenerateNewKeys": True})
    rotated = run_lematt("--prod", "--config", conf)
    assert rotated.returncode == 0, rotated.stderr
    assert key.read_bytes() != key1
    assert_pair(key, cert)


def test_failed_order_keeps_old_pair_and_fails_only_that_job(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    domains = "fails.run.test\nworks.run.test\n"
    conf = make_conf(tmp_path, domains, extra_conf={"keyTypes": "ec"})
    assert run_lematt("--test", "--config", conf).returncode == 0
    t = tree(conf)
    bad_key = t["key"] / "fails.run.test-key.prime256v1.test.pem"
    bad_cert = t["cert"] / "fails.run.test-cert-combined.prime256v1.test.pem"
    good_cert = t["cert"] / "works.run.test-cert-combined.prime256v1.test.pem"
    old = (bad_key.read_bytes(), bad_cert.read_bytes())
    good_before = good_cert.read_bytes()

    # Nothing listens on 127.0.0.9: the CA cannot reach this name's challenge. A new account,
    # so that the CA cannot reuse the first run's valid authorization (RFC 8555 7.1.3).
    pebble.add_a("fails.run.test", "127.0.0.9")
    try:
        conf = make_conf(tmp_path, domains, extra_conf={
            "keyTypes": "ec", "reauthorizeDays": 100000, "alwaysGenerateNewKeys": True,
            "accountKey": tmp_path / "second-account.key"})
        result = run_lematt("--test", "--config", conf)
    finally:
        pebble.clear_a("fails.run.test")
    assert result.returncode == 1
    assert "fails.run.test (EC)" in result.stderr and "FAILED" in result.stderr
    assert "renewed works.run.test (EC)" in result.stdout
    assert (bad_key.read_bytes(), bad_cert.read_bytes()) == old
    assert good_cert.read_bytes() != good_before
    assert_pair(bad_key, bad_cert)
    leftovers = [p.name for d in t.values() for p in d.iterdir() if "lematt-tmp" in p.name]
    assert leftovers == []


def test_actions_run_once_per_section_with_placeholders(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    log = tmp_path / "actions.log"
    # A prepare string runs without a shell (as in the original): a script does the append.
    prepare = tmp_path / "prepare.sh"
    prepare.write_text(f"#!/bin/sh\necho \"prepare $1\" >> '{log}'\n")
    prepare.chmod(0o755)
    actions = f"""
[default]
uploadCerts: ["ls -d CERTS >> '{log}'"]
uploadKeys: ["echo keys KEYS >> '{log}'"]
update: ["echo reload-all >> '{log}'", "echo cn DOMAINS_CN >> '{log}'"]

[every]
update: ["echo reload-all >> '{log}'", "echo all DOMAINS_ALL >> '{log}'"]

[override-mail]
domains: mail.act.test
prepare: ["{prepare} DOMAIN"]
update: ["echo mail DOMAINS_CN >> '{log}'"]
"""
    conf = make_conf(tmp_path, "web.act.test www\nmail.act.test\n", actions_text=actions)
    result = run_lematt("--test", "--cron", "--config", conf)
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    certdir = tree(conf)["cert"]
    # CERTS: the combined file (the real one in .pairs, under its upstream name) and the
    # per-name links (in cert/) of web.act.test.
    listed = {Path(p).name for p in lines if p.startswith("/")}
    assert "web.act.test_www.web.act.test-cert-combined.rsa2048.test.pem" in listed
    assert "www.web.act.test-cert-combined.prime256v1.test.pem" in listed
    for p in (Path(p) for p in lines if p.startswith("/")):
        assert p.is_file() and (certdir / p.name).read_bytes() == p.read_bytes()
        assert p.parent == certdir or (p.parent.parent == certdir.parent / ".pairs"
                                       and not p.is_symlink())
    assert lines.count("reload-all") == 1
    assert "cn web.act.test" in lines
    assert "mail mail.act.test" in lines
    all_line = next(line for line in lines if line.startswith("all "))
    assert set(all_line.split()[1:]) == {"web.act.test", "www.web.act.test", "mail.act.test"}
    # One prepare per line (shared by its RSA and EC orders), before the orders.
    assert lines.count("prepare mail.act.test") == 1
    # Uploads before updates.
    first_update = min(i for i, line in enumerate(lines) if not line.startswith(("/", "keys",
                                                                                  "prepare")))
    assert all(not line.startswith(("/", "keys")) for line in lines[first_update:])
    assert "ran [default] update" in result.stdout

    log.unlink()
    again = run_lematt("--test", "--config", conf)
    assert again.returncode == 0 and not log.exists()


def test_ini_and_yaml_give_the_same_files(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    names = "form.run.test alt\n"
    ini = make_conf(tmp_path / "ini", names, extra_conf={"keyTypes": "ec"})
    yml = make_conf(tmp_path / "yaml", names, extra_conf={"keyTypes": ["ec"]}, yaml=True)
    for conf in (ini, yml):
        result = run_lematt("--test", "--config", conf)
        assert result.returncode == 0, result.stderr
    listing = [sorted(p.name for p in tree(c)["cert"].iterdir()) for c in (ini, yml)]
    assert listing[0] == listing[1] and len(listing[0]) == 3
    cert = "form.run.test_alt.form.run.test-cert-combined.prime256v1.test.pem"
    assert san(tree(ini)["cert"] / cert) == san(tree(yml)["cert"] / cert)


def test_bad_config_exits_2_naming_file_and_line_and_changes_nothing(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "ok.run.test\nbad_name.run.test\n")
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 2
    assert "domains:2" in result.stderr and "bad_name.run.test" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "test").exists() and not (tmp_path / "account.key").exists()

    conf = make_conf(tmp_path, "ok.run.test\n", extra_conf={"reauthorizeDay": 3})
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 2 and "reauthorizeDay" in result.stderr
    assert "lematt.conf" in result.stderr

    usage = run_lematt("--config", conf)
    assert usage.returncode == 2 and "--test" in usage.stderr


def test_second_concurrent_run_exits_with_a_clear_message(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, "lock.run.test\n", extra_conf={"keyTypes": "ec"})
    # A real first run holds the lock for as long as its update action waits for `go`.
    go, started = tmp_path / "go", tmp_path / "started"
    (tmp_path / "actions.conf").write_text(
        f"[default]\nupdate: [\"touch '{started}'; for i in $(seq 600); "
        f"do [ -e '{go}' ] && break; sleep 0.1; done\"]\n")
    first = subprocess.Popen([sys.executable, "-m", "lematt", "--test", "--config", str(conf)],
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for _ in range(600):
            if started.exists() or first.poll() is not None:
                break
            time.sleep(0.05)  # bounded wait for the first run to reach its update
        assert started.exists(), first.communicate(timeout=60)
        second = run_lematt("--test", "--config", conf)
        assert second.returncode == 75  # EX_TEMPFAIL: try again later
        assert "another lematt run" in second.stderr and str(first.pid) in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        go.touch()
        _out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # With the first run done, the lock is free again.
    with (tmp_path / ".lematt.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_challenge_listen_serves_tokens_itself(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    names = ("listen.run.test", "www.listen.run.test")
    for name in names:
        pebble.add_a(name, "127.0.0.2")
    try:
        conf = make_conf(tmp_path, "listen.run.test www\n", extra_conf={
            "challengeDropDir": None, "keyTypes": "ec",
            "challengeListen": f"127.0.0.2:{pebble.http_port}"})
        result = run_lematt("--test", "--config", conf)
    finally:
        for name in names:
            pebble.clear_a(name)
    assert result.returncode == 0, result.stderr
    cert = tree(conf)["cert"] / (
        "listen.run.test_www.listen.run.test-cert-combined.prime256v1.test.pem")
    assert san(cert) == sorted(names)


def test_unreachable_ca_is_one_clear_line_and_exit_1(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    conf = make_conf(tmp_path, "down.run.test\n", extra_conf={
        "directoryTest": "https://127.0.0.1:9/dir"})
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 1
    assert "127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_interrupted_run_stops_prepares_removes_tokens_and_keeps_pairs(
        tmp_path: Path, make_conf: MakeConf, pebble: PebbleRig,
        challenge_server: ChallengeDrop) -> None:
    """Ctrl-C (SIGINT) and SIGTERM while an order waits on validation: the prepare command's
    whole process group is stopped, no token file is left, and lematt says so and exits."""
    from tests.fakes import BlackHole

    # Tokens other tests' killed runs may have left (SIGKILL cannot clean up) are not ours.
    tokens_before = set(challenge_server.drop_dir.iterdir())
    for sig in (signal.SIGINT, signal.SIGTERM):
        work = tmp_path / sig.name
        work.mkdir()
        pidfile = work / "prepare.pid"
        script = work / "prepare.sh"  # prepare strings run without a shell: a script forks
        script.write_text(f"#!/bin/sh\nsleep 307 & echo $! > '{pidfile}'; wait\n")
        script.chmod(0o755)
        (work / "actions.conf").write_text(f'[default]\nprepare: ["{script}"]\n')
        conf = make_conf(work, "stuck.run.test\n", extra_conf={"keyTypes": "ec"})
        # The CA's validation connects to a server that never answers: the order hangs.
        hole = BlackHole("127.0.0.8", pebble.http_port)
        pebble.add_a("stuck.run.test", "127.0.0.8")
        try:
            lematt = subprocess.Popen(
                [sys.executable, "-m", "lematt", "--test", "--config", str(conf)],
                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                for _ in range(600):
                    if hole.clients and pidfile.exists() and pidfile.read_text().strip():
                        break
                    time.sleep(0.05)  # bounded wait until the order is in validation
                assert hole.clients, "the CA never tried to validate"
                lematt.send_signal(sig)
                _out, err = lematt.communicate(timeout=60)
            finally:
                if lematt.poll() is None:
                    lematt.kill()
        finally:
            pebble.clear_a("stuck.run.test")
            hole.close()
        assert lematt.returncode == 130 and "interrupted" in err, err
        assert "Traceback" not in err
        child = int(pidfile.read_text())
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(
            f"/proc/{child}/stat").read_text().split()[2]
        assert set(challenge_server.drop_dir.iterdir()) == tokens_before
        assert not (work / "test/cert/stuck.run.test-cert-combined.prime256v1.test.pem").exists()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_ctrl_c_during_rsa_key_generation_prints_one_line(
        tmp_path: Path, make_conf: MakeConf) -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group, key workers included:
    they ignore it, the run stops them and says one line (no worker tracebacks)."""
    domains = "".join(f"k{n}.ctrlc.test\n" for n in range(12))
    conf = make_conf(tmp_path, domains, extra_conf={"keyTypes": "rsa", "keyBitsRSA": 4096})
    lematt = subprocess.Popen(
        [sys.executable, "-m", "lematt", "--test", "--config", str(conf)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        workers: list[int] = []
        for _ in range(600):
            workers = [pid for pid in _children(lematt.pid)
                       if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            if workers or lematt.poll() is not None:
                break
            time.sleep(0.05)  # bounded wait until a key worker runs
        assert workers, "no key worker process was seen"
        os.killpg(lematt.pid, signal.SIGINT)
        _out, err = lematt.communicate(timeout=60)
    finally:
        if lematt.poll() is None:
            os.killpg(lematt.pid, signal.SIGKILL)
            lematt.wait()
    assert lematt.returncode == 130
    assert err.strip().splitlines() == [
        "lematt: interrupted; every stored key+cert pair is intact"], err
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]
