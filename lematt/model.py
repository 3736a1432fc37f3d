"""The domain types shared by every layer of lematt, and nothing else.

Contract: plain frozen values with no I/O and no heavy imports (no cryptography, no aiohttp):
a domains line (``CertLine``), what is known of a stored certificate (``CertInfo``, ``Found``),
one unit of work (``Job``: a line and a key type, with the reason it is due). Everything above
this module passes these around; nothing here knows about files, the CA or hosts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from lematt.names import file_stem

KeyType = Literal["rsa", "ec"]

# The ACME endpoints a request-rate limit can name (``rateLimits`` in lematt.conf); "*" is
# every other URL of the CA.
ENDPOINT_NAMES = (
    "directory",
    "newNonce",
    "newAccount",
    "newOrder",
    "revokeCert",
    "renewalInfo",
    "*",
)


@dataclass(frozen=True)
class CertLine:
    """One ``domains`` line: one certificate per key type.

    ``names`` are validated, lowercase, shorthand-expanded, in the line's order with
    duplicates dropped; ``names[0]`` is the CN.
    """

    lineno: int
    names: tuple[str, ...]
    # The line's names as written (shorthand expanded, lowercased) *with* duplicates: the
    # original named files from this list, so ``file_stem`` needs it. Empty = same as names.
    written_names: tuple[str, ...] = ()
    # True when the certificate must carry the TLS Feature "status_request" extension
    # (RFC 7633, "OCSP must-staple"), from the actions section(s) its names map to.
    ocsp_must_staple: bool = False

    @property
    def primary(self) -> str:
        return self.names[0]

    @functools.cached_property
    def file_stem(self) -> str:
        """The stem of this certificate's file names in the upstream tree (see names.file_stem)."""
        return file_stem(self.written_names or self.names)


@dataclass(frozen=True)
class CertInfo:
    """What planning and checking need to know of a stored or downloaded certificate.

    ``public_key_der`` is empty when the value came from the inventory cache (planning does
    not need it; the cache already recorded whether key and certificate match), so it takes
    no part in equality.
    """

    not_before: datetime
    not_after: datetime
    names: frozenset[str]
    public_key_der: bytes = field(default=b"", compare=False)


@dataclass(frozen=True)
class Found:
    """The stored state of one job. ``cert`` is None when ``problem`` says why."""

    cert: CertInfo | None
    problem: str | None = None
    key_present: bool = False


@dataclass(frozen=True)
class Job:
    line: CertLine
    key_type: KeyType
    reason: str
    found: Found

    @property
    def label(self) -> str:
        return f"{self.line.primary} ({self.key_type.upper()})"
