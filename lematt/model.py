"""The domain types shared by every layer of lematt, and their one JSON codec.

Contract: plain values with no I/O and no heavy imports (no cryptography, no aiohttp): a
domains line (``CertLine``), what is known of a stored certificate (``CertInfo``, ``Found``)
and what is kept about it beside the tree (``CertState``, with the CA's ``RenewalWindow``),
one unit of work (``Job``: a line and a key type, with the reason it is due), what became of
it (``Outcome``, with a structured ``Failure``), one deploy step's result (``StepOutcome``,
with ``VerifyResult`` for a check of what an endpoint serves)
and a whole run (``RunResult``). ``outcome_to_json`` / ``outcome_from_json`` are the only
codec of an outcome (order processes send it, ``--json`` writes it); the rest of the run
summary's JSON is ``records.summary``'s. Nothing here knows about files, the CA or hosts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from lematt.errors import (
    AcmeNetworkError,
    AcmeProblem,
    AcmeTimeoutError,
    ActionError,
    ChallengeError,
    ConfigError,
    LemattError,
    LockError,
    RemoteError,
    StoreError,
)
from lematt.names import file_stem

KeyType = Literal["rsa", "ec"]

# The EC curves lematt makes keys on, as lematt.conf spells them (openssl's names; P-256 has
# two), each to the one spelling lematt keeps.
CURVE_NAMES = {"prime256v1": "prime256v1", "secp256r1": "prime256v1", "secp384r1": "secp384r1"}

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
    # The CA profile to order with (draft-ietf-acme-profiles), from lematt.conf's ``profile``
    # or the line's actions section; None: the CA's default.
    profile: str | None = None

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
    # The certificate's ARI identifier (RFC 9773 section 4.1): base64url of the Authority Key
    # Identifier's keyIdentifier, ".", base64url of the serial number's DER content octets.
    # Empty when the certificate has no AKI (then no CA can name it) or the value is unknown.
    cert_id: str = ""


@dataclass(frozen=True)
class Found:
    """The stored state of one job. ``cert`` is None when ``problem`` says why."""

    cert: CertInfo | None
    problem: str | None = None
    key_present: bool = False


class RenewalWindow(NamedTuple):
    """A CA's suggested renewal window (RFC 9773 section 4.2) and the moment lematt picked in
    it, once, so that successive cron runs agree. Seconds since the epoch: every cron run
    reads one per certificate, and 20,000 datetimes cost more than the rest of planning."""

    start: float
    end: float
    chosen: float
    explanation_url: str | None = None


class CertState(NamedTuple):
    """What lematt keeps about one stored certificate beside the tree (``store.renewal``),
    valid only while ``cert_id`` is the certificate's. ``profile`` is the profile lematt
    ordered it with ("" none, None unknown: issued before lematt recorded it); ``window`` the
    CA's renewal window; ``next_check`` when to ask the CA again (Retry-After), in seconds
    since the epoch; ``revoked`` the reason given to ``lematt revoke`` (the pair is due)."""

    cert_id: str
    profile: str | None = None
    window: RenewalWindow | None = None
    next_check: float = 0.0
    revoked: str | None = None


@dataclass(frozen=True)
class Job:
    line: CertLine
    key_type: KeyType
    reason: str
    found: Found
    # The certificate this order replaces (its ARI certID, RFC 9773 section 5): sent in
    # newOrder when the CA offers renewalInfo.
    replaces: str | None = None
    # Never reuse the stored key (the pair was revoked).
    new_key: bool = False

    @property
    def label(self) -> str:
        return f"{self.line.primary} ({self.key_type.upper()})"


class FailureKind(StrEnum):
    """What kind of thing went wrong, for summaries, metrics and alerts."""

    RATE_LIMITED = "rateLimited"
    VALIDATION = "validation"
    NETWORK = "network"
    CA = "ca"
    TIMEOUT = "timeout"
    DEPLOY = "deploy"
    CONFIG = "config"
    STORE = "store"
    INTERNAL = "internal"
    # Run-wide only: another run held the lock; a signal stopped the run.
    LOCKED = "locked"
    INTERRUPTED = "interrupted"


_PROBLEM_PREFIX = "urn:ietf:params:acme:error:"
# RFC 8555 section 6.7: the problem types that mean "the CA could not validate a name".
_VALIDATION_PROBLEMS = frozenset(f"{_PROBLEM_PREFIX}{t}" for t in (
    "caa", "connection", "dns", "incorrectResponse", "tls", "unauthorized"))


@dataclass(frozen=True)
class Failure:
    """Why a job or step failed: ``message`` is the sentence shown to the user; ``problem``
    the CA's problem type (a URN) and ``detail`` its text when the CA sent one;
    ``retry_after`` the seconds the CA asked to wait (its Retry-After), when it did."""

    kind: FailureKind
    message: str
    problem: str | None = None
    detail: str | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        """The failure an exception stands for (lematt's errors; anything else is internal)."""
        cause = error if isinstance(error, AcmeProblem) else error.__cause__
        ca = cause if isinstance(cause, AcmeProblem) else None
        problem = ca.type if ca is not None else None
        kind: FailureKind
        if isinstance(error, LockError):
            kind = FailureKind.LOCKED
        elif problem == f"{_PROBLEM_PREFIX}rateLimited":
            kind = FailureKind.RATE_LIMITED
        elif isinstance(error, ChallengeError) or problem in _VALIDATION_PROBLEMS:
            kind = FailureKind.VALIDATION
        elif isinstance(error, AcmeTimeoutError):
            kind = FailureKind.TIMEOUT
        elif isinstance(error, AcmeNetworkError):
            kind = FailureKind.NETWORK
        elif isinstance(error, RemoteError | ActionError):
            kind = FailureKind.DEPLOY
        elif isinstance(error, ConfigError):
            kind = FailureKind.CONFIG
        elif isinstance(error, StoreError):
            kind = FailureKind.STORE
        elif isinstance(error, LemattError):
            kind = FailureKind.CA
        else:
            return cls(FailureKind.INTERNAL, f"internal error: {error!r}")
        # A 429/503 without a problem document carries its Retry-After on the AcmeError.
        retry_after = ca.retry_after if ca is not None else getattr(error, "retry_after", None)
        return cls(kind, str(error), problem, ca.detail if ca is not None else None,
                   retry_after if isinstance(retry_after, int | float) else None)

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "message": self.message, "problem": self.problem,
                "detail": self.detail, "retry_after": self.retry_after}

    @classmethod
    def from_json(cls, data: Any) -> Failure:
        try:
            kind = FailureKind(data.get("kind"))
        except ValueError:
            kind = FailureKind.INTERNAL
        problem, detail, retry = data.get("problem"), data.get("detail"), data.get("retry_after")
        return cls(kind, str(data.get("message", "")),
                   problem if isinstance(problem, str) else None,
                   detail if isinstance(detail, str) else None,
                   float(retry) if isinstance(retry, int | float)
                   and not isinstance(retry, bool) else None)


