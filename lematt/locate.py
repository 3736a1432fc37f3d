"""Where lematt.conf is: ``--config``, else ``$LEMATT_CONFIG``, else ``./conf/lematt.conf``,
else ``/etc/lematt/lematt.conf``.

Contract: ``find_config(given, environ)`` returns the path to load. A path the user named
(``--config``, or ``$LEMATT_CONFIG`` when set and not empty) is returned as it is, existing or
not: the loader's error then names it, and lematt never falls back to another conf dir (and
so another certificate tree) than the one asked for. Otherwise the first of the default
places that exists is returned; when none does, a ``ConfigError`` lists every place looked at.
Pure but for the ``exists`` checks; no file is read. Outside the ``config`` package on
purpose: a cron run that the quiet-run memo ends needs the path, not the config loader's
imports (``lematt.store.quiet``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lematt.errors import ConfigError

ENV_VAR = "LEMATT_CONFIG"
DEFAULT_PLACES = (Path("conf/lematt.conf"), Path("/etc/lematt/lematt.conf"))


def find_config(given: Path | None, environ: Mapping[str, str],
                places: tuple[Path, ...] = DEFAULT_PLACES) -> Path:
    if given is not None:
        return given
    named = environ.get(ENV_VAR, "")
    if named:
        return Path(named)
    for place in places:
        if place.exists():
            return place
    looked = ", ".join(f"./{p}" if not p.is_absolute() else str(p) for p in places)
    raise ConfigError(f"no lematt.conf found: looked at --config (not given), ${ENV_VAR} "
                      f"(not set), {looked}; give --config PATH or set {ENV_VAR}")
