"""Loading the config: lematt.conf, domains and actions.conf -> one frozen ``Config``.

Contract: ``load(path)`` reads lematt.conf at ``path`` and ``domains`` / ``actions.conf`` from the
same directory, validates everything once (cross-references included) and returns frozen
dataclasses. Any problem raises ``ConfigError`` whose text names ``file:line`` and the key and
says what to do. Nothing here touches the network, the certificate tree or sys.exit.

Each file may be INI (upstream's format, read with configparser as upstream did) or YAML with
the same keys. The parsing lives in the modules beside this one: ``source`` (files, INI/YAML with
line numbers), ``settings`` (lematt.conf), ``domains`` (domains), ``actions`` (actions,
with ``remote`` for the SSH forms), ``types`` the data; this module reads the three files and
holds the cross-checks.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from lematt.config.actions import parse_actions
from lematt.config.domains import parse_domains
from lematt.config.settings import parse_settings
from lematt.config.source import read_text
from lematt.config.types import Actions, Config, Settings
from lematt.errors import ConfigError
from lematt.model import CertLine

ACTIONS_FILE_NAMES = ("actions.conf", "actions.yaml", "actions.yml")
# Let's Encrypt ended OCSP; from this date every order whose CSR asks for must-staple fails
# (ISRG's timeline, December 2024: https://abetterinternet.net/post/ending-ocsp, also on the
# Let's Encrypt blog as "Ending OCSP Support in 2025").
MUST_STAPLE_REFUSED = (
    "Let's Encrypt refuses orders with the must-staple extension since 2025-05-07"
)
# The longest file name lematt gives a certificate is "<stem>-cert-combined.<tag>.test.pem";
# its temporary names add at most TEMP_NAME_EXTRA bytes to a final name: "." in front and
# ".lematt-tmp-" + 8 hex digits behind (lematt.store.atomic.temp_name, and the SFTP staging
# names of lematt.execution.sftp); the .staging names add "." + 8 hex digits.
# tests/unit/test_config_hostile.py keeps this in step with those modules.
_LONGEST_SUFFIX = len("-cert-combined.") + len(".test.pem")
TEMP_NAME_EXTRA = len(".") + len(".lematt-tmp-") + 8
NAME_MAX = 255  # bytes per file name on common file systems (ext4, xfs, zfs, btrfs, apfs)


def load(config_path: Path) -> Config:
    """Read lematt.conf at ``config_path`` plus ``domains`` and the actions file beside it.

    The conf dir is the directory of ``config_path`` with symlinks resolved (as upstream).
    The actions file is the first of actions.conf, actions.yaml, actions.yml that exists
    (none: no actions). Raises ``ConfigError`` (file:line and key in the text) for anything
    wrong in any of the three files or between them.
    """
    path = Path(os.path.realpath(os.path.expanduser(config_path)))
    conf_dir = path.parent
    settings, warnings = parse_settings(path, read_text(path, "config file"), conf_dir)

    domains_path = conf_dir / "domains"
    if not domains_path.exists():
        raise ConfigError(
            "not found: create it beside lematt.conf with one certificate per line "
            "(first name, then extra names; e.g. 'example.com www')", path=domains_path)
    lines = parse_domains(domains_path, read_text(domains_path, "domains file"))
    if not lines:
        warnings.append(f"{domains_path}: no certificate lines; nothing to do")

    actions = Actions()
    found = [conf_dir / n for n in ACTIONS_FILE_NAMES if (conf_dir / n).exists()]
    actions_path = found[0] if found else None
    if actions_path is not None:
        warnings += [f"{p}: ignored, {actions_path.name} is used" for p in found[1:]]
        names = frozenset(n for line in lines for n in line.names)
        actions, action_warnings = parse_actions(
            actions_path, read_text(actions_path, "actions file"), names)
        warnings += action_warnings

    lines = _apply_must_staple(lines, actions, domains_path)
    lines = _apply_profiles(lines, actions, settings, domains_path)
    staplers = [line for line in lines if line.ocsp_must_staple]
    if staplers:
        first = staplers[0]
        warnings.append(
            f"{domains_path}:{first.lineno}: {len(staplers)} certificate(s) ask for OCSP "
            f"must-staple (ocspStapleRequired), first {first.primary}; "
            f"{MUST_STAPLE_REFUSED}: set it to no unless your CA still accepts it")
    _check_file_names(lines, settings, domains_path)
    return Config(settings, tuple(lines), actions, tuple(warnings),
                  config_path=path, domains_path=domains_path, actions_path=actions_path)


def _apply_must_staple(lines: list[CertLine], actions: Actions, domains_path: Path) \
        -> list[CertLine]:
    """Give each line its must-staple setting; mixed settings on one line are an error.

    Each name maps, as upstream, to every override naming it, or else to [default]; the
    values of all those sections must agree, because a certificate has one extension set.
    """
    sections = [s for s in (actions.default, *actions.overrides) if s is not None]
    if not any(s.ocsp_staple_required for s in sections):
        return lines  # the common case: nobody asks for it, nothing to compare
    default = actions.default.ocsp_staple_required if actions.default else False
    default_label = "[default]" if actions.default else "no section (no [default])"
    by_name = actions.overrides_by_name()
    result = []
    for line in lines:
        seen: dict[bool, str] = {}
        for name in line.names:
            for section in by_name.get(name, ()):
                seen.setdefault(section.ocsp_staple_required, f"[{section.name}] for {name}")
            if name not in by_name:
                seen.setdefault(default, f"{default_label} for {name}")
        if len(seen) > 1:
            raise ConfigError(
                "the names of this certificate map to actions sections that disagree on "
                f"ocspStapleRequired (yes: {seen[True]}; no: {seen[False]}); a certificate "
                "has one must-staple setting, so make them agree", path=domains_path,
                line=line.lineno)
        result.append(replace(line, ocsp_must_staple=True) if seen.get(True) else line)
    return result


def _apply_profiles(lines: list[CertLine], actions: Actions, settings: Settings,
                    domains_path: Path) -> list[CertLine]:
    """Give each line its CA profile: the one of the sections its names map to (as for
    must-staple), else lematt.conf's ``profile``; sections that disagree are an error."""
    sections = [s for s in (actions.default, *actions.overrides) if s is not None]
    if not settings.profile and not any(s.profile for s in sections):
        return lines
    default = (actions.default.profile if actions.default else None) or settings.profile
    by_name = actions.overrides_by_name()
    result = []
    for line in lines:
        seen: dict[str | None, str] = {}
        for name in line.names:
            for section in by_name.get(name, ()):
                seen.setdefault(section.profile or settings.profile,
                                f"[{section.name}] for {name}")
            if name not in by_name:
                seen.setdefault(default, f"the default for {name}")
        if len(seen) > 1:
            said = "; ".join(f"{p or 'none'}: {where}" for p, where in seen.items())
            raise ConfigError(
                "the names of this certificate map to actions sections with different "
                f"profiles ({said}); a certificate has one profile, so make them agree",
                path=domains_path, line=line.lineno)
        profile = next(iter(seen)) if seen else default
        result.append(replace(line, profile=profile) if profile else line)
    return result


