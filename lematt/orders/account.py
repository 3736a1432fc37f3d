"""The ACME account: its key on disk, the account URL each CA gave for that key, the client.

Contract:

* ``load_or_create_account_key(path, announce)``: the key in ``accountKey``; a missing file is
  created as EC P-256 (mode 0600 from the first byte) and ``announce`` is told where.
* ``AccountBook(key_path)``: the account URLs remembered beside the key, in
  ``<accountKey>.accounts.json`` (mode 0600, written atomically). ``lookup(directory, key)``
  returns the URL the CA at ``directory`` gave to ``key`` (None when there is none, when the
  key changed since, or when the file is unreadable: then the account is simply registered
  again); ``remember(directory, key, url)`` records it, ``forget(directory)`` drops it.
  Entries are keyed by directory URL and carry the key's RFC 7638 thumbprint, so ``--test``
  and ``--prod`` (two CAs, one key) and a replaced key file each get the right answer.

* ``open_client(env, key)`` opens the run's ACME client for ``env``'s CA;
  ``use_account(env, client, key)`` points it at the remembered account or registers (with
  the external account binding and terms-of-service agreement of lematt.conf; a CA that
  requires what is not configured is a ``ConfigError`` before any request,
  ``check_registration``; ``check_before_ordering`` does it from the kept facts about the CA
  before a run orders anything), and tells the user about a registration;
  ``ensure_registered(env, key)`` registers only if no URL is remembered (once per run,
  before order processes start).

Why remember at all: RFC 8555 section 7.3 lets a client find its account by sending
newAccount again, but CAs answer that differently (acme2certifier replies 200 with an empty
``{}`` body), and it is one more request per run and per order process. With the URL known, a
run sends no newAccount; if the CA no longer knows the account, the ACME client registers
again (``accountDoesNotExist``) and the book is updated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lematt.config import Settings
from lematt.errors import ConfigError, StoreError
from lematt.orders.context import OrderEnv
from lematt.store.atomic import write_atomic
from lematt.store.layout import KEY_MODE

if TYPE_CHECKING:
    from lematt import crypto
    from lematt.acme.client import AcmeClient
    from lematt.store.renewal import CaFacts

BOOK_SUFFIX = ".accounts.json"
BOOK_VERSION = 1
_MAX_BOOK_BYTES = 1 << 20  # a book holds a few URLs; anything larger is not ours


def _read(path: Path, limit: int | None = None) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit if limit is not None else -1)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path (config refuses it)
        raise StoreError(f"cannot read {path}: {exc}") from exc


def load_or_create_account_key(path: Path, announce: Callable[[str], None]) -> crypto.PrivateKey:
    """The ACME account key; a missing one is created as EC P-256, mode 0600, and announced."""
    from lematt import crypto

    data = _read(path)
    if data is None:
        data = crypto.generate_private_pem("ec", curve="prime256v1")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, KEY_MODE)
        except (OSError, ValueError) as exc:
            raise StoreError(f"accountKey {path}: cannot create it: {exc}") from exc
        announce(f"created a new ACME account key (EC P-256) at {path}")
    return crypto.load_private_key(data, source=f"accountKey {path}")


class AccountBook:
    """Account URLs per (directory, key thumbprint), kept beside the account key."""

    def __init__(self, key_path: Path) -> None:
        self.path = key_path.with_name(key_path.name + BOOK_SUFFIX)

    def _entries(self) -> dict[str, dict[str, str]]:
        data = _read(self.path, _MAX_BOOK_BYTES + 1)
        if data is None or len(data) > _MAX_BOOK_BYTES:
            return {}
        try:
            raw: Any = json.loads(data)
        except ValueError:
            return {}  # torn or foreign: registering again costs one request and repairs it
        accounts = raw.get("accounts") if isinstance(raw, dict) else None
        if not isinstance(accounts, dict):
            return {}
        return {str(directory): {"url": entry["url"], "thumbprint": entry["thumbprint"]}
                for directory, entry in accounts.items()
                if isinstance(entry, dict) and isinstance(entry.get("url"), str)
                and isinstance(entry.get("thumbprint"), str)}

    def lookup(self, directory_url: str, thumbprint: str) -> str | None:
        entry = self._entries().get(directory_url)
        if entry is None or entry["thumbprint"] != thumbprint:
            return None
        return entry["url"]

    def directories(self, thumbprint: str) -> list[str]:
        """The CA directories where this key is the remembered account key."""
        return [d for d, e in self._entries().items() if e["thumbprint"] == thumbprint]

    def remember(self, directory_url: str, thumbprint: str, url: str) -> None:
        entries = self._entries()
        if entries.get(directory_url) == {"url": url, "thumbprint": thumbprint}:
            return
        entries[directory_url] = {"url": url, "thumbprint": thumbprint}
        self._write(entries)

    def forget(self, directory_url: str) -> None:
        entries = self._entries()
        if entries.pop(directory_url, None) is not None:
            self._write(entries)

    def _write(self, entries: dict[str, dict[str, str]]) -> None:
        body = json.dumps({"version": BOOK_VERSION, "accounts": entries}, indent=2,
                          sort_keys=True) + "\n"
        try:
            write_atomic(self.path, body.encode(), KEY_MODE)
        except OSError as exc:
            raise StoreError(f"cannot record the ACME account URL in {self.path}: {exc}; "
                             "check that its directory is writable") from exc


def _book(env: OrderEnv) -> AccountBook:
    return AccountBook(env.settings.account_key)


def known_account(env: OrderEnv, key: crypto.PrivateKey) -> str | None:
    """The account URL this key has at the run's CA, if an earlier run learnt it."""
    from lematt.acme.jws import thumbprint

    return _book(env).lookup(env.directory_url, thumbprint(key))


