"""Prepare commands as the original lematt ran them, and their output when it can explain a
failure: real processes, a real Pebble."""

from __future__ import annotations

from pathlib import Path

from lematt.testing.pebble import PebbleRig
from tests.e2e.conftest import MakeConf, RunLematt

FORWARDER_SAYS = "forwarder: cannot bind port 80"


def test_a_prepare_string_is_split_on_whitespace_and_run_without_a_shell(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Under a shell, ";" would end the touch and run "echo"; as an argument vector it is part
    # of the file name, as in the original lematt.
    actions = f'[default]\nprepare: ["touch {out}/p-DOMAIN;echo"]\n'
    conf = make_conf(tmp_path, "argv.prep.test www\n", actions_text=actions,
                     extra_conf={"keyTypes": "ec"})
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "p-argv.prep.test;echo", "p-www.argv.prep.test;echo"]


def _forwarder(tmp_path: Path) -> Path:
    script = tmp_path / "fwd.sh"
    script.write_text(f'#!/bin/sh\necho "{FORWARDER_SAYS} for $1" >&2\nexec sleep 300\n')
    script.chmod(0o755)
    return script


def test_prepare_output_is_shown_when_the_line_fails_and_only_then(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    script = _forwarder(tmp_path)
    actions = f'[default]\nprepare: ["{script} DOMAIN"]\n'
    good = make_conf(tmp_path / "good", "fine.prep.test\n", actions_text=actions,
                     extra_conf={"keyTypes": "ec"})
    result = run_lematt("--test", "--config", good)
    assert result.returncode == 0, result.stderr
    assert FORWARDER_SAYS not in result.stdout + result.stderr

    # Nothing answers http-01 on 127.0.0.9: the CA's validation fails, and what the prepare
    # command said is the explanation the user needs.
    pebble.add_a("broken.prep.test", "127.0.0.9")
    try:
        bad = make_conf(tmp_path / "bad", "broken.prep.test\n", actions_text=actions,
                        extra_conf={"keyTypes": "ec"})
        failed = run_lematt("--test", "--config", bad)
    finally:
        pebble.clear_a("broken.prep.test")
    assert failed.returncode == 1
    assert f"prepare for broken.prep.test `{script} broken.prep.test` printed:" in failed.stderr
    assert f"  | {FORWARDER_SAYS} for broken.prep.test" in failed.stderr

    # With --debug it is shown for a line that succeeds too.
    with good.open("a") as fh:
        fh.write("reauthorizeDays = 36500\n")
    debug = run_lematt("--test", "--debug", "--config", good)
    assert debug.returncode == 0, debug.stderr
    assert f"  | {FORWARDER_SAYS} for fine.prep.test" in debug.stdout
