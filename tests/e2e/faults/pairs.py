"""Helpers of the crash tests: read every key+cert pair a directory shows and check it.

``check_pairs(cert_dir, key_dir)`` goes through every certificate name in ``cert_dir``
(upstream names and per-name links alike, followed as a service would), finds the key of
the same name in ``key_dir`` (``-cert-combined.`` -> ``-key.``) and asserts that both exist
or neither does, and that the key's public key is the certificate's. It returns {name:
certificate bytes} and counts what it checked in ``COUNTS`` (the figures of the fault suite).
"""

from __future__ import annotations

from pathlib import Path

from lematt import crypto

COUNTS = {"kills": 0, "pairs": 0}


def check_pairs(cert_dir: Path, key_dir: Path) -> dict[str, bytes]:
    seen: dict[str, bytes] = {}
    for cert_path in sorted(cert_dir.iterdir()):
        name = cert_path.name
        if name.startswith(".") or "-cert-combined." not in name:
            continue
        key_path = key_dir / name.replace("-cert-combined.", "-key.")
        cert = cert_path.read_bytes() if cert_path.exists() else None
        key = key_path.read_bytes() if key_path.exists() else None
        assert (cert is None) == (key is None), f"{name}: half a pair on disk"
        if cert is None or key is None:
            continue
        key_der = crypto.public_key_der(crypto.load_private_key(key))
        assert key_der == crypto.read_certificate(cert).public_key_der, (
            f"{name}: the key beside this certificate is not its key")
        seen[name] = cert
        COUNTS["pairs"] += 1
    return seen


def leftovers(directory: Path) -> list[str]:
    """Temporary names lematt left in ``directory`` (``.NAME.lematt-tmp-*``)."""
    return sorted(p.name for p in directory.iterdir() if ".lematt-tmp-" in p.name)
