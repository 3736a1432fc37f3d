"""http-01 solvers behind one seam.

Contract: a solver has ``present(identifier, token, key_authorization)``, an async context
manager. On entry the CA can fetch ``http://<identifier>/.well-known/acme-challenge/<token>``
and receive ``key_authorization``; on exit (every path, also cancellation) it no longer can.
Every solver re-checks the token against the base64url alphabet (RFC 8555 section 8.3) before
it reaches a file name or a URL table: a hostile CA must not write outside the drop dir.
"""

from __future__ import annotations

import re

from lematt.errors import ChallengeError

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,512}")

CHALLENGE_PATH = "/.well-known/acme-challenge/"


def check_token(token: str) -> str:
    if not TOKEN_RE.fullmatch(token):
        raise ChallengeError(f"the CA sent an invalid token {token[:40]!r}; nothing was written")
    return token
