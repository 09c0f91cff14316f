"""The clock of the compliance records: the time every ledger event, purge check and report is stamped with. One
function, looked up as ``clock.now()`` by every module of the package, so that a test fixes it in one place."""
from __future__ import annotations

import datetime as _dt


def now() -> str:
    """The time now, UTC, to the second: ``2026-11-22T10:00:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
