"""End to end against Pebble: the persistent back-off of failed orders, ``lematt status``
and the ``metricsFile`` Prometheus textfile.

Requests are counted by the fault proxy (``tests.ca_front.CaFront``) with no fault set: it
forwards everything to the session Pebble and only counts, so "no new order at the CA" is
read off what reached the CA. A certificate fails for real: its name resolves (through
challtestsrv) to 127.0.0.9, where nothing answers Pebble's http-01 request.
"""

from __future__ import annotations

import fcntl
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from prometheus_client.parser import text_string_to_metric_families

from lematt import config as config_mod
from lematt import crypto
from lematt.report import Reporter
from lematt.run import Options, run
from lematt.testing.pebble import PebbleRig
from tests.ca_front import CaFront, directory_path
from tests.e2e.conftest import MakeConf, RunLematt

FAIL, OK = "fail.mon.test", "ok.mon.test"
CURVE = "prime256v1"


def cert_file(conf: Path, name: str) -> Path:
    return conf.parent / "test" / "cert" / f"{name}-cert-combined.{CURVE}.test.pem"


def backoff_file(conf: Path) -> Path:
    return conf.parent / "test" / ".backoff.json"


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed with prometheus_client's own parser."""
    values = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def cert_labels(lineno: int, name: str) -> tuple[tuple[str, str], ...]:
    return (("key_type", "ec"), ("line", str(lineno)), ("name", name))


def run_at(conf: Path, now: datetime, *, force: bool = False,
           only: tuple[str, ...] = ()) -> list[tuple[str, bool]]:
    """One run in this process with its clock at ``now`` (``Options.now``): the back-off
    is judged by it, so no test waits for a minute to pass. (name, renewed) per order."""
    config = config_mod.load(conf)
    result = anyio.run(run, config, Options(test=True, now=now, force=force, only=only),
                       Reporter())
    assert result is not None
    return [(o.job.line.primary, o.changed) for o in result.outcomes]


