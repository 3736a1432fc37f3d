"""The config package: ``load(path)`` and the validated types it returns.

Layout: ``source`` reads files (INI or YAML, with line numbers), ``settings``, ``domains`` and
``actions`` (with ``remote`` for the SSH forms) validate one file each, ``types`` holds the
frozen dataclasses, ``loader`` ties the three files together with the cross-checks.
"""

from lematt.config.loader import load
from lematt.config.types import (
    LE_PRODUCTION,
    LE_STAGING,
    Action,
    Actions,
    Config,
    Section,
    Settings,
    SshForward,
    SshRun,
    SshUpload,
)

__all__ = ["LE_PRODUCTION", "LE_STAGING", "Action", "Actions", "Config", "Section", "Settings",
           "SshForward", "SshRun", "SshUpload", "load"]
