"""lematt.conf -> ``Settings``.

Contract: ``parse_settings(path, text, conf_dir)`` reads the ``[config]`` section of an INI
file, or the top-level mapping of a YAML file (or the mapping under its only key ``config:``),
and returns ``(Settings, warnings)``. Every key
is checked; an error names ``file:line``, the key and what is allowed. Relative paths are
taken from ``conf_dir`` (``~`` expanded). Nothing here checks that the account key or the
challenge directory exist: that is the run's business (and the upstream example must load
on any machine).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from lematt.config.notify import parse_notify
from lematt.config.source import (
    Block,
    canonical_key,
    detect_format,
    is_unset,
    read_ini,
    read_yaml,
    to_bool,
    unknown_key,
)
from lematt.config.types import Settings
from lematt.errors import ConfigError
from lematt.model import CURVE_NAMES, ENDPOINT_NAMES, KeyType
from lematt.names import validate_dns_name

KNOWN_KEYS = (
    "reauthorizeDays",
    "generateNewCertsAfterDays",
    "challengeDropDir",
    "challengeListen",
    "accountKey",
    "keyBitsRSA",
    "curve",
    "alwaysGenerateNewKeys",
    "rsaTag",
    "curveTag",
    "keyTypes",
    "directoryProd",
    "directoryTest",
    "caBundle",
    "contactEmail",
    "rateLimits",
    "sshConfig",
    "sshConnectTimeout",
    "sshCommandTimeout",
    "parallelHosts",
    "parallel",
    "processes",
    "acmeRequestTimeout",
    "orderTimeout",
    "caAllowedOrigins",
    "runTimeout",
    "profile",
    "eabKid",
    "eabHmacKey",
    "eabHmacKeyFile",
    "agreeTermsOfService",
    "preferredChain",
    "allowGroupWritable",
    "verifyTimeout",
    "notify",
    "notifyAlways",
    "notifyTimeout",
    "metricsFile",
)

RSA_BITS = (2048, 3072, 4096)
KEY_TYPES: tuple[KeyType, ...] = ("rsa", "ec")
RATE_LIMIT_ENDPOINTS = ENDPOINT_NAMES  # one list: the limiter's buckets

# Tags become part of file names (name-cert-combined.<tag>.pem), so keep them file-name safe.
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# RFC 5322 "atext" local part; RFC 8555 section 7.3 wants a single plain mailto: address.
_EMAIL_RE = re.compile(r"(?P<local>[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+)@(?P<domain>[^@\s]+)")
_KEY_TYPE_SPLIT_RE = re.compile(r"[\s,]+")
# draft-ietf-acme-profiles leaves profile names to the CA; Let's Encrypt's are "classic",
# "tlsserver", "shortlived". lematt takes plain tokens, so a name is safe in messages and files.
PROFILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_PRINTABLE_RE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")

_MISSING = object()


class _EntryError(ValueError):
    """A bad value inside a YAML mapping value, with the line of the inner key."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def parse_settings(path: Path, text: str, conf_dir: Path) -> tuple[Settings, list[str]]:
    """Validate lematt.conf ``text`` (read from ``path``) into ``Settings`` plus warnings."""
    warnings: list[str] = []
    is_ini = detect_format(path, text) == "ini"
    if is_ini:
        blocks = read_ini(path, text)
        found = [b for b in blocks if b.name == "config"]
        if not found:
            raise ConfigError(
                "no [config] section: put the settings after a '[config]' line "
                "(or write the file as a YAML mapping of the same keys)", path=path)
        block = found[0]
        warnings += [f"{path}:{b.line}: section [{b.name}] is ignored; lematt reads only "
                     "[config]" for b in blocks if b.name != "config"]
        ignore_case = True
    else:
        root = read_yaml(path, text)
        if not isinstance(root, Block):
            raise ConfigError(
                "expected an INI file with a [config] section, or a YAML mapping of "
                "settings such as 'accountKey: account.key'", path=path)
        block = root
        # Also accepted: the keys under one "config:" key, mirroring the INI [config] section.
        if len(root.entries) == 1 and root.entries[0].key == "config":
            inner = root.entries[0].value
            if not isinstance(inner, Block):
                raise ConfigError("config: expected a mapping of settings under it",
                                  path=path, line=root.entries[0].line)
            block = inner
        ignore_case = False

    values: dict[str, tuple[object, int]] = {}
    for entry in block.entries:
        key = canonical_key(entry.key, KNOWN_KEYS, ignore_case)
        if key is None:
            raise unknown_key(path, entry.line, entry.key, KNOWN_KEYS)
        values[key] = (entry.value, entry.line)
    settings = _build(path, conf_dir, values, is_json=is_ini)
    if settings.metrics_file is not None and settings.metrics_file.suffix != ".prom":
        # node_exporter's textfile collector reads only *.prom files.
        warnings.append(f"{settings.where('metricsFile')}: metricsFile "
                        f"{settings.metrics_file.name} does not end in .prom; node_exporter's "
                        "textfile collector reads only *.prom files")
    return settings, warnings