def test_a_failed_order_backs_off_is_held_then_tried_again(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt, pebble: PebbleRig) -> None:
    prom = tmp_path / "lematt.prom"
    with CaFront(pebble.directory_url, pebble.ca_bundle, tmp_path / "front") as front:
        conf = make_conf(tmp_path, f"{FAIL}\n{OK}\n", extra_conf={
            "keyTypes": "ec", "directoryTest": front.directory_url,
            "caBundle": front.ca_bundle, "metricsFile": prom})
        new_order = directory_path(front, "newOrder")
        pebble.add_a(FAIL, "127.0.0.9")
        try:
            first = run_lematt("--test", "--config", conf)
            assert first.returncode == 1, first.stderr
            assert f"FAILED: {FAIL} (EC)" in first.stderr
            assert f"renewed {OK} (EC)" in first.stdout
            book = json.loads(backoff_file(conf).read_text())
            (name, entry), = book["certificates"].items()
            assert name == cert_file(conf, FAIL).name
            assert (entry["failures"], entry["kind"]) == (1, "validation")
            assert entry["until"] - entry["last"] == 60  # a minute after the first failure
            orders = front.count("POST", new_order)

            # The metrics of the failed run: success 0, one failure, notAfter as stored.
            values = metrics(prom)
            assert values[("lematt_last_run_success", ())] == 0
            assert values[("lematt_orders_total", (("result", "failed"),))] == 1
            assert values[("lematt_orders_total", (("result", "renewed"),))] == 1
            assert values[("lematt_certificate_failures", cert_labels(1, FAIL))] == 1
            assert values[("lematt_certificate_failures", cert_labels(2, OK))] == 0
            stored = crypto.read_certificate(cert_file(conf, OK).read_bytes())
            assert values[("lematt_certificate_not_after_timestamp_seconds",
                           cert_labels(2, OK))] == stored.not_after.timestamp()
            assert ("lematt_certificate_not_after_timestamp_seconds",
                    cert_labels(1, FAIL)) not in values

            # Still in back-off: said once, not ordered; silent under --cron.
            second = run_lematt("--test", "--config", conf)
            assert second.returncode == 0, second.stderr
            held = [line for line in second.stdout.splitlines() if "in back-off until" in line]
            assert len(held) == 1 and f"{FAIL} (EC)" in held[0] and "1 failure," in held[0]
            assert "nothing to do" not in second.stdout
            cron = run_lematt("--test", "--cron", "--config", conf)
            assert (cron.returncode, cron.stdout, cron.stderr) == (0, "", "")
            assert front.count("POST", new_order) == orders
            values = metrics(prom)
            assert values[("lematt_last_run_success", ())] == 1
            assert values[("lematt_orders_total", (("result", "held"),))] == 1
            assert values[("lematt_certificate_failures", cert_labels(1, FAIL))] == 1

            # status: the failure, when the next attempt is allowed, exit 1.
            status = run_lematt("status", "--test", "--config", conf)
            assert status.returncode == 1, status.stdout + status.stderr
            assert "1 failed order in a row" in status.stdout and "next attempt after" \
                in status.stdout
            doc = json.loads(run_lematt("--test", "status", "--json", "--config", conf).stdout)
            (failed,) = [c for c in doc["certificates"] if c["names"] == [FAIL]]
            assert failed["backoff"]["failures"] == 1 and "failed" in failed["flags"]

            # The forced run (--only it --force) orders it during its back-off: it fails
            # again, and the delay doubles.
            soon = datetime.fromtimestamp(entry["last"], UTC) + timedelta(seconds=30)
            assert run_at(conf, soon, force=True, only=(FAIL,)) == [(FAIL, False)]
            assert front.count("POST", new_order) == orders + 1
            again = json.loads(backoff_file(conf).read_text())["certificates"][name]
            assert again["failures"] == 2 and again["until"] - again["last"] == 120
        finally:
            pebble.clear_a(FAIL)

        # Its back-off over (the clock moved past it, not slept through), it is ordered,
        # renewed, and the back-off is gone.
        later = datetime.fromtimestamp(again["until"], UTC) + timedelta(seconds=1)
        assert run_at(conf, later) == [(FAIL, True)]
        assert front.count("POST", new_order) == orders + 2
        assert not backoff_file(conf).exists()
        values = metrics(prom)
        assert values[("lematt_last_run_success", ())] == 1
        assert values[("lematt_certificate_failures", cert_labels(1, FAIL))] == 0
        done = run_lematt("status", "--test", "--config", conf)
        assert done.returncode == 0, done.stdout


def test_a_corrupt_backoff_file_warns_once_and_blocks_nothing(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, f"{OK}\n", extra_conf={"keyTypes": "ec"})
    (tmp_path / "test").mkdir()
    backoff_file(conf).write_text('{"schema": "lematt-backoff", "version": 1, '
                                  '"certificates": {"' + cert_file(conf, OK).name + '": ')
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 0, first.stderr
    assert f"renewed {OK} (EC)" in first.stdout
    assert "not lematt's back-off file (not JSON)" in first.stderr
    assert not backoff_file(conf).exists()  # rewritten: nothing failed, so no file
    second = run_lematt("--test", "--config", conf)
    assert second.returncode == 0 and "back-off" not in second.stderr


