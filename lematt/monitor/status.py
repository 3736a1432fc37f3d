"""``lematt status``: the state of every certificate, from the local tree alone.

Contract: ``status(config, store, now, warn_days, as_json, out)`` reads the tree read-only -
the inventory scan without writing its index, the kept renewal state, the back-off book,
the owed deploys (``monitor.owed``) and the last verify checks (``store.served``) - takes no
lock (it runs fine beside a run), asks no CA
and no host, prints one row per certificate (``monitor.rows``) and returns the exit status:

* 0: every certificate is stored, none expires within ``warn_days`` days, none failed its
  last order, no deploy is owed, no verify endpoint failed its last check;
* 1: anything else needs attention (a Nagios/Icinga check's WARNING), including a tree that
  does not exist yet (every certificate "missing") and an unreadable record of owed deploys.

The plain form is a summary line, an aligned table and a note per failure and per host owed
a deploy; ``--json`` prints one JSON document instead (``SCHEMA``, version ``VERSION``; the
README documents its fields). Unreadable tree directories are a ``StoreError`` (exit 1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TextIO

from lematt.config import Config
from lematt.errors import StoreError
from lematt.model import CertLine, KeyType
from lematt.monitor.owed import ALL_HOSTS, owed_deploys
from lematt.monitor.rows import Row, certificate_rows
from lematt.store.backoff import BackoffBook
from lematt.store.inventory import scan
from lematt.store.renewal import RenewalBook
from lematt.store.served import ServedBook, ServedCheck, served_keep
from lematt.store.tree import Store

SCHEMA = "lematt-status"
VERSION = 1
DEFAULT_WARN_DAYS = 14.0
# The flags that make the exit status 1 ("due" alone does not: the next run renews it).
ATTENTION = frozenset({"missing", "unreadable", "broken", "expired", "expiring", "failed",
                       "owed", "mismatch"})


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))


class _IsoMinutes(dict[int, str]):
    """``_iso`` memoised by the minute (the seconds are added to the minute's text)."""

    def __missing__(self, minute: int) -> str:
        text = self[minute] = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))
        return text

    def of(self, timestamp: float | None) -> str | None:
        if timestamp is None:
            return None
        whole = int(timestamp // 1)
        return f"{self[whole // 60]}{whole % 60:02d}Z"


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                        time.gmtime(timestamp))


_OK = ("ok",)
_QUOTED_SECONDS = tuple(f'{second:02d}Z"' for second in range(60))


def flags(row: Row, now: float, warn_days: float) -> tuple[str, ...]:
    """What is notable about a certificate: missing, unreadable, broken (the key is missing
    or does not match), expired, expiring (within ``warn_days``), due (the next run renews
    it), failed (its last order failed), owed (a deploy of it is owed), mismatch (a verify
    endpoint did not serve it at its last check); else ok."""
    found: list[str] = []
    if row.not_after is None:
        found.append("missing" if row.problem in (None, "missing") else "unreadable")
    else:
        if row.problem is not None:
            found.append("broken")
        if row.not_after <= now:
            found.append("expired")
        elif row.not_after - now < warn_days * 86400:
            found.append("expiring")
    if row.due and row.not_after is not None:
        found.append("due")
    if row.backoff is not None:
        found.append("failed")
    if row.owed:
        found.append("owed")
    if row.served is not None and not all(c.matched for _, c in row.served):
        found.append("mismatch")
    return tuple(found) if found else _OK


def gather(config: Config, store: Store, now: float) -> tuple[list[Row], list[str]]:
    """The rows, and warnings about records that could not be used."""
    settings = config.settings
    names: dict[tuple[int, KeyType], str] = {}
    try:
        found = scan(store, config.lines, settings.key_types, names, save=False)
    except OSError as exc:
        raise StoreError(f"cannot read the certificate tree {store.root}: "
                         f"{exc.strerror or exc}; run lematt status as the user that runs "
                         "lematt") from exc
    warnings: list[str] = []
    backoff = BackoffBook.load(store.root)
    if backoff.warning:
        warnings.append(backoff.warning)
    try:
        owed = owed_deploys(config, store)
    except StoreError as exc:
        warnings.append(f"owed deploys unknown: {exc}")
        owed = {}
    served = ServedBook.load(store.root)
    if served.warning:
        warnings.append(served.warning)
    keep = (served_keep(config.actions, config.lines, settings.key_types, store.layout)
            if served.entries else None)
    rows = certificate_rows(settings, config.lines, found, names, RenewalBook(store.root),
                            backoff, owed, now, served, keep)
    return rows, warnings


