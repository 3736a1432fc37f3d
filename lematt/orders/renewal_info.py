"""Before planning: what the CA offers, and each certificate's renewal window (RFC 9773).

Contract: ``await refresh(env, found, names, book, default, now, index)`` brings
``book``
(``lematt.store.renewal``) up to date for the run's CA and saves it:

* The CA's directory is read when the kept ``CaFacts`` are missing, older than
  ``CA_RECHECK_SECONDS``, or lack a profile the config asks for; otherwise not at all, so a
  cron run with fresh renewal info sends no request. A profile the CA does not offer is a
  ``ConfigError`` naming the setting and the profiles offered (exit 2, before any order).
* When the directory has ``renewalInfo``, the RenewalInfo of every stored, unexpired
  certificate whose kept info is missing, belongs to another certificate, or is past its
  Retry-After is fetched: concurrently (at most ``CONCURRENCY`` in flight), each under the
  ``renewalInfo`` rate bucket. A window is kept with a moment picked uniformly inside it,
  once: a later fetch with the same window keeps the moment, so successive runs agree. The
  next fetch is due after the Retry-After, clamped to 1 minute .. 1 day (RFC 9773 section
  4.3); after a failure after 1 hour (network, timeout, 5xx) or 6 hours (anything else),
  keeping the earlier window meanwhile. Every ``explanationURL`` is reported once per run.
* A CA that cannot be reached, or has no renewalInfo, changes nothing: planning falls back
  (kept windows, else a third of the lifetime); kept facts stay in use (a CA never read is
  kept as one without renewalInfo) and its directory is tried again after
  ``RETRY_DIRECTORY``, not at every cron run. Only ``ConfigError`` is raised.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import datetime

import anyio

from lematt.errors import (
    AcmeNetworkError,
    AcmeProblem,
    AcmeTimeoutError,
    ConfigError,
    LemattError,
    StoreError,
)
from lematt.model import CertState, Found, KeyType, RenewalWindow
from lematt.orders.context import OrderEnv
from lematt.store.renewal import CaFacts, RenewalBook, complete

CA_RECHECK_SECONDS = 86400.0
RETRY_DIRECTORY = 3600.0
CONCURRENCY = 50
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 60.0, 86400.0  # RFC 9773 section 4.3's example limits
RETRY_WITHOUT_HEADER = 6 * 3600.0
RETRY_TEMPORARY_ERROR = 3600.0
RETRY_LONG_ERROR = 6 * 3600.0


def _wanted_profiles(env: OrderEnv) -> dict[str, str]:
    """Profile name -> where it is set (for messages)."""
    wanted: dict[str, str] = {}
    s = env.settings
    if s.profile:
        wanted[s.profile] = f"{s.where('profile')}: profile"
    for section in (env.config.actions.default, *env.config.actions.overrides):
        if section is not None and section.profile and section.profile not in wanted:
            where = env.config.actions_path or "actions.conf"
            line = f":{section.lineno}" if section.lineno is not None else ""
            wanted[section.profile] = f"{where}{line}: profile in [{section.name}]"
    return wanted


def check_profiles(env: OrderEnv, facts: CaFacts) -> None:
    """``ConfigError`` for the first configured profile the CA does not offer."""
    for name, where in _wanted_profiles(env).items():
        if name not in facts.profiles:
            offered = (f"it offers {', '.join(facts.profiles)}" if facts.profiles
                       else "it offers no profiles")
            raise ConfigError(f"{where} {name!r} is not a profile of the CA at "
                              f"{facts.directory} ({offered}); use one of those or remove it")


def _todo(found: Mapping[tuple[int, KeyType], Found], names: Mapping[tuple[int, KeyType], str],
          book: RenewalBook, now: float) -> list[tuple[str, Found, CertState | None]]:
    """The certificates to ask about: no kept state, or one past its next check."""
    todo = []
    for key, name in names.items():
        state = found[key]
        cert = state.cert
        # An expired certificate, or one due anyway, needs no advice (RFC 9773 section 4.3).
        if (cert is None or state.problem is not None or not cert.cert_id
                or cert.not_after.timestamp() <= now):
            continue
        kept = book.state(name, cert.cert_id)
        if kept is None or (kept.next_check <= now and not kept.revoked):
            todo.append((name, state, kept))
    return todo


def _clamped(retry_after: float | None) -> float:
    if retry_after is None:
        return RETRY_WITHOUT_HEADER
    return min(max(retry_after, RETRY_AFTER_MIN), RETRY_AFTER_MAX)


def _window(start: float, end: float, not_after: float, kept: CertState | None,
            explanation: str | None, pick: Callable[[float, float], float]
            ) -> RenewalWindow | None:
    """The window to keep, or None when it cannot be used: a window reaching past notAfter
    is cut there (renewing after expiry is never advice), one starting after it is not
    advice at all."""
    end = min(end, not_after)
    if end <= start:
        return None
    old = kept.window if kept is not None else None
    if old is not None and (old.start, old.end) == (start, end):
        return old._replace(explanation_url=explanation)
    return RenewalWindow(start, end, pick(start, end), explanation)


async def refresh(env: OrderEnv, found: Mapping[tuple[int, KeyType], Found],
                  names: Mapping[tuple[int, KeyType], str], book: RenewalBook,
                  default: CertState | None, now: datetime, index: str, *,
                  pick: Callable[[float, float], float] = random.uniform) -> bool:
    """See the module docstring; ``default`` is ``store.renewal.states_for``'s (a state
    standing for every certificate: then none is due for a question), ``index`` the
    inventory index the book was matched against. True when the book's rows changed (then
    the caller reads the states again)."""
    now_ts = now.timestamp()
    url = env.directory_url
    facts = book.ca(url)
    wanted = _wanted_profiles(env)
    fresh = (facts is not None and 0 <= now_ts - facts.checked < CA_RECHECK_SECONDS
             and all(p in facts.profiles for p in wanted))
    ari = fresh and facts is not None and facts.renewal_info
    # A default state stands for every certificate only while none is due for a question.
    todo = _todo(found, names, book, now_ts) if ari and default is None else []
    if fresh and not todo:
        if ari and default is None and not book.summary_matches(index):
            # Written again for this index, the summary spares the next runs every row.
            _save(env, book, names, found, now_ts, index)
        return False
    try:
        await _ask(env, found, names, book, now_ts, todo if fresh else None, pick)
    except ConfigError:
        raise
    except LemattError as exc:
        env.reporter.info(f"the CA's renewal information was not refreshed ({exc}); "
                          "renewal timing uses what was kept, else the fallback rule")
        # What was kept stays in use, and the CA is tried again in an hour, not at every
        # cron run: a CA that does not answer would cost each run its timeout.
        if facts is not None and not fresh:
            book.set_ca(facts._replace(checked=now_ts - CA_RECHECK_SECONDS
                                       + RETRY_DIRECTORY))
        elif facts is None:
            # Never read: what it offers is unknown. Kept as "no renewal info", with the
            # configured profiles standing in for its own (so none is refused for a CA
            # that merely did not answer), until the CA is asked again in an hour.
            book.set_ca(CaFacts(url, now_ts - CA_RECHECK_SECONDS + RETRY_DIRECTORY,
                                profiles=tuple(sorted(wanted))))
        for name, state, kept in todo if fresh else ():
            assert state.cert is not None
            book.put(name, (kept or CertState(state.cert.cert_id))._replace(
                next_check=now_ts + RETRY_TEMPORARY_ERROR))
    facts = book.ca(url)
    if facts is not None:
        check_profiles(env, facts)
    _save(env, book, names, found, now_ts, index)
    return True


def _save(env: OrderEnv, book: RenewalBook, names: Mapping[tuple[int, KeyType], str],
          found: Mapping[tuple[int, KeyType], Found], now: float, index: str) -> None:
    try:
        book.save(set(names.values()),
                  {env.settings.directory_test, env.settings.directory_prod},
                  index=index, complete=complete(book, names, found, now))
    except StoreError as exc:
        env.reporter.warn(f"{exc}; renewal info is fetched again next time")


async def _ask(env: OrderEnv, found: Mapping[tuple[int, KeyType], Found],
               names: Mapping[tuple[int, KeyType], str], book: RenewalBook, now: float,
               todo: list[tuple[str, Found, CertState | None]] | None,
               pick: Callable[[float, float], float]) -> None:
    """Read the directory if ``todo`` is None (then work out ``todo``), fetch the infos."""
    from lematt import crypto
    from lematt.orders.account import open_client

    # renewalInfo and the directory are plain GETs: the transport's signer never signs here,
    # so a throwaway key stands in and the account key file is left alone.
    signer_key = crypto.load_private_key(crypto.generate_private_pem("ec"), validate=False)
    async with open_client(env, signer_key) as client:
        d = client.directory
        if todo is None:
            book.set_ca(CaFacts(env.directory_url, now, bool(d.renewal_info), d.profile_names,
                                d.external_account_required, d.terms_of_service))
            todo = _todo(found, names, book, now) if d.renewal_info else []
        if not todo:
            return
        failures: list[tuple[str, LemattError]] = []
        explained: dict[str, int] = {}
        slots = anyio.CapacityLimiter(CONCURRENCY)

        async def one(name: str, state: Found, kept: CertState | None) -> None:
            cert = state.cert
            assert cert is not None
            window = kept.window if kept is not None else None
            try:
                async with slots:
                    info, retry_after = await client.renewal_info(cert.cert_id)
            except LemattError as exc:
                failures.append((name, exc))
                temporary = isinstance(exc, AcmeNetworkError | AcmeTimeoutError) or (
                    isinstance(exc, AcmeProblem) and (exc.status or 0) >= 500)
                delay = RETRY_TEMPORARY_ERROR if temporary else RETRY_LONG_ERROR
            else:
                window = _window(info.start, info.end, cert.not_after.timestamp(), kept,
                                 info.explanation_url, pick)
                delay = _clamped(retry_after)
                if window is None:
                    failures.append((name, LemattError(
                        "its suggested window starts after the certificate expires")))
                    delay = RETRY_LONG_ERROR
                elif info.explanation_url:
                    explained[info.explanation_url] = explained.get(info.explanation_url,
                                                                    0) + 1
            book.put(name, CertState(cert.cert_id, kept.profile if kept else None, window,
                                     now + delay, kept.revoked if kept else None))

        # The first request goes alone: acme2certifier (0.46.3) fills its certificate table's
        # serial and AKI columns on the first renewalInfo request it ever gets, and two of
        # those at once leave its SQLite database locked for good. One round trip per run.
        await one(*todo[0])
        async with anyio.create_task_group() as tg:
            for name, state, kept in todo[1:]:
                tg.start_soon(one, name, state, kept)
    reporter = env.reporter
    reporter.info(f"renewal info: asked the CA about {len(todo)} certificate(s)")
    for url, count in explained.items():
        reporter.info(f"the CA explains the renewal window of {count} certificate(s): {url}")
    if failures:
        name, exc = failures[0]
        reporter.info(f"renewal info unavailable for {len(failures)} certificate(s) (first "
                      f"{name}: {exc}); they keep their earlier window, else the fallback "
                      "rule decides")


def next_question(env: OrderEnv, book: RenewalBook,
                  found: Mapping[tuple[int, KeyType], Found],
                  states: Mapping[tuple[int, KeyType], CertState],
                  default: CertState | None, now: float) -> float:
    """The earliest moment at which ``refresh`` would send the CA a request if nothing but
    the clock changes (the states as ``store.renewal.states_for`` gives them after the
    refresh): the directory when the kept facts turn stale, a certificate's RenewalInfo
    at its next check; ``now`` when something is to be asked already."""
    facts = book.ca(env.directory_url)
    if facts is None or not all(p in facts.profiles for p in _wanted_profiles(env)):
        return now
    moment = facts.checked + CA_RECHECK_SECONDS
    if not facts.renewal_info:
        return moment
    for key, state in found.items():
        cert = state.cert
        if (cert is None or state.problem is not None or not cert.cert_id
                or cert.not_after.timestamp() <= now):
            continue  # never asked about (see _todo)
        kept = states.get(key, default)
        if kept is None:
            return now
        if not kept.revoked:
            moment = min(moment, kept.next_check)
    return moment
