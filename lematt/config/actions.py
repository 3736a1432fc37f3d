"""actions.conf / actions.yaml -> ``Actions``.

Contract: ``parse_actions(path, text, line_names)`` returns ``(Actions, warnings)`` or raises
``ConfigError`` naming ``file:line`` and the key. ``line_names`` is every name of every
``domains`` line; an override naming none of them is a typo and an error (only a warning
while the domains file has no lines at all, so upstream's example files still load).

Structure (upstream's): ``[default]`` applies to certificates no override names, ``[every]``
to all certificates, any other section is an override with ``domains:`` (full names,
separated by spaces; shorthand is not expanded here). ``prepare``, ``uploadCerts``,
``uploadKeys`` and ``update`` are lists of shell strings: JSON lists in INI (upstream ran them
through ``json.loads``), YAML lists in YAML. ``verify`` lists endpoints that must serve the
section's certificates after its updates (``lematt.config.endpoints``), in the same two
forms. ``ocspStapleRequired`` and ``profile`` (the CA
profile to order with) may be set in ``[default]`` and in overrides; an override without
one takes ``[default]``'s value.
"""

from __future__ import annotations

from pathlib import Path

from lematt.config.endpoints import EXAMPLE as _VERIFY_EXAMPLE
from lematt.config.endpoints import Endpoint, parse_endpoint
from lematt.config.remote import parse_structured
from lematt.config.settings import profile_name
from lematt.config.source import (
    Block,
    Entry,
    canonical_key,
    detect_format,
    is_unset,
    read_ini,
    read_yaml,
    to_bool,
    unknown_key,
    value_list,
)
from lematt.config.types import Action, Actions, Section
from lematt.errors import ConfigError
from lematt.names import validate_dns_name

ACTION_KEYS = ("prepare", "uploadCerts", "uploadKeys", "update")
ALL_KEYS = (*ACTION_KEYS, "verify", "ocspStapleRequired", "profile", "domains")
_FIELDS = {"prepare": "prepare", "uploadCerts": "upload_certs", "uploadKeys": "upload_keys",
           "update": "update"}
_NOT_ALLOWED = {
    "default": {"domains": "[default] covers the certificates no override section names"},
    "every": {
        "domains": "[every] covers every certificate",
        "ocspStapleRequired": "must-staple belongs to a certificate's own section "
                              "([default] or an override), not to [every]",
        "profile": "a profile belongs to a certificate's own section ([default] or an "
                   "override), not to [every]",
    },
}
_LIST_EXAMPLE = '["sudo systemctl reload nginx"]'


def parse_actions(path: Path, text: str, line_names: frozenset[str]) -> \
        tuple[Actions, list[str]]:
    """Validate actions ``text`` (read from ``path``) against the names of the domains lines."""
    is_ini = detect_format(path, text) == "ini"
    if is_ini:
        blocks = read_ini(path, text)
    else:
        root = read_yaml(path, text)
        if root is None:
            return Actions(), []
        if not isinstance(root, Block):
            raise ConfigError("expected an INI file of [sections], or a YAML mapping of "
                              "section names (default, every, overrides) to their keys",
                              path=path)
        blocks = [_yaml_section(path, entry) for entry in root.entries]

    warnings: list[str] = []
    parsed = [_section_values(path, block, is_ini) for block in blocks]
    default_ocsp = False
    default_profile = None
    for block, values in zip(blocks, parsed, strict=True):
        if block.name == "default" and "ocspStapleRequired" in values:
            default_ocsp = _ocsp(path, block, values)
        if block.name == "default":
            default_profile = _profile(path, block, values)

    default = every = None
    overrides: list[Section] = []
    for block, values in zip(blocks, parsed, strict=True):
        lists: dict[str, object] = {
            _FIELDS[k]: _command_list(path, block.name, k, *values[k], is_ini)
            for k in ACTION_KEYS if k in values}
        if "verify" in values:
            lists["verify"] = _verify_list(path, block.name, *values["verify"], is_ini)
        if block.name == "every":
            every = Section("every", lineno=block.line, **lists)
            continue
        ocsp = _ocsp(path, block, values) if "ocspStapleRequired" in values else default_ocsp
        profile = _profile(path, block, values) or default_profile
        if block.name == "default":
            default = Section("default", ocsp_staple_required=ocsp, profile=profile,
                              lineno=block.line, **lists)
            continue
        domains = _override_domains(path, block, values, line_names, warnings)
        overrides.append(Section(block.name, domains=domains, ocsp_staple_required=ocsp,
                                 profile=profile, lineno=block.line, **lists))
    return Actions(default=default, every=every, overrides=tuple(overrides)), warnings