def status(config: Config, store: Store, now: float, warn_days: float, as_json: bool,
           out: TextIO, mode: str) -> int:
    rows, warnings = gather(config, store, now)
    tree_exists = store.root.is_dir()
    all_flags = [flags(row, now, warn_days) for row in rows]  # tuples; _OK shared
    attention = sum(1 for f in all_flags if ATTENTION.intersection(f))
    status_code = 1 if attention or warnings or not tree_exists else 0
    if as_json:
        # One line (pipe it through ``jq .`` to read it): 20,000 certificates indented
        # would be megabytes of blanks.
        out.write(_json_text(rows, all_flags, warnings, now, warn_days, mode, store,
                             tree_exists, status_code) + "\n")
    else:
        out.write(_text(rows, all_flags, warnings, now, warn_days, mode, store, tree_exists,
                        attention))
    return status_code


def _served_json(endpoint: str, check: ServedCheck,
                 iso: Callable[[float | None], str | None]) -> dict[str, object]:
    return {"endpoint": endpoint, "checked_at": iso(check.at), "name": check.name,
            "matched": check.matched,
            "expected": check.expected.to_json() if check.expected else None,
            "served": check.served.to_json() if check.served else None,
            "error": check.error}


def served_text(row: Row) -> str:
    """The SERVED column: ``-`` (not checked), ``matches``, or ``MISMATCH at ENDPOINT``."""
    if row.served is None:
        return "-"
    bad = row.mismatched
    if not bad:
        return "matches"
    more = f" (+{len(bad) - 1})" if len(bad) > 1 else ""
    return f"MISMATCH at {bad[0][0]}{more}"


def _document(rows: list[Row], all_flags: list[tuple[str, ...]], warnings: list[str],
              now: float, warn_days: float, mode: str, store: Store, tree_exists: bool,
              status_code: int) -> dict[str, object]:
    """The ``--json`` document (the README documents its fields): its definition, which
    ``_json_text`` writes without building it."""
    certificates = []
    iso = _IsoMinutes().of
    for row, row_flags in zip(rows, all_flags, strict=True):
        entry = row.backoff
        certificates.append({
            "line": row.line.lineno, "names": list(row.line.names), "key_type": row.key_type,
            "file": row.cert_name, "flags": list(row_flags),
            "not_after": iso(row.not_after),
            "days_left": None if row.not_after is None
            else round((row.not_after - now) / 86400, 2),
            "renewal": {"due": row.due, "at": iso(row.renew_at), "why": row.why},
            "ari_window": None if row.window is None else {
                "start": iso(row.window.start), "end": iso(row.window.end),
                "chosen": iso(row.window.chosen),
                "explanation_url": row.window.explanation_url},
            "profile": row.profile, "problem": row.problem,
            "backoff": None if entry is None else {
                "failures": entry.failures, "last_failure_at": iso(entry.last),
                "kind": entry.kind, "message": entry.message,
                "next_attempt_at": iso(entry.until)},
            "owed_hosts": list(row.owed),
            "served": None if row.served is None else {
                "matches": all(c.matched for _, c in row.served),
                "endpoints": [_served_json(e, c, iso) for e, c in row.served]},
        })
    owed = _owed_by_host(rows)
    return {
        "schema": SCHEMA, "version": VERSION, "generated_at": iso(now), "mode": mode,
        "tree": str(store.root), "tree_exists": tree_exists, "warn_days": warn_days,
        "exit_status": status_code, "certificates": certificates, "owed_deploys": owed,
        "warnings": warnings,
    }


