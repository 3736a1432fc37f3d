"""ACME resources parsed from JSON, sans-IO (RFC 8555 section 7.1).

Contract: every ``from_json(data, url)`` takes the decoded JSON body and the URL it came from
and returns a frozen dataclass, or raises ``AcmeError`` naming that URL and the bad field.
Unknown members are ignored (RFC 8555 section 7.1: clients must ignore what they do not know).
``parse_problem`` turns a problem document (section 6.7, RFC 7807) into ``AcmeProblem``,
whose text is escaped (``errors.printable``: no newline, no terminal escape gets through).

A challenge token that is not 1..``MAX_TOKEN_LENGTH`` base64url characters raises
``ChallengeError`` right here, at parse time, so that no later code can put a hostile token
(``../etc``) into a file name or a URL path (section 8.3 says tokens are base64url).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from lematt.errors import AcmeError, AcmeProblem, ChallengeError
from lematt.names import MAX_TOKEN_LENGTH, is_valid_token

# A problem about more names than this is shown with its first ones (one line must stay
# readable; RFC 8555 section 6.7.1 has one subproblem per identifier).
MAX_SUBPROBLEMS = 20


class Status(StrEnum):
    """Status values of ACME objects (RFC 8555 section 7.1.6)."""

    PENDING = "pending"
    READY = "ready"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"
    REVOKED = "revoked"


def _bad(url: str, what: str) -> AcmeError:
    return AcmeError(
        f"the CA's reply from {url} is malformed: {what}; "
        "check that the directory URL points at an RFC 8555 ACME server"
    )


def _obj(data: Any, url: str, what: str = "the body") -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _bad(url, f"{what} is not a JSON object")
    return data


def _str(data: Mapping[str, Any], name: str, url: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise _bad(url, f"field {name!r} is missing")
        return None
    if not isinstance(value, str):
        raise _bad(url, f"field {name!r} is not a string")
    return value


def _req_str(data: Mapping[str, Any], name: str, url: str) -> str:
    value = _str(data, name, url)
    assert value is not None
    return value


def _status(data: Mapping[str, Any], url: str) -> Status:
    raw = _req_str(data, "status", url)
    try:
        return Status(raw)
    except ValueError:
        raise _bad(url, f"field 'status' has the unknown value {raw[:40]!r}") from None


def _problem_or_none(data: Mapping[str, Any], url: str) -> AcmeProblem | None:
    raw = data.get("error")
    if raw is None:
        return None
    return parse_problem(_obj(raw, url, "field 'error'"), url=url)


@dataclass(frozen=True)
class Identifier:
    """An identifier object (RFC 8555 section 9.7.7); lematt only uses ``dns``."""

    type: str
    value: str

    @classmethod
    def from_json(cls, data: Any, url: str) -> Identifier:
        obj = _obj(data, url, "an identifier")
        return cls(type=_req_str(obj, "type", url), value=_req_str(obj, "value", url))

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


def parse_problem(data: Any, *, status: int | None = None, url: str = "",
                  _nested: bool = False) -> AcmeProblem:
    """A problem document (RFC 7807, RFC 8555 section 6.7) with its subproblems (6.7.1).

    The CA's text is escaped and cut by ``AcmeProblem`` itself (``errors.printable``); here
    the structure is bounded: at most ``MAX_SUBPROBLEMS`` subproblems, one level deep (a
    subproblem's own subproblems mean nothing in RFC 8555 and are ignored)."""
    if not isinstance(data, Mapping):
        raise _bad(url or "the CA", "a problem document is not a JSON object")
    ptype = data.get("type")
    detail = data.get("detail")
    if not detail and isinstance(data.get("title"), str):
        detail = data["title"]  # RFC 7807 section 3.1: the title is the short summary
    raw_status = data.get("status")
    ident = data.get("identifier")
    subs_raw = data.get("subproblems") or []
    subproblems: list[AcmeProblem] = []
    if isinstance(subs_raw, list) and not _nested:
        subproblems = [parse_problem(sub, url=url, _nested=True)
                       for sub in subs_raw[:MAX_SUBPROBLEMS] if isinstance(sub, Mapping)]
    if status is None and isinstance(raw_status, int):
        status = raw_status
    ident_value = None
    if isinstance(ident, Mapping) and isinstance(ident.get("value"), str):
        ident_value = ident["value"]
    return AcmeProblem(
        # RFC 7807 section 4.2: a missing type means "about:blank".
        type=ptype if isinstance(ptype, str) and ptype else "about:blank",
        detail=detail if isinstance(detail, str) else "",
        status=status,
        subproblems=tuple(subproblems),
        identifier=ident_value,
    )


@dataclass(frozen=True)
class Directory:
    """The directory object (RFC 8555 section 7.1.1); only ``newNonce``, ``newAccount`` and
    ``newOrder`` are required by lematt."""

    url: str
    new_nonce: str
    new_account: str
    new_order: str
    revoke_cert: str | None = None
    key_change: str | None = None
    renewal_info: str | None = None
    terms_of_service: str | None = None
    # meta.externalAccountRequired (RFC 8555 section 7.1.1): newAccount needs an EAB.
    external_account_required: bool = False
    # meta.profiles (draft-ietf-acme-profiles section 3): profile name -> description.
    profiles: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, data: Any, url: str) -> Directory:
        obj = _obj(data, url)
        meta = obj.get("meta")
        tos = None
        eab = False
        profiles: list[tuple[str, str]] = []
        if isinstance(meta, Mapping):
            if isinstance(meta.get("termsOfService"), str):
                tos = meta["termsOfService"]
            eab = meta.get("externalAccountRequired") is True
            raw = meta.get("profiles")
            if isinstance(raw, Mapping):
                # Names the CA offers; a description that is not a string is shown empty.
                profiles = [(name, text if isinstance(text, str) else "")
                            for name, text in raw.items() if isinstance(name, str)]
        return cls(
            url=url,
            new_nonce=_req_str(obj, "newNonce", url),
            new_account=_req_str(obj, "newAccount", url),
            new_order=_req_str(obj, "newOrder", url),
            revoke_cert=_str(obj, "revokeCert", url, required=False),
            key_change=_str(obj, "keyChange", url, required=False),
            renewal_info=_str(obj, "renewalInfo", url, required=False),
            terms_of_service=tos,
            external_account_required=eab,
            profiles=tuple(profiles),
        )

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.profiles)

    def endpoint_name(self, url: str) -> str:
        """The rate-limit endpoint name of a request URL ("*" for any other)."""
        names = {
            self.url: "directory",
            self.new_nonce: "newNonce",
            self.new_account: "newAccount",
            self.new_order: "newOrder",
            self.revoke_cert: "revokeCert",
        }
        name = names.get(url)
        if name is not None:
            return name
        if self.renewal_info and url.startswith(self.renewal_info):
            return "renewalInfo"
        return "*"


