"""http-01 solvers behind one seam.

Contract: a solver has ``present(identifier, token, key_authorization)``, an async context
manager. On entry the CA can fetch ``http://<identifier>/.well-known/acme-challenge/<token>``
and receive ``key_authorization``; on exit (every path, also cancellation) it no longer can.
Every solver re-checks the token against the base64url alphabet (RFC 8555 section 8.3) before
it reaches a file name or a URL table: a hostile CA must not write outside the drop dir.
"""

from __future__ import annotations

from lematt.errors import ChallengeError
from lematt.names import is_valid_token

CHALLENGE_PATH = "/.well-known/acme-challenge/"


def check_token(token: str) -> str:
    if not is_valid_token(token):
        raise ChallengeError(f"the CA sent an invalid token {token[:40]!r}; nothing was written")
    return token