def _json_text(rows: list[Row], all_flags: list[tuple[str, ...]], warnings: list[str],
               now: float, warn_days: float, mode: str, store: Store, tree_exists: bool,
               status_code: int) -> str:
    """``json.dumps(_document(...))``, byte for byte (tests/unit/test_monitor.py), written
    row by row from pieces kept per line, per flag set, per reason and per minute: building
    and encoding 20,000 dicts would make ``status --json`` slower than a no-op run."""
    enc = json.encoder.encode_basestring_ascii  # what json.dumps writes a str with
    dumps = json.dumps
    minutes: dict[int, str] = {}
    get_minute = minutes.get

    def iso(timestamp: float) -> str:  # _IsoMinutes, with the quotes (five times a row)
        minute, second = divmod(int(timestamp // 1), 60)
        text = get_minute(minute)
        if text is None:
            text = minutes[minute] = time.strftime('"%Y-%m-%dT%H:%M:',
                                                   time.gmtime(minute * 60))
        return text + _QUOTED_SECONDS[second]

    stated = {flags: dumps(list(flags)) for flags in set(all_flags)}
    whys: dict[str, str] = {}
    lefts: dict[float, str] = {}  # days left, to the hundredth: shared by many rows
    kinds = {"rsa": '"rsa"', "ec": '"ec"'}
    parts: list[str] = []
    append = parts.append
    line = None
    head = owed_hosts = profile = ""
    for row, row_flags in zip(rows, all_flags, strict=True):
        if row.line is not line:  # a line's certificates come one after the other
            line = row.line
            head = f'{{"line": {line.lineno}, "names": {dumps(list(line.names))}, "key_type": '
            profile = "null" if line.profile is None else enc(line.profile)
            owed_hosts = dumps(list(row.owed))
        not_after = row.not_after
        why = whys.get(row.why)
        if why is None:
            why = whys[row.why] = enc(row.why)
        if not_after is None:
            expires = left = "null"
        else:
            expires = iso(not_after)
            left_days = round((not_after - now) / 86400, 2)
            left = lefts.get(left_days) if left_days else None  # not 0.0 for -0.0
            if left is None:
                left = lefts[left_days] = repr(left_days)
        window = row.window
        at = row.renew_at
        if window is None:
            at_text, window_text = iso(at), "null"
        else:
            end = iso(window.end)
            chosen = iso(window.chosen)
            # rules 2 and 5 name the window's own moments: formatted once
            at_text = end if at == window.end else chosen if at == window.chosen else iso(at)
            url = window.explanation_url
            window_text = (f'{{"start": {iso(window.start)}, "end": {end}, "chosen": {chosen}, '
                           f'"explanation_url": {"null" if url is None else enc(url)}}}')
        entry = row.backoff
        backoff = "null" if entry is None else dumps({
            "failures": entry.failures, "last_failure_at": _iso(entry.last),
            "kind": entry.kind, "message": entry.message, "next_attempt_at": _iso(entry.until)})
        served = "null" if row.served is None else dumps({
            "matches": all(c.matched for _, c in row.served),
            "endpoints": [_served_json(e, c, _iso) for e, c in row.served]})
        problem = "null" if row.problem is None else enc(row.problem)
        append(f'{head}{kinds[row.key_type]}, "file": {enc(row.cert_name)}, "flags": '
               f'{stated[row_flags]}, "not_after": {expires}, "days_left": {left}, '
               f'"renewal": {{"due": {"true" if row.due else "false"}, "at": {at_text}, '
               f'"why": {why}}}, "ari_window": {window_text}, "profile": {profile}, '
               f'"problem": {problem}, "backoff": {backoff}, "owed_hosts": {owed_hosts}, '
               f'"served": {served}}}')
    return (f'{{"schema": {enc(SCHEMA)}, "version": {VERSION}, "generated_at": {iso(now)}, '
            f'"mode": {enc(mode)}, "tree": {enc(str(store.root))}, "tree_exists": '
            f'{dumps(tree_exists)}, "warn_days": {dumps(warn_days)}, "exit_status": '
            f'{status_code}, "certificates": [{", ".join(parts)}], "owed_deploys": '
            f'{dumps(_owed_by_host(rows))}, "warnings": {dumps(warnings)}}}')


def _owed_by_host(rows: list[Row]) -> dict[str, list[list[str]]]:
    owed: dict[str, list[list[str]]] = {}
    seen_lines: set[int] = set()
    for row in rows:
        if row.owed and row.line.lineno not in seen_lines:
            seen_lines.add(row.line.lineno)
            for host in row.owed:
                owed.setdefault(host, []).append(list(row.line.names))
    return owed


def _days(not_after: float | None, now: float, memo: dict[int, str]) -> str:
    """Days left: one decimal below 10, else whole days (memoised: few distinct values)."""
    if not_after is None:
        return "-"
    days = (not_after - now) / 86400
    if -10 < days < 10:
        return f"{days:.1f} d"
    whole = round(days)
    text = memo.get(whole)
    if text is None:
        text = memo[whole] = f"{whole} d"
    return text


def _shown(line: CertLine) -> str:
    names = line.names
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def _table_lines(rows: list[Row], all_flags: list[tuple[str, ...]], now: float) -> list[str]:
    """The aligned table: LINE and LEFT right-aligned, the rest left-aligned, WHY (the last
    column) as it is. The widths come from the few distinct values of each column (per
    line, per flag set, the extremes of notAfter), and each row is one ``str.format``: a
    status of 20,000 certificates must stay as quick as a no-op cron run."""
    lines = list({id(row.line): row.line for row in rows}.values())
    shown_of = {id(line): (line, _shown(line)) for line in lines}
    stated = {flags: "ok" if flags is _OK else ",".join(flags) for flags in set(all_flags)}
    not_afters = [row.not_after for row in rows if row.not_after is not None]
    days: dict[int, str] = {}
    left_width = 4
    if not_afters:
        low, high = min(not_afters), max(not_afters)
        left_width = max(left_width, len(_days(low, now, days)), len(_days(high, now, days)))
        if (low - now) / 86400 < 10 and (high - now) / 86400 > -10:
            left_width = max(left_width, 7)  # "-9.9 d" and the like
    # Rows without a verify check share one text: only checked rows are formatted.
    served = [served_text(row) if row.served is not None else "-" for row in rows]
    widths = [max([4, *(len(str(line.lineno)) for line in lines)]),
              max([11, *(len(shown) for _, shown in shown_of.values())]), 3, 16, left_width,
              18, max([7, *(len(line.profile or "-") for line in lines)]),
              max([5, *(len(text) for text in stated.values())]),
              max([6, *(len(text) for text in set(served))])]
    fmt = "  ".join([*(f"{{:{'>' if i in (0, 4) else '<'}{w}}}"
                       for i, w in enumerate(widths)), "{}"]).format
    out = [fmt("LINE", "CERTIFICATE", "KEY", "NOT AFTER (UTC)", "LEFT", "NEXT RENEWAL (UTC)",
               "PROFILE", "STATE", "SERVED", "WHY")]
    append = out.append
    minutes: dict[int, str] = {}
    get_minute = minutes.get

    def utc(timestamp: float) -> str:  # _utc memoised by the minute (twice a row)
        minute = int(timestamp // 60)
        text = get_minute(minute)
        if text is None:
            text = minutes[minute] = _utc(minute * 60)
        return text

    kinds = {"rsa": "RSA", "ec": "EC"}
    line = None
    lineno = shown = profile = ""
    for row, row_flags, row_served in zip(rows, all_flags, served, strict=True):
        if row.line is not line:  # a line's certificates come one after the other
            line = row.line
            lineno, shown = str(line.lineno), shown_of[id(line)][1]
            profile = line.profile or "-"
        not_after = row.not_after
        if row.due:  # _next, inline
            entry = row.backoff
            renew = "now" if entry is None or entry.until <= now else f"{utc(entry.until)} *"
        else:
            renew = utc(row.renew_at)
        append(fmt(lineno, shown, kinds[row.key_type],
                   utc(not_after) if not_after is not None else "-",
                   _days(not_after, now, days), renew, profile, stated[row_flags], row_served,
                   row.why))
    return out


def _text(rows: list[Row], all_flags: list[tuple[str, ...]], warnings: list[str],
          now: float, warn_days: float, mode: str, store: Store, tree_exists: bool,
          attention: int) -> str:
    counts: dict[str, int] = {}
    for row_flags in all_flags:
        for flag in row_flags:
            counts[flag] = counts.get(flag, 0) + 1
    order = ("missing", "unreadable", "broken", "expired", "expiring", "failed", "owed",
             "mismatch", "due")
    listed = ", ".join(f"{counts[f]} {f}" for f in order if f in counts)
    head = f"lematt status ({mode} tree): {len(rows)} certificates, "
    if not tree_exists:
        head += (f"no certificate tree at {store.root} yet: every certificate is missing; "
                 f"the first run (lematt --{mode}) issues them")
    elif attention:
        head += f"{attention} {'needs' if attention == 1 else 'need'} attention: {listed}"
    else:
        head += "all fine" + (f" ({listed})" if listed else "")
    out = [head]
    if not tree_exists:
        return "\n".join(out) + "\n"
    out += _table_lines(rows, all_flags, now)
    notes = []
    for row in rows:
        entry = row.backoff
        if entry is not None:
            retry = "at the next run" if entry.until <= now else f"after {_utc(entry.until)}"
            notes.append(f"{row.label}, line {row.line.lineno}: {entry.failures} failed "
                         f"order{'s' if entry.failures != 1 else ''} in a row, last "
                         f"{_utc(entry.last)} UTC: {entry.message}; next attempt {retry}"
                         f"{' UTC' if entry.until > now else ''} (lematt --only "
                         f"{row.line.primary} --force orders it now)")
    for row in rows:
        for endpoint, check in row.mismatched:
            shown = (f"serves {check.served}" if check.served is not None else check.error)
            notes.append(f"{row.label}, line {row.line.lineno}: {endpoint} did not serve the "
                         f"stored certificate at {_utc(check.at)} UTC: expected "
                         f"{check.expected}; {shown}")
    owed: dict[str, list[str]] = {}
    for row in rows:
        for host in row.owed:
            label = f"line {row.line.lineno} ({row.line.primary})"
            if label not in owed.setdefault(host, []):
                owed[host].append(label)
    for host, lines in sorted(owed.items()):
        where = "every host of its actions" if host == ALL_HOSTS else host
        notes.append(f"deploy owed to {where}: {', '.join(lines)}")
    notes += [f"warning: {w}" for w in warnings]
    if warn_days != DEFAULT_WARN_DAYS:
        notes.append(f"expiring: within {warn_days:g} days")
    if any(row.due and row.backoff is not None and row.backoff.until > now for row in rows):
        notes.insert(0, "* due, but in back-off after failed orders until then")
    if notes:
        out.append("")
        out += notes
    return "\n".join(out) + "\n"