@dataclass
class Outcome:
    """What became of one job: renewed (``changed``), or failed (``failure``)."""

    job: Job
    changed: bool = False
    failure: Failure | None = None
    not_after: datetime | None = None
    new_key: bool = False
    # The new certificate's ARI certID, so the run can keep its renewal state.
    cert_id: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    job = outcome.job
    return {
        "outcome": "renewed" if outcome.changed else "failed" if outcome.failure else "unchanged",
        "serial": serial_of(outcome.cert_id),
        "lineno": job.line.lineno, "names": list(job.line.names), "key_type": job.key_type,
        "reason": job.reason, "renewed": outcome.changed, "new_key": outcome.new_key,
        "not_after": outcome.not_after.isoformat() if outcome.not_after else None,
        "error": outcome.failure.message if outcome.failure else None,
        "failure": outcome.failure.to_json() if outcome.failure else None,
        "profile": job.line.profile, "cert_id": outcome.cert_id or None,
    }


def outcome_from_json(job: Job, data: dict[str, Any]) -> Outcome:
    """The outcome of ``job`` from ``outcome_to_json``'s form (the job itself is known)."""
    not_after = data.get("not_after")
    failure = data.get("failure")
    return Outcome(job, changed=bool(data.get("renewed")),
                   failure=Failure.from_json(failure) if isinstance(failure, dict) else None,
                   not_after=datetime.fromisoformat(not_after) if not_after else None,
                   new_key=bool(data.get("new_key")), cert_id=str(data.get("cert_id") or ""))