def _yaml_section(path: Path, entry: Entry) -> Block:
    if entry.value is None:  # "every:" with nothing under it: an empty section
        return Block(entry.key, entry.line, ())
    if not isinstance(entry.value, Block):
        raise ConfigError(f"section '{entry.key}' must be a mapping of keys (prepare, "
                          "uploadCerts, uploadKeys, update, verify, ocspStapleRequired, "
                          "domains)",
                          path=path, line=entry.line)
    return Block(entry.key, entry.line, entry.value.entries)


def _section_values(path: Path, block: Block, ignore_case: bool) -> \
        dict[str, tuple[object, int]]:
    values: dict[str, tuple[object, int]] = {}
    where = f" in [{block.name}]"
    for entry in block.entries:
        key = canonical_key(entry.key, ALL_KEYS, ignore_case)
        if key is None:
            raise unknown_key(path, entry.line, entry.key, ALL_KEYS, where)
        why = _NOT_ALLOWED.get(block.name, {}).get(key)
        if why:
            raise ConfigError(f"'{key}' is not allowed in [{block.name}]: {why}",
                              path=path, line=entry.line)
        values[key] = (entry.value, entry.line)
    return values


def _ocsp(path: Path, block: Block, values: dict[str, tuple[object, int]]) -> bool:
    value, line = values["ocspStapleRequired"]
    try:
        return False if is_unset(value) else to_bool(value)
    except ValueError as exc:
        raise ConfigError(f"ocspStapleRequired in [{block.name}]: {exc}",
                          path=path, line=line) from None


def _profile(path: Path, block: Block, values: dict[str, tuple[object, int]]) -> str | None:
    if "profile" not in values or is_unset(values["profile"][0]):
        return None
    value, line = values["profile"]
    try:
        return profile_name(value)
    except ValueError as exc:
        raise ConfigError(f"profile in [{block.name}]: {exc}", path=path, line=line) from None


def _command_list(path: Path, section: str, key: str, value: object, line: int,
                  is_json: bool) -> tuple[Action, ...]:
    where = f"{key} in [{section}]"
    value = value_list(path, where, value, line, is_json, "command strings", _LIST_EXAMPLE)
    actions: list[Action] = []
    for item in value:
        if isinstance(item, Block | dict):
            actions.append(parse_structured(path, where, key, item, line))
        elif not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}: {item!r} is not a command (a non-empty string) "
                              "nor an ssh mapping", path=path, line=line)
        else:
            actions.append(item)
    return tuple(actions)


def _verify_list(path: Path, section: str, value: object, line: int,
                 is_json: bool) -> tuple[Endpoint, ...]:
    where = f"verify in [{section}]"
    value = value_list(path, where, value, line, is_json, "endpoints", f"[{_VERIFY_EXAMPLE}]")
    endpoints: list[Endpoint] = []
    for item in value:
        at = line
        if isinstance(item, Block):
            at = item.line
            item = {e.key: e.value for e in item.entries}
        try:
            endpoint = parse_endpoint(item)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", path=path, line=at) from None
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return tuple(endpoints)


def _override_domains(path: Path, block: Block, values: dict[str, tuple[object, int]],
                      line_names: frozenset[str], warnings: list[str]) -> frozenset[str]:
    hint = ""
    if block.name.lower() in ("default", "every"):
        hint = f" (section names are case-sensitive: did you mean [{block.name.lower()}]?)"
    if "domains" not in values or is_unset(values["domains"][0]):
        raise ConfigError(f"override section [{block.name}] has no 'domains': list the full "
                          f"names it applies to{hint}", path=path, line=block.line)
    raw, line = values["domains"]
    if isinstance(raw, str):
        written = raw.split()
    elif isinstance(raw, list) and all(isinstance(n, str) for n in raw):
        written = [part for n in raw for part in n.split()]
    else:
        raise ConfigError(f"domains in [{block.name}]: expected names separated by spaces or "
                          f"a list of names, not {raw!r}", path=path, line=line)
    names = []
    for name in written:
        try:
            normal = validate_dns_name(name)
        except ValueError as exc:
            raise ConfigError(f"domains in [{block.name}]: '{name}' is not a valid DNS name "
                              f"({exc}); write full names here, shorthand is not expanded",
                              path=path, line=line) from None
        if normal not in line_names:
            message = (f"domains in [{block.name}]: '{name}' is not a name on any line of the "
                       "domains file (a typo?)")
            if line_names:
                raise ConfigError(message, path=path, line=line)
            warnings.append(f"{path}:{line}: {message}")
        names.append(normal)
    return frozenset(names)
