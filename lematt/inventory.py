"""Inventory: what the certificate tree holds for each (domains line, key type).

Contract: ``scan`` reads each job's certificate and key once and returns a ``Found`` per job;
a file that cannot be read or parsed is reported, never raised, so that planning can renew it.
The key is checked against the certificate's public key: a pair that does not match is not a
working pair and must be renewed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lematt.config import CertLine, KeyType
from lematt.crypto import CertInfo, load_private_key, public_key_der, read_certificate
from lematt.errors import CryptoError, StoreError
from lematt.store import Store


@dataclass(frozen=True)
class Found:
    """The stored state of one job. ``cert`` is None when ``problem`` says why."""

    cert: CertInfo | None
    problem: str | None = None
    key_present: bool = False


def scan_one(store: Store, line: CertLine, key_type: KeyType) -> Found:
    paths = store.paths(line, key_type)
    try:
        key_pem = store.read_bytes(paths.key)
        cert_pem = store.read_bytes(paths.cert)
    except StoreError as exc:
        return Found(None, f"unreadable: {exc}")
    if cert_pem is None:
        return Found(None, "missing", key_present=key_pem is not None)
    try:
        info = read_certificate(cert_pem, source=str(paths.cert))
    except CryptoError as exc:
        return Found(None, f"unreadable certificate: {exc}", key_present=key_pem is not None)
    if key_pem is None:
        return Found(info, "key missing")
    try:
        key = load_private_key(key_pem, source=str(paths.key))
    except CryptoError as exc:
        return Found(info, f"key unreadable: {exc}", key_present=False)
    if public_key_der(key) != info.public_key_der:
        return Found(info, "key does not match the certificate", key_present=True)
    return Found(info, None, key_present=True)


def scan(store: Store, lines: tuple[CertLine, ...], key_types: tuple[KeyType, ...]
         ) -> dict[tuple[int, KeyType], Found]:
    """Found state per (line number, key type)."""
    return {(line.lineno, kt): scan_one(store, line, kt) for line in lines for kt in key_types}