@dataclass(frozen=True)
class Served:
    """One certificate as a server presented it or as it is stored: serial (hex) and
    notAfter, enough to tell two apart in a message."""

    serial: str
    not_after: datetime

    def __str__(self) -> str:
        return f"serial {self.serial}, notAfter {self.not_after:%Y-%m-%d %H:%M:%S}Z"

    def to_json(self) -> dict[str, str]:
        return {"serial": self.serial, "not_after": self.not_after.isoformat()}


@dataclass(frozen=True)
class VerifyResult:
    """Whether an endpoint serves the stored certificate of one line and key type.

    ``name`` is the server name (SNI) asked for; ``served`` is None when no certificate was
    read (``error`` says why); ``matched`` compares the leaves' SHA-256 fingerprints."""

    endpoint: str
    name: str
    key_type: KeyType
    matched: bool
    expected: Served | None
    served: Served | None = None
    error: str | None = None

    def describe(self) -> str:
        where = f"{self.endpoint} for {self.name} ({self.key_type.upper()})"
        if self.matched:
            return f"{where} serves the stored certificate ({self.expected})"
        if self.expected is None:
            return f"{where}: {self.error}"
        shown = f"serves {self.served}" if self.served else f"{self.error}"
        return f"{where}: expected {self.expected}; {shown}"

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "name": self.name, "key_type": self.key_type,
                "matched": self.matched,
                "expected": self.expected.to_json() if self.expected else None,
                "served": self.served.to_json() if self.served else None,
                "error": self.error}


@dataclass(frozen=True)
class StepOutcome:
    """One deploy step as it ran: which section's which kind of step on which host."""

    section: str
    kind: str  # "uploadCerts" | "uploadKeys" | "update" | "verify"
    host: str
    what: str
    failure: Failure | None = None
    # A "verify" step: what the endpoint served (lematt.verify).
    verified: VerifyResult | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def serial_of(cert_id: str) -> str | None:
    """The serial number (lowercase hex) inside an ARI certID (``AKI.serial``, base64url),
    None when unknown."""
    import base64
    import binascii

    _, dot, serial = cert_id.partition(".")
    if not dot or not serial:
        return None
    try:
        raw = base64.urlsafe_b64decode(serial + "=" * (-len(serial) % 4))
    except (binascii.Error, ValueError):
        return None
    return format(int.from_bytes(raw, "big"), "x") if raw else None


@dataclass(frozen=True)
class CertRecord:
    """One certificate of the config as the run found it: where its pair lives and what was
    stored there when the run started (for the summary's every-certificate list)."""

    line: CertLine
    key_type: KeyType
    key_path: str
    cert_path: str
    found: Found


@dataclass
class RunResult:
    outcomes: list[Outcome] = field(default_factory=list)
    steps: list[StepOutcome] = field(default_factory=list)
    deploy_seconds: float = 0.0
    host_seconds: dict[str, float] = field(default_factory=dict)
    # Filled as the run goes, so that a run stopped half-way still reports what it knew:
    # every certificate of the config (after the scan) and the due jobs (after planning;
    # None: not planned).
    certificates: Callable[[], list[CertRecord]] | None = None
    jobs: list[Job] | None = None
    # What the verify endpoints served this run, per certificate (line number, key type).
    served: dict[tuple[int, KeyType], list[VerifyResult]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and all(s.ok for s in self.steps)