@dataclass(frozen=True)
class Account:
    """An account object (RFC 8555 section 7.1.2)."""

    status: Status
    contact: tuple[str, ...] = ()
    orders: str | None = None

    @classmethod
    def from_json(cls, data: Any, url: str) -> Account:
        obj = _obj(data, url)
        contact = obj.get("contact") or []
        if not isinstance(contact, list) or not all(isinstance(c, str) for c in contact):
            raise _bad(url, "field 'contact' is not a list of strings")
        return cls(
            status=_status(obj, url),
            contact=tuple(contact),
            orders=_str(obj, "orders", url, required=False),
        )


def check_token(token: Any, url: str) -> str:
    """The token, if ``is_valid_token``; else ``ChallengeError`` naming the challenge."""
    if not is_valid_token(token):
        shown = token[:40] if isinstance(token, str) else token
        raise ChallengeError(
            f"the CA sent an invalid token {shown!r} in challenge {url}: a token must be "
            f"1 to {MAX_TOKEN_LENGTH} base64url characters; nothing was written or served"
        )
    return token


@dataclass(frozen=True)
class Challenge:
    """A challenge object (RFC 8555 section 7.1.5, 8)."""

    type: str
    url: str
    status: Status
    token: str | None = None
    error: AcmeProblem | None = None

    @classmethod
    def from_json(cls, data: Any, url: str) -> Challenge:
        obj = _obj(data, url, "a challenge")
        chall_url = _req_str(obj, "url", url)
        ctype = _req_str(obj, "type", url)
        token = obj.get("token")
        # http-01, dns-01 and tls-alpn-01 all carry a token (RFC 8555 8.3, 8.4; RFC 8737);
        # any token the CA sends is checked, so a hostile one never gets further than here.
        if token is not None or ctype in ("http-01", "dns-01", "tls-alpn-01"):
            token = check_token(token, chall_url)
        return cls(
            type=ctype,
            url=chall_url,
            status=_status(obj, chall_url),
            token=token,
            error=_problem_or_none(obj, chall_url),
        )