def _check_file_names(lines: list[CertLine], settings: Settings, domains_path: Path) -> None:
    """Refuse a line whose files could not be created: a name over ``NAME_MAX`` bytes.

    The stem holds every name of its line (``names.file_stem``), so it is the longest part of
    any file name lematt writes for the line, per-name symlinks included. Such a line cannot
    work on any common file system, and it used to stop every run at the inventory scan
    ("File name too long") for all lines. The ``.test`` names, the longer ones, are checked
    in both modes: a line that fits only the production tree would break ``--test``.
    """
    tag = max((settings.tag(kt) for kt in settings.key_types), key=len)
    limit = NAME_MAX - _LONGEST_SUFFIX - len(tag.encode()) - TEMP_NAME_EXTRA
    too_long = []
    for line in lines:
        names = line.written_names or line.names
        # Cheap upper bound first (no sort): the stem is never longer than all names joined.
        if sum(map(len, names)) + len(names) > limit and len(line.file_stem.encode()) > limit:
            too_long.append(line)
    if not too_long:
        return
    first = too_long[0]
    stem = first.file_stem
    others = f" (and {len(too_long) - 1} more line(s))" if len(too_long) > 1 else ""
    raise ConfigError(
        f"the file names of this certificate would be too long{others}: its names joined "
        f"('{stem[:48]}...', {len(stem.encode())} bytes) plus '-cert-combined.{tag}.test.pem' "
        f"and lematt's temporary suffix pass the {NAME_MAX}-byte limit of a file name "
        f"(at most {limit} bytes of names fit); split the line into several certificates",
        path=domains_path, line=first.lineno)