def _build(path: Path, conf_dir: Path, values: dict[str, tuple[object, int]], *,
           is_json: bool = True) -> Settings:
    def get(key: str, convert: Callable[[object], object]) -> object:
        if key not in values or is_unset(values[key][0]):
            return _MISSING
        value, line = values[key]
        try:
            return convert(value)
        except ValueError as exc:
            if isinstance(exc, _EntryError) and exc.line is not None:
                line = exc.line
            hint = ""
            if isinstance(value, str) and re.search(r"\s[#;]", value):
                hint = " (a comment must be on its own line; '#' after a value is part of it)"
            raise ConfigError(f"{key}: {exc}{hint}", path=path, line=line) from None

    def line_of(key: str) -> int | None:
        return values[key][1] if key in values else None

    def as_path(value: object) -> Path:
        return _path(value, conf_dir)

    kw: dict[str, object] = {"conf_dir": conf_dir, "source": path,
                             "key_lines": tuple((k, line) for k, (_, line) in values.items())}
    both = [k for k in ("eabHmacKey", "eabHmacKeyFile") if k in values
            and not is_unset(values[k][0])]
    if len(both) == 2:
        raise ConfigError("eabHmacKey and eabHmacKeyFile are both set: keep one (the file "
                          "keeps the secret out of lematt.conf)", path=path,
                          line=line_of("eabHmacKeyFile"))
    simple: dict[str, tuple[str, Callable[[object], object]]] = {
        "reauthorizeDays": ("reauthorize_days", _positive_days),
        "generateNewCertsAfterDays": ("generate_new_certs_after_days", _optional_days),
        "challengeDropDir": ("challenge_drop_dir", as_path),
        "challengeListen": ("challenge_listen", _listen),
        "accountKey": ("account_key", as_path),
        "keyBitsRSA": ("key_bits_rsa", _rsa_bits),
        "alwaysGenerateNewKeys": ("always_generate_new_keys", to_bool),
        "keyTypes": ("key_types", _key_types),
        "directoryProd": ("directory_prod", _directory_url),
        "directoryTest": ("directory_test", _directory_url),
        "caBundle": ("ca_bundle", lambda v: _readable_file(as_path(v))),
        "contactEmail": ("contact_email", _email),
        "rateLimits": ("rate_limits", _rate_limits),
        "rsaTag": ("rsa_tag", _tag),
        "curveTag": ("curve_tag", _tag),
        "sshConfig": ("ssh_config", lambda v: _readable_file(as_path(v))),
        "sshConnectTimeout": ("ssh_connect_timeout", _positive_seconds),
        "sshCommandTimeout": ("ssh_command_timeout", _positive_seconds),
        "parallelHosts": ("parallel_hosts", _positive_int),
        "parallel": ("parallel", _positive_int),
        "processes": ("processes", _positive_int),
        "acmeRequestTimeout": ("acme_request_timeout", _positive_seconds),
        "orderTimeout": ("order_timeout", _positive_seconds),
        "caAllowedOrigins": ("ca_allowed_origins", _origins),
        "runTimeout": ("run_timeout", _positive_seconds),
        "profile": ("profile", profile_name),
        "eabKid": ("eab_kid", _eab_kid),
        "eabHmacKey": ("eab_hmac_key", _hmac_key),
        "eabHmacKeyFile": ("eab_hmac_key", lambda v: _hmac_key_file(as_path(v))),
        "agreeTermsOfService": ("agree_terms_of_service", to_bool),
        "preferredChain": ("preferred_chain", _printable),
        "allowGroupWritable": ("allow_group_writable", to_bool),
        "verifyTimeout": ("verify_timeout", _positive_seconds),
        "notifyAlways": ("notify_always", to_bool),
        "notifyTimeout": ("notify_timeout", _positive_seconds),
        "metricsFile": ("metrics_file", lambda v: _metrics_file(as_path(v))),
    }
    for key, (field_name, convert) in simple.items():
        result = get(key, convert)
        if result is not _MISSING:
            kw[field_name] = result

    if "notify" in values:
        kw["notify"] = parse_notify(path, *values["notify"], is_json)
    curve_written = get("curve", _curve_as_written)
    if curve_written is not _MISSING:
        kw["curve"] = CURVE_NAMES[str(curve_written)]
    # The original's defaults: tags follow the bits and the curve *as written*, so an
    # existing tree of files named ...prime256v1.pem or ...secp256r1.pem is still found.
    kw.setdefault("rsa_tag", f"rsa{kw.get('key_bits_rsa', 2048)}")
    kw.setdefault("curve_tag", curve_written if curve_written is not _MISSING else "prime256v1")
    # 0 is the original's "off" value for generateNewCertsAfterDays.
    if kw.get("generate_new_certs_after_days") == 0:
        kw["generate_new_certs_after_days"] = None

    if ("eab_kid" in kw) != ("eab_hmac_key" in kw):
        missing, given = (("eabHmacKey (or eabHmacKeyFile)", "eabKid") if "eab_kid" in kw
                          else ("eabKid", both[0] if both else "eabHmacKey"))
        raise ConfigError(f"{given} is set but {missing} is not: external account binding "
                          "needs both values your CA gave you", path=path,
                          line=line_of(given))
    if "account_key" not in kw:
        raise ConfigError("accountKey is missing: name the ACME account key file "
                          "(e.g. 'accountKey: account.key')", path=path)
    if "challenge_drop_dir" not in kw and "challenge_listen" not in kw:
        raise ConfigError(
            "neither challengeDropDir nor challengeListen is set: lematt needs one of them to "
            "answer http-01 challenges (a directory your web server serves as "
            "/.well-known/acme-challenge/, or an address:port for its own challenge server)",
            path=path)
    key_types = kw.get("key_types", KEY_TYPES)
    if "rsa" in key_types and "ec" in key_types and kw["rsa_tag"] == kw["curve_tag"]:
        raise ConfigError(
            f"rsaTag and curveTag are both '{kw['rsa_tag']}': RSA and EC files would overwrite "
            "each other; give them different tags",
            path=path, line=line_of("curveTag") or line_of("rsaTag"))
    return Settings(**kw)  # type: ignore[arg-type]


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value.strip()


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def profile_name(value: object) -> str:
    name = _string(value)
    if not PROFILE_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a profile name (1-64 letters, digits, '.', '_', "
                         "'-'; e.g. classic, tlsserver, shortlived)")
    return name


