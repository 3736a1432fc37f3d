"""The structured (SSH) forms of actions, in actions.conf and actions.yaml alike.

Contract: ``parse_structured(path, where, key, item, line)`` turns one mapping inside an
action list into ``SshUpload`` (uploadCerts/uploadKeys), ``SshRun`` (update, and lematt.conf's
``notify``) or
``SshForward`` (prepare), or raises ``ConfigError`` naming file:line, the section and key, and
what is allowed. Destinations are checked here so that a value can never reach ssh as an
option (no leading '-', no spaces or shell characters).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from lematt.config.source import Block
from lematt.config.types import SshForward, SshRun, SshUpload
from lematt.errors import ConfigError

# An alias from the SSH client config, or [user@]host[:port], or [user@][v6]:port.
_DEST_RE = re.compile(r"(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?"
                      r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_ALLOWED = {
    "uploadCerts": ({"ssh", "to"}, {"mode"}),
    "uploadKeys": ({"ssh", "to"}, {"mode"}),
    "update": ({"ssh"}, {"run"}),
    "notify": ({"ssh", "run"}, set()),
    "prepare": ({"ssh", "forward"}, {"listen", "command"}),
}
_EXAMPLES = {
    "uploadCerts": '{"ssh": "web1", "to": "/etc/ssl/lematt", "mode": "0644"}',
    "uploadKeys": '{"ssh": "web1", "to": "/etc/ssl/private", "mode": "0600"}',
    "update": '{"ssh": "web1", "run": "systemctl reload nginx"}',
    "notify": '{"ssh": "monitor", "run": "logger -t lematt run failed"}',
    "prepare": '{"ssh": "web1", "forward": "http://central.example.com"}',
}


def _items(item: Block | dict[str, object], line: int) -> dict[str, tuple[object, int]]:
    if isinstance(item, Block):
        return {e.key: (e.value, e.line) for e in item.entries}
    return {str(k): (v, line) for k, v in item.items()}


def parse_structured(path: Path, where: str, key: str, item: Block | dict[str, object],
                     line: int) -> SshUpload | SshRun | SshForward:
    values = _items(item, line)
    required, optional = _ALLOWED[key]
    example = _EXAMPLES[key]

    def fail(message: str, at: int = line) -> ConfigError:
        return ConfigError(f"{where}: {message}; for example {example}", path=path, line=at)

    for name, (_, at) in values.items():
        if name not in required | optional:
            allowed = ", ".join(sorted(required | optional))
            raise fail(f"unknown key '{name}' in an ssh action (allowed: {allowed})", at)
    for name in sorted(required - values.keys()):
        raise fail(f"an ssh action needs '{name}'")

    def text(name: str) -> str | None:
        if name not in values or values[name][0] is None:
            return None
        value, at = values[name]
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\0" in value:
            raise fail(f"'{name}' must be a non-empty one-line string, not {value!r}", at)
        return value.strip()

    dest = text("ssh")
    assert dest is not None
    if not _DEST_RE.fullmatch(dest):
        raise fail(f"'ssh': {dest!r} is not an SSH destination (an alias from the SSH "
                   "config, or [user@]host[:port])", values["ssh"][1])
    if key in ("uploadCerts", "uploadKeys"):
        return SshUpload(dest, text("to") or "", _mode(values.get("mode"), fail))
    if key in ("update", "notify"):
        return SshRun(dest, text("run"))
    forward = text("forward") or ""
    parts = urlsplit(forward)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in (
            "", "/") or parts.query or parts.fragment or parts.username:
        raise fail(f"'forward': {forward!r} must be a base URL such as http://host or "
                   "https://host:443 (no path)", values["forward"][1])
    return SshForward(dest, forward.rstrip("/"), text("listen"), text("command"))


def _mode(entry: tuple[object, int] | None, fail: object) -> int | None:
    if entry is None or entry[0] is None:
        return None
    value, at = entry
    mode: int | None = None
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value.strip()):
        mode = int(value.strip(), 8)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        mode = value  # YAML 1.1 reads an unquoted 0644 as octal already
    if mode is None:
        assert callable(fail)
        raise fail(f"'mode': {value!r} is not a file mode such as \"0644\"", at)
    return mode
