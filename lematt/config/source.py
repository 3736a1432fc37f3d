"""Reading lematt's config files into keyed entries that remember their line numbers.

Contract: ``read_text`` returns a file's text or raises ``ConfigError``; ``detect_format``
decides INI or YAML; ``read_ini`` and ``read_yaml`` turn text into ``Block``s of ``Entry``s
(key as written, value, 1-based line), so the per-file parsers can name ``file:line`` and
the key in every error. Helpers for keys (``canonical_key``, ``unknown_key``) and booleans
live here because lematt.conf and actions.conf share them.

INI is read with ``configparser`` as the original lematt did (same comment, continuation
and ``%`` interpolation rules), so an upstream file means the same thing here. YAML is read
with PyYAML's node API (compose, then construct) for the line numbers.
"""

from __future__ import annotations

import configparser
import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from lematt.errors import ConfigError

Format = Literal["ini", "yaml"]

YAML_SUFFIXES = (".yaml", ".yml")

# configparser merges the keys of the section named `default_section` ("DEFAULT") into every
# other section. The original never relied on that, and it would let keys leak between
# actions sections, so an impossible name makes [DEFAULT] an ordinary section.
_NO_DEFAULT_SECTION = "\x00lematt-no-default-section\x00"

# The shapes configparser itself uses (RawConfigParser.SECTCRE / OPTCRE), matched on the
# stripped line, so the line index below agrees with what configparser read.
_SECTION_RE = re.compile(r"\[(?P<name>.+)\]")
_OPTION_RE = re.compile(r"(?P<key>.*?)\s*[=:]")
_COMMENT_PREFIXES = ("#", ";")

_BOOLEANS = {
    "1": True, "yes": True, "true": True, "on": True,
    "0": False, "no": False, "false": False, "off": False,
}
BOOLEAN_HELP = "use yes/no, true/false, on/off or 1/0"


@dataclass(frozen=True)
class Entry:
    """One ``key: value`` of a file: the key as written, its value and its 1-based line.

    INI values are strings (interpolated as configparser does); YAML values are what
    ``yaml.safe_load`` would give, except that mappings are ``Block``s.
    """

    key: str
    value: object
    line: int


@dataclass(frozen=True, repr=False)
class Block:
    """An INI section or a YAML mapping, entries in file order; ``line`` is where it starts."""

    name: str
    line: int
    entries: tuple[Entry, ...]

    def __repr__(self) -> str:
        # Shown inside "{value!r} is not ..." messages, where the fields would be noise.
        return f"a mapping (line {self.line})"