def _remembering(env: OrderEnv, key: crypto.PrivateKey,
                 tos: str | None) -> Callable[[str], None]:
    """What the ACME client calls with a newly learnt account URL: it goes into the book,
    and the user is told (with the terms of service agreed to, if any)."""
    from lematt.acme.jws import thumbprint

    book, key_print = _book(env), thumbprint(key)

    def remember(url: str) -> None:
        agreed = (f"; agreed to the CA's terms of service at {tos} (agreeTermsOfService)"
                  if tos and env.settings.agree_terms_of_service else "")
        env.reporter.change(f"registered the ACME account key {env.settings.account_key} "
                            f"at {env.directory_url}: {url}{agreed}")
        try:
            book.remember(env.directory_url, key_print, url)
        except StoreError as exc:
            # The account works; only the next run will have to look it up again.
            env.reporter.warn(str(exc))

    return remember


def check_registration(settings: Settings, directory_url: str, *, eab_required: bool,
                       terms_of_service: str | None) -> None:
    """Refuse (``ConfigError``, exit 2) a registration the CA would refuse for lack of a
    setting: external account binding it requires (RFC 8555 7.3.4), terms of service it
    publishes but lematt may not agree to (7.3)."""
    if eab_required and not settings.eab_kid:
        raise ConfigError(
            f"the CA at {directory_url} requires external account binding: set eabKid and "
            "eabHmacKey (or eabHmacKeyFile) to the key id and HMAC key your CA gave you",
            path=settings.source)
    if terms_of_service and not settings.agree_terms_of_service:
        raise ConfigError(
            f"the CA at {directory_url} asks new accounts to agree to its terms of service "
            f"({terms_of_service[:200]}); read them and set agreeTermsOfService: yes",
            path=settings.source, line=dict(settings.key_lines).get("agreeTermsOfService"))


def check_before_ordering(env: OrderEnv, facts: CaFacts | None) -> None:
    """``check_registration`` with what is kept about the CA, before anything is done (not
    even the account key created) when the account key has no remembered account there."""
    from lematt import crypto
    from lematt.acme.jws import thumbprint

    if facts is None or not (facts.eab_required or (
            facts.terms_of_service and not env.settings.agree_terms_of_service)):
        return
    data = _read(env.settings.account_key)
    if data is not None:
        key = crypto.load_private_key(data, source=f"accountKey {env.settings.account_key}",
                                      validate=False)
        if _book(env).lookup(env.directory_url, thumbprint(key)) is not None:
            return
    check_registration(env.settings, env.directory_url, eab_required=facts.eab_required,
                       terms_of_service=facts.terms_of_service)


def open_client(env: OrderEnv, key: crypto.PrivateKey, rate_share: float = 1.0, *,
                directory: str | None = None) -> AbstractAsyncContextManager[AcmeClient]:
    """The ACME client of this process (``rate_share``: its part of the request rates) for
    the run's CA, or for ``directory``."""
    from lematt.acme.client import AcmeClient
    from lematt.acme.limits import RequestRateLimiter

    s = env.settings
    return AcmeClient.open(
        directory or env.directory_url, key, ca_bundle=s.ca_bundle,
        rate_limiter=RequestRateLimiter(dict(s.rate_limits), share=rate_share),
        request_timeout=s.acme_request_timeout, allowed_origins=s.ca_allowed_origins)


async def use_account(env: OrderEnv, client: AcmeClient, key: crypto.PrivateKey) -> None:
    s = env.settings
    known = known_account(env, key)
    if known is None:
        d = client.directory
        check_registration(s, env.directory_url, eab_required=d.external_account_required,
                           terms_of_service=d.terms_of_service)
    eab = (s.eab_kid, s.eab_hmac_key) if s.eab_kid and s.eab_hmac_key else None
    await client.ensure_account(s.contact_email, known_url=known,
                                remember=_remembering(env, key,
                                                      client.directory.terms_of_service),
                                eab=eab, agree_tos=s.agree_terms_of_service)


async def ensure_registered(env: OrderEnv, key: crypto.PrivateKey) -> None:
    if known_account(env, key) is None:
        async with open_client(env, key) as client:
            await use_account(env, client, key)

