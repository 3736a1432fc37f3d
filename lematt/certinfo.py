"""What lematt knows of a certificate once it has read it: a plain value, no cryptography.

Kept apart from ``crypto`` so that a run that finds everything in the inventory cache never
imports the X.509 machinery at all (it costs more start-up time than the whole no-op run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


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