@dataclass(frozen=True)
class Authorization:
    """An authorization object (RFC 8555 section 7.1.4)."""

    status: Status
    identifier: Identifier
    challenges: tuple[Challenge, ...]
    wildcard: bool = False
    expires: str | None = None

    @classmethod
    def from_json(cls, data: Any, url: str) -> Authorization:
        obj = _obj(data, url)
        challenges = obj.get("challenges")
        if not isinstance(challenges, list):
            raise _bad(url, "field 'challenges' is not a list")
        wildcard = obj.get("wildcard", False)
        if not isinstance(wildcard, bool):
            raise _bad(url, "field 'wildcard' is not a boolean")
        return cls(
            status=_status(obj, url),
            identifier=Identifier.from_json(obj.get("identifier"), url),
            challenges=tuple(Challenge.from_json(c, url) for c in challenges),
            wildcard=wildcard,
            expires=_str(obj, "expires", url, required=False),
        )

    @property
    def name(self) -> str:
        """The name as requested (``*.example.com`` for a wildcard authorization)."""
        return f"*.{self.identifier.value}" if self.wildcard else self.identifier.value

    def challenge(self, ctype: str) -> Challenge | None:
        return next((c for c in self.challenges if c.type == ctype), None)

    def problem(self) -> AcmeProblem | None:
        """The first challenge error, which says why an invalid authorization failed."""
        return next((c.error for c in self.challenges if c.error is not None), None)


@dataclass(frozen=True)
class Order:
    """An order object (RFC 8555 section 7.1.3)."""

    status: Status
    identifiers: tuple[Identifier, ...]
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    error: AcmeProblem | None = None
    expires: str | None = None
    # The profile the CA applied (draft-ietf-acme-profiles section 4); CAs may leave it out.
    profile: str | None = None

    @classmethod
    def from_json(cls, data: Any, url: str) -> Order:
        obj = _obj(data, url)
        idents = obj.get("identifiers")
        if not isinstance(idents, list):
            raise _bad(url, "field 'identifiers' is not a list")
        authzs = obj.get("authorizations")
        if not isinstance(authzs, list) or not all(isinstance(a, str) for a in authzs):
            raise _bad(url, "field 'authorizations' is not a list of URLs")
        return cls(
            status=_status(obj, url),
            identifiers=tuple(Identifier.from_json(i, url) for i in idents),
            authorizations=tuple(authzs),
            finalize=_req_str(obj, "finalize", url),
            certificate=_str(obj, "certificate", url, required=False),
            error=_problem_or_none(obj, url),
            expires=_str(obj, "expires", url, required=False),
            profile=_str(obj, "profile", url, required=False),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.value for i in self.identifiers)


# An explanationURL is shown to the user: a plain http(s) URL of sane length, or nothing.
_EXPLANATION_URL_RE = re.compile(r"https?://[\x21-\x7e]{1,500}")


@dataclass(frozen=True)
class RenewalInfo:
    """A RenewalInfo object (RFC 9773 section 4.2): the suggested window, as seconds since
    the epoch, and the optional explanation URL (dropped unless it is a plain http(s) URL)."""

    start: float
    end: float
    explanation_url: str | None = None

    @classmethod
    def from_json(cls, data: Any, url: str) -> RenewalInfo:
        obj = _obj(data, url)
        window = _obj(obj.get("suggestedWindow"), url, "field 'suggestedWindow'")
        start = _timestamp(window, "start", url)
        end = _timestamp(window, "end", url)
        # Section 4.2: a window whose end is not after its start is invalid, and clients
        # treat it as no answer at all.
        if end <= start:
            raise _bad(url, "the suggestedWindow ends before it starts")
        explanation = obj.get("explanationURL")
        if not isinstance(explanation, str) or not _EXPLANATION_URL_RE.fullmatch(explanation):
            explanation = None
        return cls(start, end, explanation)


def _timestamp(data: Mapping[str, Any], name: str, url: str) -> float:
    """An RFC 3339 timestamp field as seconds since the epoch."""
    raw = _req_str(data, name, url)
    try:
        when = datetime.fromisoformat(raw) if len(raw) <= 64 else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise _bad(url, f"field {name!r} is not an RFC 3339 timestamp: {raw[:40]!r}")
    return when.timestamp()
