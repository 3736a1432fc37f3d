"""lematt.conf's ``notify`` -> the commands run after a run (``lematt.records.notify``).

Contract: ``parse_notify(path, value, line, is_json)`` takes the written value (in INI a JSON
list, as actions.conf writes its lists; in YAML a list) and returns a tuple of local shell
strings and ``SshRun`` forms (``{"ssh": DEST, "run": CMD}``, checked as deploy updates are), or
raises ``ConfigError`` naming file:line and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

from lematt.config.remote import parse_structured
from lematt.config.source import Block, value_list
from lematt.config.types import SshRun
from lematt.errors import ConfigError

_EXAMPLE = '["curl -fsS -m 10 --data-binary @- https://hc-ping.com/UUID/fail"]'


def parse_notify(path: Path, value: object, line: int, is_json: bool
                 ) -> tuple[str | SshRun, ...]:
    value = value_list(path, "notify", value, line, is_json, "commands", _EXAMPLE)
    commands: list[str | SshRun] = []
    for item in value:
        if isinstance(item, Block | dict):
            form = parse_structured(path, "notify", "notify", item, line)
            assert isinstance(form, SshRun)
            commands.append(form)
        elif isinstance(item, str) and item.strip() and "\0" not in item:
            commands.append(item)
        else:
            raise ConfigError(f"notify: {item!r} is not a command (a non-empty string) nor "
                              'an ssh mapping such as {"ssh": "monitor", "run": "..."}',
                              path=path, line=line)
    return tuple(commands)
