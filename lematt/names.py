"""DNS names: validation, and the original lematt's sort order and file naming.

Contract:
- ``validate_dns_name(name)`` returns the name lowercased, or raises ``ValueError`` whose text
  is the reason (no name, no punctuation at the end) so callers can wrap it with file:line.
- ``sort_key(name)`` and ``file_stem(names)`` reproduce the original tool's ordering and the
  file-name stem of a certificate, because the certificate tree on disk is named by them and
  an existing tree must keep being found.

Pure functions, no I/O; the patterns are compiled once at import (this runs for every name of
every ``domains`` line at every cron start).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

# RFC 1035 section 2.3.1 "preferred name syntax" (letters, digits, hyphen; a label does not
# start or end with a hyphen), relaxed by RFC 1123 section 2.1 to allow a leading digit.
# Lookarounds instead of the textbook "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?" because they
# avoid backtracking and match about twice as fast. Lowercase only: callers lowercase first.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_ALLOWED_CHARS_RE = re.compile(r"[a-z0-9.-]*")

MAX_NAME_LENGTH = 253  # RFC 1035 section 2.3.4 (255 octets on the wire = 253 in text form)
MAX_LABEL_LENGTH = 63  # RFC 1035 section 2.3.4


def validate_dns_name(name: str) -> str:
    """Return ``name`` lowercased if it is a host name a CA can validate over http-01.

    Accepted: two or more LDH labels of 1-63 characters, no label starting or ending with
    ``-``, at most 253 characters, a top-level label that is not all digits. Rejected with a
    reason: wildcards, IP addresses, underscores, a trailing dot, non-ASCII text, any other
    character.
    """
    lowered = name.lower()
    # Fast path: one regex match for the common, valid case.
    if (
        len(lowered) <= MAX_NAME_LENGTH
        and name.isascii()
        and _HOSTNAME_RE.fullmatch(lowered)
        and not lowered.rpartition(".")[2].isdigit()
    ):
        return lowered
    raise ValueError(_reason(name, lowered))


def _reason(name: str, lowered: str) -> str:
    """Explain why ``name`` is not a valid host name (only called on failure)."""
    if not name:
        return "empty name"
    if not name.isascii():
        return "non-ASCII characters; write an internationalised name in its xn-- form"
    if "*" in name:
        # lematt answers http-01 only; RFC 8555 section 7.1.3 forbids http-01 for wildcards.
        return "wildcard names need the dns-01 challenge, which lematt does not use"
    if _looks_like_ip(name):
        return "an IP address, not a DNS name"
    if "_" in name:
        return "'_' is not allowed in a host name"
    if not _ALLOWED_CHARS_RE.fullmatch(lowered):
        bad = next(c for c in lowered if not (c.isalnum() or c in ".-"))
        return f"character {bad!r} is not allowed (letters, digits, '-' and '.' only)"
    if lowered.endswith("."):
        return "trailing dot; write the name without it"
    if len(lowered) > MAX_NAME_LENGTH:
        return f"{len(lowered)} characters, more than {MAX_NAME_LENGTH}"
    labels = lowered.split(".")
    if len(labels) < 2:
        return "needs at least two labels, such as example.com"
    for label in labels:
        if not label:
            return "empty label (two dots in a row, or a leading dot)"
        if len(label) > MAX_LABEL_LENGTH:
            return f"label '{label[:20]}...' is {len(label)} characters, more than 63"
        if label[0] == "-" or label[-1] == "-":
            return f"label '{label}' starts or ends with '-'"
    # RFC 3696 section 2: a top-level domain is never all-numeric.
    return "the last label is all digits; that is not a top-level domain"


def _looks_like_ip(name: str) -> bool:
    candidate = name.strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def sort_key(name: str) -> tuple[str, ...]:
    """The original's ordering key: labels from the right, the top-level label left out.

    ``mail.hello.there.com`` -> ``("there", "hello", "mail")``, so names group by their
    registered domain and then by subdomain, whatever the TLD.
    """
    labels = name.split(".")
    labels.reverse()
    return tuple(labels[1:])


def file_stem(names: Sequence[str]) -> str:
    """The file-name stem the original gives a certificate with these names.

    ``names`` is a domains line as written (shorthand expanded), duplicates included. One
    name: that name. More: the first name, then ``names[1:]`` deduplicated and sorted by
    ``sort_key``, all joined with ``_`` (``_`` never occurs in a valid host name, so the stem
    cannot be confused with a name).

    Faithful to the original on purpose, quirks included: it deduplicates only the names after
    the first, so a line repeating its first name (``a.example b a.example``) keeps it twice in
    the stem, and a two-token line naming one name twice still gets the joined form.

    One deliberate difference: the original sorted a ``set`` with a key that ties for names
    differing only in their top-level label (``www.example.com`` / ``www.example.net``), so
    their order followed Python's per-process string hashing and the stem could change from
    one run to the next. Ties are broken by the full name here, which is one of the orders the
    original could produce, and is stable.
    """
    if not names:
        raise ValueError("a certificate needs at least one name")
    if len(names) == 1:
        return names[0]
    others = sorted(set(names[1:]), key=lambda n: (sort_key(n), n))
    return "_".join([names[0], *others])


# ACME challenge tokens (RFC 8555 section 8.3: base64url; 8.1 sets no maximum, so a generous
# bound keeps hostile ones out of file names and URL tables).
MAX_TOKEN_LENGTH = 256
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")


def is_valid_token(token: object) -> bool:
    """1..MAX_TOKEN_LENGTH base64url characters (RFC 8555 section 8.3): the one rule both the
    message parser and every challenge solver apply before a token reaches a file or a URL."""
    return (isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_LENGTH
            and _TOKEN_RE.fullmatch(token) is not None)