def read_text(path: Path, what: str) -> str:
    """Read ``path`` as UTF-8 (a leading BOM is dropped); ``what`` describes the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", path=path) from None
    except IsADirectoryError:
        raise ConfigError(f"is a directory, expected the {what}", path=path) from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError("not UTF-8 text", path=path, line=line) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror}", path=path) from None
    nul = text.find("\x00")
    if nul >= 0:
        # No value of lematt's may hold one: a path with it cannot be opened, a command
        # with it cannot be run, and text after it would be silently cut off elsewhere.
        raise ConfigError(f"a NUL character (byte 0) in the {what}; remove it",
                          path=path, line=text.count("\n", 0, nul) + 1)
    return text


def detect_format(path: Path, text: str) -> Format:
    """YAML by file name (``.yaml``/``.yml``), else INI if the first line that is not blank or
    a comment is a ``[section]`` header, else YAML."""
    if path.suffix.lower() in YAML_SUFFIXES:
        return "yaml"
    for raw in text.split("\n"):
        stripped = raw.strip()
        if not stripped or stripped.startswith(_COMMENT_PREFIXES):
            continue
        return "ini" if _SECTION_RE.match(stripped) else "yaml"
    return "yaml"


def read_ini(path: Path, text: str) -> list[Block]:
    """Parse INI ``text`` into one ``Block`` per section, in file order.

    configparser errors (no section header, a key twice, a section twice, a broken line, a
    bad ``%`` reference) become ``ConfigError``s with the line.
    """
    parser = configparser.ConfigParser(
        default_section=_NO_DEFAULT_SECTION,
        interpolation=configparser.BasicInterpolation(),
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(
            f"key '{exc.option}' appears twice in [{exc.section}]", path=path, line=exc.lineno
        ) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(
            f"section [{exc.section}] appears twice; give each section its own name",
            path=path, line=exc.lineno,
        ) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            "a key outside any [section]", path=path, line=exc.lineno
        ) from None
    except configparser.ParsingError as exc:
        lineno, bad = exc.errors[0]
        raise ConfigError(
            f"cannot read {bad.strip()!r}: expected 'key: value', '[section]' or a # comment",
            path=path, line=lineno,
        ) from None

    section_lines, key_lines = _index_ini_lines(text)
    blocks = []
    for section in parser.sections():
        entries = []
        for key in parser.options(section):
            line, written = key_lines.get((section, key), (section_lines[section], key))
            try:
                value = parser.get(section, key)
            except configparser.InterpolationError as exc:
                raise ConfigError(
                    f"{written}: {exc.message.splitlines()[0]}; '%' starts a reference in this "
                    "file (as with the original lematt), write '%%' for a literal '%'",
                    path=path, line=line,
                ) from None
            entries.append(Entry(written, value, line))
        blocks.append(Block(section, section_lines[section], tuple(entries)))
    return blocks


def _index_ini_lines(
    text: str,
) -> tuple[dict[str, int], dict[tuple[str, str], tuple[int, str]]]:
    """Where each section and each (section, lowercased key) starts, with the key as written.

    configparser keeps no line numbers, so this walks the text with configparser's own rules:
    full-line comments, indented lines continuing the previous value, the section and option
    patterns. It only runs on text configparser already accepted.
    """
    section_lines: dict[str, int] = {}
    key_lines: dict[tuple[str, str], tuple[int, str]] = {}
    section: str | None = None
    key_indent: int | None = None
    for lineno, raw in enumerate(text.split("\n"), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith(_COMMENT_PREFIXES):
            continue
        indent = len(raw) - len(raw.lstrip())
        if key_indent is not None and indent > key_indent:
            continue
        match = _SECTION_RE.match(stripped)
        if match:
            section = match["name"]
            section_lines.setdefault(section, lineno)
            key_indent = None
            continue
        option = _OPTION_RE.match(stripped)
        if section is not None and option:
            written = option["key"].rstrip()
            key_lines.setdefault((section, written.lower()), (lineno, written))
            key_indent = indent
    return section_lines, key_lines


# libyaml's loader when PyYAML was built with it (several times faster), else the pure one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path, text: str) -> object:
    """Parse YAML ``text``: mappings become ``Block``s (with key lines), lists lists, scalars
    Python values; an empty document is ``None``.

    Rejected with the line: anchors and aliases (before anything is built, see
    ``_refuse_anchors``), syntax errors, more than one document, a key twice in one mapping,
    keys that are not strings, merge keys, NUL characters in strings.
    """
    _refuse_anchors(path, text)
    loader = _SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            reason = exc.problem or exc.context or "syntax error"
            raise ConfigError(f"not valid YAML: {reason}", path=path, line=line) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", path=path) from None
        if node is None:
            return None
        return _convert(path, loader, node, "")
    finally:
        loader.dispose()


def _refuse_anchors(path: Path, text: str) -> None:
    """Refuse YAML anchors (``&a``) and aliases (``*a``) before any node is built.

    An alias makes a node appear again wherever it is used, so nine lines of nested aliases
    (a "billion laughs") stand for 9**9 values: building them took minutes and gigabytes.
    lematt's files never need to share a value, so both are refused outright, with the line
    of the first one. Checked on the parser's events, which never expand anything; a file
    with neither character skips the check (the no-op cron run reads these files).
    """
    if "&" not in text and "*" not in text:
        return
    loader = _SafeLoader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            anchor = getattr(event, "anchor", None)
            if anchor is None:
                continue
            what = (f"alias '*{anchor}'" if isinstance(event, yaml.AliasEvent)
                    else f"anchor '&{anchor}'")
            raise ConfigError(
                f"YAML {what}: anchors and aliases are not supported (they can expand a small "
                "file into gigabytes); write the value out where it is needed",
                path=path, line=event.start_mark.line + 1)
    except yaml.YAMLError:
        return  # a syntax error: composing reports it, with its line
    finally:
        loader.dispose()


def _convert(path: Path, loader: yaml.SafeLoader, node: yaml.Node, name: str) -> object:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        entries: list[Entry] = []
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError("YAML merge keys (<<) are not supported", path=path,
                                  line=key_line)
            key = _construct(path, loader, key_node)
            if not isinstance(key, str):
                raise ConfigError(f"key {key!r} is not a string", path=path, line=key_line)
            if key in seen:
                raise ConfigError(f"key '{key}' appears twice (first on line {seen[key]})",
                                  path=path, line=key_line)
            seen[key] = key_line
            entries.append(Entry(key, _convert(path, loader, value_node, key), key_line))
        return Block(name, line, tuple(entries))
    if isinstance(node, yaml.SequenceNode):
        return [_convert(path, loader, item, name) for item in node.value]
    return _construct(path, loader, node)


def _construct(path: Path, loader: yaml.SafeLoader, node: yaml.Node) -> object:
    try:
        value = loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path,
                          line=node.start_mark.line + 1) from None
    if isinstance(value, str) and "\x00" in value:
        # YAML's "\0" escape: as a raw NUL in read_text, no value may hold one.
        raise ConfigError("a NUL character (\\0) in a string; remove it", path=path,
                          line=node.start_mark.line + 1)
    return value


def canonical_key(key: str, known: Sequence[str], ignore_case: bool) -> str | None:
    """The documented spelling of ``key`` if it is one of ``known``, else ``None``.

    INI keys compare without case (configparser lowercases them, as it did for the
    original); YAML keys must be spelled as documented.
    """
    if not ignore_case:
        return key if key in known else None
    lowered = key.lower()
    for candidate in known:
        if candidate.lower() == lowered:
            return candidate
    return None


def unknown_key(path: Path, line: int, key: str, known: Sequence[str], where: str = "") -> \
        ConfigError:
    """The error for a key lematt does not know, suggesting the closest known spelling."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f"did you mean '{by_lower[close[0]]}'?" if close else "known keys: " + ", ".join(known)
    return ConfigError(f"unknown key '{key}'{where}; {hint}", path=path, line=line)


def to_bool(value: object) -> bool:
    """An INI/YAML boolean: YAML true/false, or yes/no, true/false, on/off, 1/0 in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise ValueError(f"{value!r} is not a boolean; {BOOLEAN_HELP}")


def is_unset(value: object) -> bool:
    """An empty value (``key:`` with nothing after it, or YAML null) means "use the default"."""
    return value is None or (isinstance(value, str) and not value.strip())


def value_list(path: Path, where: str, value: object, line: int, is_json: bool,
               kind: str, example: str) -> list[object]:
    """A list-valued key: empty when unset; an INI value is JSON text (``is_json``), a
    YAML value the list itself. Anything else is a ``ConfigError`` at ``path:line`` naming
    ``where`` and showing ``example`` (a list of ``kind``)."""
    if is_unset(value):
        return []
    if is_json:
        try:
            value = json.loads(str(value))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); write a JSON list "
                f"of {kind} such as {example}",
                path=path, line=line + exc.lineno - 1) from None
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {kind} such as {example}, not "
                          f"{value!r}", path=path, line=line)
    return value
