"""Account key rollover (RFC 8555 section 7.3.5) that a crash at any instant cannot lose.

Contract:

* ``await roll_over(env)`` makes a new EC P-256 account key and writes it, with the CA
  directory and the account URL, to the side file ``<accountKey>.rollover`` (mode 0600 from
  the first byte, atomic) *before* the CA is asked. Only when the CA confirmed the key change
  does the new key replace ``accountKey`` (atomic), the account book follow it, and the side
  file go. Returns ``(account URL, new thumbprint, other directories)``: the CAs where the
  old key was also the account key (they will see a new key and register it).
* ``await resolve_rollover(env)`` finishes what a crash interrupted: when the side file
  exists it asks the CA recorded in it which key the account has (newAccount with
  ``onlyReturnExisting`` signed by the new key, section 7.3.1): the new key -> finish as
  above; no account -> the change never reached the CA, the side file goes and the old key
  stays. A CA that cannot be asked leaves everything as it is and raises: no run may use a
  key that is perhaps no longer the account's. Called before every use of the account key
  (a run with something to order, every ``lematt account`` and ``lematt revoke``).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lematt.errors import AcmeError, AcmeProblem, LemattError, StoreError
from lematt.orders.account import AccountBook, known_account, open_client, use_account
from lematt.orders.context import OrderEnv
from lematt.store.atomic import read_bytes, write_atomic
from lematt.store.layout import KEY_MODE

if TYPE_CHECKING:
    from lematt import crypto

SIDE_SUFFIX = ".rollover"
_MAX_SIDE_BYTES = 64 << 10


def side_file(env: OrderEnv) -> Path:
    key = env.settings.account_key
    return key.with_name(key.name + SIDE_SUFFIX)


def _read_side(path: Path) -> tuple[str, str, bytes] | None:
    data = read_bytes(path)
    if data is None:
        return None
    try:
        record = json.loads(data[:_MAX_SIDE_BYTES])
        directory, account, pem = record["directory"], record["account"], record["key"]
        if not all(isinstance(v, str) for v in (directory, account, pem)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        # Written atomically, so never torn: anything else is not ours to guess about.
        raise StoreError(f"{path} is not a rollover record lematt wrote; move it away if "
                         "you know the account's key, then run again") from None
    return directory, account, pem.encode()


def _finish(env: OrderEnv, directory: str, account: str, pem: bytes, path: Path) -> None:
    """The CA has the new key: it becomes accountKey, the book follows, the side file goes."""
    from lematt import crypto
    from lematt.acme.jws import thumbprint

    new_key = crypto.load_private_key(pem, source=str(path))
    key_path = env.settings.account_key
    try:
        write_atomic(key_path, pem, KEY_MODE)
    except OSError as exc:
        raise StoreError(f"the CA now knows the account {account} by the new key, but "
                         f"{key_path} cannot be written ({exc}); the new key is in {path}: "
                         "fix the permissions and run lematt again") from exc
    AccountBook(key_path).remember(directory, thumbprint(new_key), account)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def resolve_rollover(env: OrderEnv) -> None:
    from lematt import crypto

    path = side_file(env)
    found = _read_side(path)
    if found is None:
        return
    # The recorded account URL is only for the user: a fresh key can belong to no other.
    directory, _account, pem = found
    new_key = crypto.load_private_key(pem, source=str(path))
    try:
        async with open_client(env, new_key, directory=directory) as client:
            owner = await client.lookup_account()
    except LemattError as exc:
        raise AcmeError(f"an account key rollover at {directory} is unfinished and the CA "
                        f"cannot be asked which key the account has ({exc}); nothing was "
                        "ordered, try again later") from exc
    if owner is not None:
        _finish(env, directory, owner, pem, path)
        env.reporter.change(f"finished the account key rollover an earlier run started: "
                            f"{env.settings.account_key} is now the key of {owner}")
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        env.reporter.change(f"the account key rollover an earlier run started never reached "
                            f"{directory}; {env.settings.account_key} stays the account key")


async def roll_over(env: OrderEnv, key: crypto.PrivateKey) -> tuple[str, str, list[str]]:
    from lematt import crypto
    from lematt.acme.jws import thumbprint

    path = side_file(env)
    old_print = thumbprint(key)
    others = [d for d in AccountBook(env.settings.account_key).directories(old_print)
              if d != env.directory_url]
    pem = crypto.generate_private_pem("ec", curve="prime256v1")
    new_key = crypto.load_private_key(pem, validate=False)
    async with open_client(env, key) as client:
        known = known_account(env, key)
        if known is None:
            account = await client.lookup_account()
            if account is None:
                raise AcmeError(f"this key has no account at {env.directory_url} to roll "
                                "over; a run registers one")
            await client.ensure_account(None, known_url=account)
        else:
            await use_account(env, client, key)
        assert client.kid is not None
        record = {"directory": env.directory_url, "account": client.kid,
                  "key": pem.decode()}
        try:
            write_atomic(path, json.dumps(record).encode(), KEY_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc}; nothing was changed") from exc
        try:
            await client.change_key(new_key)
        except AcmeProblem:
            # The CA refused: the account keeps the old key.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        # Any other failure (no answer, a kill) leaves the side file: perhaps never sent,
        # perhaps applied with the answer lost; the next use of the account asks the CA.
        _finish(env, env.directory_url, client.kid, pem, path)
        return client.kid, thumbprint(new_key), others
