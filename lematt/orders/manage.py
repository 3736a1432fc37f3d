"""The account and certificate commands: ``lematt account show | update-contact | rollover |
deactivate`` and ``lematt revoke``.

Contract: each ``async`` function takes an ``OrderEnv`` (the config, the tree of ``--test`` or
``--prod``, a reporter), holds the conf-dir lock while it works (no run changes the key, the
book or the tree meanwhile), settles an interrupted key rollover first
(``lematt.orders.rollover``), and returns the exit status (0 done, 1 something failed, with
one line each) or raises ``LemattError`` for what stops it altogether (``ConfigError``:
exit 2, nothing was asked of the CA).

* No command creates an account key or registers an account: without a key, or without an
  account for it at the CA (remembered, else looked up with newAccount and
  ``onlyReturnExisting``), each says so and returns 1.
* ``show``: the account URL, status, contact and key of ``accountKey`` at the CA.
* ``update_contact(emails)``: the account's contact becomes ``mailto:`` those addresses.
* ``rollover``: RFC 8555 section 7.3.5, crash-safe (``roll_over``).
* ``deactivate``: RFC 8555 section 7.3.6; the key can then never be used at that CA again,
  so its remembered URL is dropped.
* ``revoke(names, reason, key_type)``: revokes the stored certificates of the domains lines
  that carry ``names`` (RFC 8555 section 7.6, signed with the account key). Each pair is
  marked revoked in the renewal state *before* the CA is asked (a crash then costs at most
  an early renewal, never a revoked certificate left in service) and the mark is taken back
  if the CA refuses; a marked pair is due at the next run, with a new key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from lematt.errors import AcmeProblem, ConfigError
from lematt.model import CertState, KeyType
from lematt.orders.account import AccountBook, known_account, open_client
from lematt.orders.context import OrderEnv
from lematt.orders.rollover import resolve_rollover, roll_over
from lematt.store.atomic import read_bytes
from lematt.store.renewal import RenewalBook

if TYPE_CHECKING:
    from lematt import crypto
    from lematt.acme.client import AcmeClient
    from lematt.acme.messages import Account

ALREADY_REVOKED = "urn:ietf:params:acme:error:alreadyRevoked"


def _key_words(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def _account_key(env: OrderEnv) -> crypto.PrivateKey | None:
    """The account key, or None (said) when there is none yet: commands never create one."""
    from lematt import crypto

    path = env.settings.account_key
    data = read_bytes(path)
    if data is None:
        env.reporter.failure(f"accountKey {path} does not exist yet: the first run creates "
                             "and registers it")
        return None
    return crypto.load_private_key(data, source=f"accountKey {path}")


async def _existing_account(env: OrderEnv, client: AcmeClient, key: crypto.PrivateKey
                            ) -> str | None:
    """Point ``client`` at the account this key already has (remembered, else looked up);
    None (said) when it has none: commands never register one."""
    from lematt.acme.jws import thumbprint

    url = known_account(env, key) or await client.lookup_account()
    if url is None:
        env.reporter.failure(f"no account at {env.directory_url} for the key "
                             f"{env.settings.account_key} (thumbprint {thumbprint(key)}); "
                             "the next run registers one")
        return None
    await client.ensure_account(None, known_url=url)
    return url


async def show(env: OrderEnv) -> int:
    from lematt.acme.jws import thumbprint

    out = env.reporter
    with env.store.lock():
        await resolve_rollover(env)
        key = _account_key(env)
        if key is None:
            return 1
        path = env.settings.account_key
        async with open_client(env, key) as client:
            url = await _existing_account(env, client, key)
            if url is None:
                return 1
            account = await client.account()
        out.change(f"CA: {env.directory_url}")
        out.change(f"account: {url}")
        out.change(f"status: {account.status}")
        out.change(f"contact: {', '.join(account.contact) or '(none)'}")
        out.change(f"key: {path} ({_key_words(key)}, thumbprint {thumbprint(key)})")
    return 0


async def _on_the_account(env: OrderEnv, act: Callable[[AcmeClient], Awaitable[Account]]
                          ) -> tuple[str, Account] | None:
    """Under the conf-dir lock, once an interrupted rollover is settled: ``act`` on the
    account the key already has; None (said) when there is no key or no account."""
    with env.store.lock():
        await resolve_rollover(env)
        key = _account_key(env)
        if key is None:
            return None
        async with open_client(env, key) as client:
            url = await _existing_account(env, client, key)
            if url is None:
                return None
            return url, await act(client)


async def update_contact(env: OrderEnv, emails: Sequence[str]) -> int:
    done = await _on_the_account(
        env, lambda client: client.update_contact([f"mailto:{e}" for e in emails]))
    if done is None:
        return 1
    url, account = done
    env.reporter.change(f"the contact of {url} is now {', '.join(account.contact) or '(none)'}")
    return 0


async def rollover(env: OrderEnv) -> int:
    with env.store.lock():
        await resolve_rollover(env)
        key = _account_key(env)
        if key is None:
            return 1
        url, new_print, others = await roll_over(env, key)
        env.reporter.change(f"rolled the account {url} over to a new key (EC P-256, "
                            f"thumbprint {new_print}); {env.settings.account_key} holds it")
        for directory in others:
            env.reporter.warn(f"the old key was also the account key at {directory}: that "
                              "CA does not know the new key, and the next run there "
                              "registers it as a new account")
    return 0


async def deactivate(env: OrderEnv) -> int:
    async def act(client: AcmeClient) -> Account:
        account = await client.deactivate()
        AccountBook(env.settings.account_key).forget(env.directory_url)
        return account

    done = await _on_the_account(env, act)
    if done is None:
        return 1
    url, account = done
    env.reporter.change(f"the account {url} is {account.status}; the CA refuses its key "
                        f"from now on: give accountKey a new file before the next run")
    return 0


async def revoke(env: OrderEnv, names: Sequence[str], reason: str,
                 key_types: Sequence[KeyType]) -> int:
    from lematt import crypto

    lines = [line for line in env.config.lines if set(names) & set(line.names)]
    unknown = sorted(set(names) - {n for line in lines for n in line.names})
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: on no line of the domains file; name a "
                          "certificate by any of its names", path=env.config.domains_path)
    store = env.store
    status = 0
    with store.lock():
        await resolve_rollover(env)
        book = RenewalBook(store.root)
        todo = []
        for line in lines:
            for key_type in key_types:
                _, cert_path = store.layout.pair_files(line, key_type)
                pem = read_bytes(cert_path)
                label = f"{line.primary} ({key_type.upper()})"
                if pem is None:
                    env.reporter.failure(f"{label}: no certificate at {cert_path}")
                    status = 1
                    continue
                cert_name = store.layout.pair_names(line, key_type)[1]
                info = crypto.read_certificate(pem, source=cert_path)
                todo.append((label, cert_name, pem, info))
        key = _account_key(env) if todo else None
        if key is None:
            return 1
        async with open_client(env, key) as client:
            if await _existing_account(env, client, key) is None:
                return 1
            for label, cert_name, pem, info in todo:
                before = book.state(cert_name, info.cert_id)
                # Marked first: a crash after the CA revoked it still renews it.
                book.put(cert_name, (before or CertState(info.cert_id))._replace(
                    revoked=reason))
                book.save()
                try:
                    await client.revoke(crypto.leaf_der(pem), reason)
                except AcmeProblem as problem:
                    if problem.type != ALREADY_REVOKED:
                        _unmark(book, cert_name, info.cert_id, before)
                        env.reporter.failure(f"{label}: {problem}")
                        status = 1
                        continue
                # Any other error (no answer: perhaps revoked) ends the command with the
                # mark kept: renewing early is safe, serving a revoked certificate is not.
                env.reporter.change(f"revoked {label} ({reason}); the next run orders a new "
                                    "certificate with a new key")
    return status


def _unmark(book: RenewalBook, cert_name: str, cert_id: str, before: CertState | None) -> None:
    book.put(cert_name, before if before is not None else CertState(cert_id))
    book.save()