def test_status_reads_only_the_tree_and_exits_like_a_nagios_check(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    conf = make_conf(tmp_path, f"{OK} www\n", extra_conf={"keyTypes": "ec"},
                     actions_text='[default]\nupdate: ["false"]\n')
    for argv in (("status", "--test"), ("--test", "status")):
        missing = run_lematt(*argv, "--config", conf)
        assert missing.returncode == 1
        assert missing.stdout.count("\n") == 1
        assert "no certificate tree" in missing.stdout and "every certificate is missing" \
            in missing.stdout
    assert not (tmp_path / "test").exists()  # status made nothing

    # The run stores the pair; its deploy (`false`) fails and stays owed.
    first = run_lematt("--test", "--config", conf)
    assert first.returncode == 1 and "pending" in first.stderr
    owed = run_lematt("status", "--test", "--config", conf)
    assert owed.returncode == 1
    assert "deploy owed to local: line 1 (ok.mon.test)" in owed.stdout
    header, row = owed.stdout.splitlines()[1:3]
    assert header.split()[:3] == ["LINE", "CERTIFICATE", "KEY"]
    assert row.split()[:3] == ["1", OK, "+1"] and "owed" in row

    # Deployed: all fine, exit 0, also while another run holds the lock.
    (tmp_path / "actions.conf").write_text('[default]\nupdate: ["true"]\n')
    assert run_lematt("--test", "--config", conf).returncode == 0
    with (tmp_path / ".lematt.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fine = run_lematt("status", "--test", "--config", conf)
        doc_run = run_lematt("status", "--test", "--json", "--config", conf)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "all fine" in fine.stdout.splitlines()[0]
    doc = json.loads(doc_run.stdout)
    assert doc_run.returncode == 0 and (doc["schema"], doc["version"]) == ("lematt-status", 1)
    assert doc["exit_status"] == 0 and doc["owed_deploys"] == {}
    (cert,) = doc["certificates"]
    stored = crypto.read_certificate(cert_file(conf, OK).read_bytes())
    assert cert["names"] == [OK, f"www.{OK}"] and cert["key_type"] == "ec"
    assert datetime.fromisoformat(cert["not_after"].replace("Z", "+00:00")) == \
        stored.not_after
    assert cert["flags"] == ["ok"] and cert["renewal"]["due"] is False
    # Pebble's certificates live five years: renewed when a third of that is left.
    lifetime = (stored.not_after - stored.not_before).total_seconds()
    renew_at = datetime.fromisoformat(cert["renewal"]["at"].replace("Z", "+00:00"))
    assert math.isclose(renew_at.timestamp(), stored.not_after.timestamp() - lifetime / 3,
                        abs_tol=1)
    assert cert["renewal"]["why"] == "a third of its lifetime left"

    # Expiring within --warn-days: exit 1.
    warn = run_lematt("status", "--test", "--warn-days", "5000", "--config", conf)
    assert warn.returncode == 1 and "expiring" in warn.stdout

    # A broken config: exit 2, one line.
    (tmp_path / "lematt.conf").write_text("[config]\nnoSuchKey = 1\n")
    broken = run_lematt("status", "--test", "--config", conf)
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1


def test_metrics_file_in_yaml_and_its_directory_checked_at_load(
        tmp_path: Path, make_conf: MakeConf, run_lematt: RunLematt) -> None:
    nowhere = tmp_path / "no-such-dir" / "lematt.prom"
    conf = make_conf(tmp_path, f"{OK}\n", extra_conf={"keyTypes": "ec", "metricsFile": nowhere},
                     yaml=True)
    refused = run_lematt("--test", "--config", conf)
    assert refused.returncode == 2
    assert "metricsFile" in refused.stderr and "does not exist" in refused.stderr
    assert not (tmp_path / "test").exists()

    prom = tmp_path / "lematt.prom"
    conf = make_conf(tmp_path, f"{OK}\n", extra_conf={"keyTypes": "ec", "metricsFile": prom},
                     yaml=True)
    result = run_lematt("--test", "--config", conf)
    assert result.returncode == 0, result.stderr
    values = metrics(prom)
    stored = crypto.read_certificate(cert_file(conf, OK).read_bytes())
    labels = cert_labels(1, OK)
    assert values[("lematt_certificate_not_after_timestamp_seconds", labels)] == \
        stored.not_after.timestamp()
    lifetime = (stored.not_after - stored.not_before).total_seconds()
    assert math.isclose(values[("lematt_certificate_renewal_due_timestamp_seconds", labels)],
                        stored.not_after.timestamp() - lifetime / 3, abs_tol=1)
    assert values[("lematt_last_run_success", ())] == 1
    assert values[("lematt_orders_total", (("result", "renewed"),))] == 1
    assert 0 < values[("lematt_run_duration_seconds", ())] < 300
    assert abs(values[("lematt_last_run_timestamp_seconds", ())]
               - datetime.now(UTC).timestamp()) < 300
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("lematt.prom")] == \
        ["lematt.prom"]  # no temp file left beside it
    # A command writes no metrics.
    before = prom.read_bytes()
    assert run_lematt("status", "--test", "--config", conf).returncode == 0
    assert prom.read_bytes() == before