def _eab_kid(value: object) -> str:
    kid = _string(value)
    if not kid or any(c.isspace() for c in kid) or not _PRINTABLE_RE.fullmatch(kid):
        raise ValueError("expected the key identifier your CA gave you (printable, no spaces)")
    return kid


def _hmac_key(value: object) -> str:
    key = _string(value)
    if not _B64URL_RE.fullmatch(key) or len(key.rstrip("=")) < 16:
        raise ValueError("expected the HMAC key your CA gave you, base64url encoded "
                         "(letters, digits, '-' and '_'; at least 16 characters)")
    return key.rstrip("=")


def _hmac_key_file(path: Path) -> str:
    path = _readable_file(path)
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc}") from None
    try:
        return _hmac_key(text.strip())
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None


def _printable(value: object) -> str:
    text = _string(value)
    if not _PRINTABLE_RE.fullmatch(text):
        raise ValueError("expected 1-256 printable characters")
    return text


def _positive_days(value: object) -> float:
    days = _number(value)
    if days <= 0:
        raise ValueError(f"{value!r} must be a number of days greater than 0 (may be fractional)")
    return days


def _positive_seconds(value: object) -> float:
    seconds = _number(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be a number of seconds greater than 0")
    return seconds


def _positive_int(value: object) -> int:
    number = _number(value)
    if number < 1 or number != int(number):
        raise ValueError(f"{value!r} must be a whole number of at least 1")
    return int(number)


def _optional_days(value: object) -> float | None:
    days = _number(value)
    if days < 0:
        raise ValueError(f"{value!r} must be 0 (off) or a number of days greater than 0")
    return days


def _path(value: object, conf_dir: Path) -> Path:
    text = _string(value)
    if "\x00" in text:  # source.py refuses it in any value; a path is where it would crash
        raise ValueError(f"{text!r} contains a NUL character, which no path can hold")
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else conf_dir / path


def _metrics_file(path: Path) -> Path:
    """``metricsFile``: a file in an existing, writable directory (checked when the config is
    loaded, so a typo is exit 2 before the run, not a lost file after it)."""
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory; name a file such as lematt.prom in it")
    if not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist; create it (for "
                         "node_exporter: its --collector.textfile.directory)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"directory {str(path.parent)!r} is not writable by this user")
    return path


def _readable_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not an existing file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{str(path)!r} is not readable by this user")
    return path


def _rsa_bits(value: object) -> int:
    allowed = ", ".join(map(str, RSA_BITS))
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    # bool is an int subclass: YAML "keyBitsRSA: yes" must not read as 1.
    if isinstance(value, bool) or not isinstance(value, int) or value not in RSA_BITS:
        raise ValueError(f"{value!r} is not allowed; use {allowed}")
    return value


def _curve_as_written(value: object) -> str:
    curve = _string(value)
    if curve not in CURVE_NAMES:
        raise ValueError(f"{curve!r} is not allowed; use {', '.join(CURVE_NAMES)}")
    return curve


def _tag(value: object) -> str:
    tag = _string(value) if not isinstance(value, (int, float)) else str(value)
    if not _TAG_RE.fullmatch(tag):
        raise ValueError(f"{tag!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-' "
                         "(it becomes part of file names)")
    return tag


def _key_types(value: object) -> tuple[KeyType, ...]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{text!r} is not a JSON list ({exc.msg})") from None
        else:
            value = [t for t in _KEY_TYPE_SPLIT_RE.split(text) if t]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{value!r} is not allowed; list one or both of: rsa, ec")
    chosen: list[KeyType] = []
    for item in value:
        if item not in KEY_TYPES:
            raise ValueError(f"{item!r} is not a key type; use rsa and/or ec")
        if item not in chosen:
            chosen.append(item)
    return tuple(chosen)


def _directory_url(value: object) -> str:
    url = _string(value)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname or re.search(r"\s", url):
        raise ValueError(f"{url!r} is not an https:// URL")
    if parts.scheme == "http" and not _is_loopback_host(parts.hostname):
        raise ValueError(f"{url!r} uses plain http://, which is only allowed for a loopback "
                         "test CA (127.0.0.0/8, ::1, localhost); use https://")
    return url


def _origins(value: object) -> tuple[str, ...]:
    """``caAllowedOrigins``: origins (``https://host[:port]``) given as a list, or in INI as
    one line separated by commas or spaces (or a JSON list); each normalised to
    ``scheme://host:port``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{text!r} is not a JSON list ({exc.msg})") from None
        else:
            value = [item for item in _KEY_TYPE_SPLIT_RE.split(text) if item]
    if not isinstance(value, list):
        raise ValueError(f"{value!r} is not a list of origins like https://acme.example.com")
    origins: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not an origin like https://acme.example.com")
        url = _directory_url(item)  # https, or http for a loopback test CA
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None or parts.query \
                or parts.fragment or parts.path not in ("", "/"):
            raise ValueError(f"{url!r} is not an origin: write only scheme://host[:port], "
                             "e.g. https://acme.example.com")
        assert parts.hostname is not None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = f"{parts.scheme}://{host}:{port}"
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _email(value: object) -> str:
    text = _string(value)
    address = text.removeprefix("mailto:")
    match = _EMAIL_RE.fullmatch(address)
    if match:
        try:
            return f"{match['local']}@{validate_dns_name(match['domain'])}"
        except ValueError:
            pass
    raise ValueError(f"{text!r} does not look like an email address (name@example.com)")


def _listen(value: object) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not ADDRESS:PORT (in YAML, quote it: '[::1]:80')")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, like [::1]:80")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not ADDRESS:PORT with a port from 1 to 65535")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (names are not "
                         "allowed, so the listening address is unambiguous)") from None
    if text.startswith("[") and address.version != 6:
        raise ValueError(f"{text!r}: brackets are for IPv6 addresses only")
    return str(address), int(port)


def _rate_limits(value: object) -> tuple[tuple[str, float], ...]:
    example = 'write e.g. {"newOrder": 20, "*": 50}'
    pairs: list[tuple[str, object, int | None]]
    if isinstance(value, Block):
        pairs = [(e.key, e.value, e.line) for e in value.entries]
    elif isinstance(value, str):
        try:
            # Tag objects so a JSON list cannot pass for one, and keep duplicate keys visible.
            parsed = json.loads(value, object_pairs_hook=lambda kv: ("object", kv))
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object ({exc.msg}); {example}") from None
        if not (isinstance(parsed, tuple) and parsed[0] == "object"):
            raise ValueError(f"not a JSON object; {example}")
        pairs = [(k, v, None) for k, v in parsed[1]]
    else:
        raise ValueError(f"not a mapping of endpoint name to requests per second; {example}")
    limits: dict[str, float] = {}
    for endpoint, rate, line in pairs:
        if endpoint not in RATE_LIMIT_ENDPOINTS:
            close = difflib.get_close_matches(endpoint, RATE_LIMIT_ENDPOINTS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "use " + ", ".join(
                RATE_LIMIT_ENDPOINTS)
            raise _EntryError(f"{endpoint!r} is not an endpoint name; {hint}", line)
        if endpoint in limits:
            raise _EntryError(f"{endpoint!r} appears twice", line)
        try:
            number = _number(rate)
        except ValueError as exc:
            raise _EntryError(f"{endpoint}: {exc}", line) from None
        if number <= 0:
            raise _EntryError(
                f"{endpoint}: {rate!r} must be requests per second greater than 0", line)
        limits[endpoint] = number
    return tuple(limits.items())


def email_address(value: object) -> str:
    """A contact address as lematt.conf's contactEmail takes it (``ValueError`` otherwise)."""
    return _email(value)
