"""Keep what the endpoints served (``store.served``) after a batch of checks.

Contract: ``remember(config, layout, checks, results, at)`` records each check's result
under its certificate and endpoint in ``<tree>/.verify/served.json`` and writes the file once
(atomic), dropping certificates and endpoints the config no longer checks; returns the
warnings for the user (a damaged record read as empty, a record that could not be written:
the checks themselves still count). With no checks it reads and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from lematt.config import Config
from lematt.errors import StoreError
from lematt.model import VerifyResult
from lematt.store.layout import Layout
from lematt.store.served import ServedBook, check_of, served_keep
from lematt.verify.checks import Check


def remember(config: Config, layout: Layout, checks: Sequence[Check],
             results: Sequence[VerifyResult], at: float) -> list[str]:
    if not checks:
        return []
    book = ServedBook.load(layout.root)
    warnings = [book.warning] if book.warning else []
    for check, result in zip(checks, results, strict=True):
        if check.cert_name:
            book.record(check.cert_name, str(check.endpoint), check_of(result, at))
    try:
        book.save(served_keep(config.actions, config.lines, config.settings.key_types,
                              layout))
    except StoreError as exc:
        warnings.append(f"{exc}; what the endpoints served is not recorded")
    return warnings
