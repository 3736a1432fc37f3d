"""The ``domains`` file -> ``CertLine``s.

Contract: ``parse_domains(path, text)`` returns one ``CertLine`` per certificate line, in file
order, or raises ``ConfigError(path=..., line=N)``. Format (upstream's): one certificate per
line, names separated by whitespace; the first name is the certificate's main name (CN); a
later name without a dot is shorthand for ``<name>.<first name>``; ``#`` starts a comment
(a whole line, or a word starting with ``#`` and everything after it); blank lines are
skipped. Names are validated and lowercased; a name repeated on a line counts once.

Speed matters (this runs at every cron start, on files of thousands of lines): one pass, one
precompiled regex per name on the valid path, no per-line allocations beyond the result.
"""

from __future__ import annotations

from pathlib import Path

from lematt.errors import ConfigError
from lematt.model import CertLine
from lematt.names import validate_dns_name

# Let's Encrypt issues at most 100 names per certificate
# (https://letsencrypt.org/docs/rate-limits/, "names per certificate"); the original lematt
# enforced the same number.
MAX_NAMES_PER_CERT = 100


def parse_domains(path: Path, text: str) -> list[CertLine]:
    """Parse the domains file ``text`` read from ``path`` (``path`` only names errors)."""
    lines: list[CertLine] = []
    seen_sets: dict[frozenset[str], int] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        tokens = raw.split()
        if not tokens or tokens[0][0] == "#":
            continue
        if "#" in raw:
            for i, token in enumerate(tokens):
                if token[0] == "#":
                    del tokens[i:]
                    break
        written = _expand(path, lineno, tokens)
        names = written if len(written) == 1 else tuple(dict.fromkeys(written))  # keep order
        if len(names) > MAX_NAMES_PER_CERT:
            raise ConfigError(
                f"{len(names)} names on one line, but a certificate holds at most "
                f"{MAX_NAMES_PER_CERT} (https://letsencrypt.org/docs/rate-limits/); "
                "split the line into several certificates",
                path=path, line=lineno)
        key = frozenset(names)
        if key in seen_sets:
            raise ConfigError(
                f"same names as line {seen_sets[key]} ({' '.join(names)}); one certificate "
                "per name set: remove one of the two lines",
                path=path, line=lineno)
        seen_sets[key] = lineno
        # written_names only when it differs (a repeated name): () means "same as names".
        lines.append(CertLine(lineno, names, written if len(names) != len(written) else ()))
    return lines


def _expand(path: Path, lineno: int, tokens: list[str]) -> tuple[str, ...]:
    """Validate and lowercase the tokens of one line, expanding shorthand names."""
    first_written = tokens[0]
    if "." not in first_written:
        raise ConfigError(
            f"the first name '{first_written}' has no dot: the first name is the certificate's "
            "main name and completes shorthand names, so write it in full (e.g. example.com)",
            path=path, line=lineno)
    result: list[str] = []
    first = first_written
    try:
        for token in tokens:
            # Shorthand as upstream: a word without a dot is a subdomain of the first name.
            result.append(validate_dns_name(token if "." in token else f"{token}.{first}"))
            first = result[0]
    except ValueError as exc:
        written = tokens[len(result)]
        expanded = written if "." in written else f"{written}.{first}"
        shown = f"'{written}'" if written == expanded else f"'{written}' (read as '{expanded}')"
        raise ConfigError(f"{shown} is not a valid DNS name ({exc})",
                          path=path, line=lineno) from None
    return tuple(result)
