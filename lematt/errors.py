"""The error tree of lematt.

Contract: every error lematt raises on purpose is a ``LemattError``; its ``str()`` is the
sentence shown to the user (what failed, for which file/cert/host, and what to do), so the CLI
prints it as it is and shows a traceback only with ``--debug``. Library exceptions (aiohttp,
cryptography, OSError) are mapped to these types once, at the module that calls the library.

Text from the CA is not trusted: the errors that carry it (``AcmeProblem``, ``AcmeError``,
``ChallengeError``) pass their text through ``printable`` when they are made, so a newline in a
problem detail cannot forge a report line and an ANSI escape cannot reach a terminal, whatever
path the error takes afterwards (stderr, ``--json``, an order process's answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A CA's problem detail is a sentence; a longer one is cut so that it stays one readable line.
MAX_CA_DETAIL = 500


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every character that is not printable (C0 and C1 controls, DEL, line and
    paragraph separators, bidi and other format characters) written as its Python escape
    (``\\n``, ``\\x1b``, ``\\u202e``), cut to ``limit`` characters when given.

    Idempotent (a backslash stays a backslash), so an error made again from an escaped text
    is unchanged."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                       for ch in text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


class LemattError(Exception):
    """Base of every error lematt reports to a user."""


class ConfigError(LemattError):
    """A config file is wrong; the message names ``file:line`` and the key (exit status 2)."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class LockError(LemattError):
    """Another lematt run holds the conf-dir lock (fatal for this run)."""


class StoreError(LemattError):
    """Reading or writing the certificate tree failed."""


class CryptoError(LemattError):
    """A key, CSR or certificate could not be made or read, or does not match."""


@dataclass
class AcmeProblem(LemattError):
    """An RFC 8555 problem document (section 6.7) returned by the CA.

    ``type`` is the full URN (``urn:ietf:params:acme:error:rateLimited``), ``detail`` the
    server's text, ``subproblems`` the per-identifier problems (section 6.7.1).
    """

    type: str
    detail: str = ""
    status: int | None = None
    subproblems: tuple[AcmeProblem, ...] = field(default_factory=tuple)
    identifier: str | None = None
    context: str = ""
    # Seconds the CA asked to wait (its Retry-After header) when it sent one.
    retry_after: float | None = None

    def __post_init__(self) -> None:
        # Every field may hold the CA's text (the context names CA URLs): escape it here,
        # once, so that every way this error is shown is one line without escapes.
        self.type = printable(self.type, MAX_CA_DETAIL)
        self.detail = printable(self.detail, MAX_CA_DETAIL)
        self.identifier = printable(self.identifier, 300) if self.identifier else None
        self.context = printable(self.context)
        super().__init__(str(self))

    @property
    def short_type(self) -> str:
        prefix = "urn:ietf:params:acme:error:"
        return self.type[len(prefix):] if self.type.startswith(prefix) else self.type

    def __str__(self) -> str:
        head = f"{self.context}: " if self.context else ""
        who = f" for {self.identifier}" if self.identifier else ""
        text = f"{head}the CA answered {self.short_type}{who}: {self.detail or '(no detail)'}"
        for sub in self.subproblems:
            text += f"; {sub.identifier or '?'}: {sub.short_type}: {sub.detail}"
        return text

    def __hash__(self) -> int:
        return id(self)


class AcmeError(LemattError):
    """Talking to the CA failed without a problem document (a reply lematt cannot use).

    The message often quotes the CA (a URL, a field, a body): it is made ``printable``."""

    retry_after: float | None = None  # the reply's Retry-After in seconds, when it had one

    def __init__(self, message: str = "") -> None:
        super().__init__(printable(str(message)))


class AcmeNetworkError(AcmeError):
    """The CA could not be reached, or the connection broke."""


class AcmeTimeoutError(AcmeError):
    """The CA did not answer, or an order did not finish, in time."""


class ChallengeError(LemattError):
    """A challenge could not be presented or did not validate (``printable`` message: it
    quotes the CA's names, tokens and problems)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(printable(str(message)))


class RemoteError(LemattError):
    """An SSH host could not be reached or a remote step failed."""


class ActionError(LemattError):
    """A configured action (prepare, upload, update) failed."""
