"""The worker's /healthz answer: ready when the store answers and every mailbox had a good
scan recently, by any replica (the scan states are read from the database)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..config import Settings
from ..errors import StoreError
from ..ingest.folders import configured_folders, folder_errors, folder_states, mailboxes_listed, unmatched_patterns
from ..store.db import Store, describe_db_error


def health(store: Store, settings: Settings, now: datetime, scan_error: Mapping[str, tuple[str, str]],
           warnings: Sequence[str | None]) -> tuple[bool, dict[str, Any]]:
    """(ready, the detail /healthz shows). `scan_error`: per mailbox, when this worker's last
    scan of it failed and why; `warnings`: what is worth knowing without making it unready."""
    detail: dict[str, Any] = {"mailboxes": {}}
    try:
        rows, listed = folder_states(store), mailboxes_listed(store)
        errors = folder_errors(store)
    except StoreError as exc:
        return False, {"store": f"unreachable: {exc}"}
    except Exception as exc:  # noqa: BLE001 - /healthz answers, whatever went wrong
        return False, {"store": f"unreachable: {describe_db_error(exc)}"}
    detail["store"] = "ok"
    ok = True
    for mb in settings.mailboxes:
        # Only these: a folder taken out of the config made the mailbox stale for ever.
        last = configured_folders(mb, rows)
        limit = max(timedelta(minutes=mb.scan_interval_minutes * settings.service.health_stale_intervals),
                    timedelta(seconds=30))
        stale = sorted(f for f, t in last.items() if t is None or now - t > limit)
        seen = min((t for t in last.values() if t is not None), default=None)
        fresh = bool(last) and not stale
        # A pattern that matches no folder reads nothing; if it is all the mailbox has,
        # the mailbox is never fresh, and this says why.
        detail["mailboxes"][mb.name] = {"last_ok": seen.isoformat() + "Z" if seen else None, "ok": fresh,
                                        "stale_folders": stale,
                                        # why each is stale, as the last scan of it (by any replica) failed
                                        "folder_errors": {f: errors[mb.name, f][:1000] for f in stale
                                                          if (mb.name, f) in errors},
                                        "unmatched_patterns": unmatched_patterns(mb, rows, listed)}
        if mb.name in scan_error:  # why it is stale, without reading the log
            at, error = scan_error[mb.name]
            detail["mailboxes"][mb.name]["last_error"] = {"at": at, "error": error[:1000]}
        ok = ok and fresh
    shown = [w for w in warnings if w]
    if shown:  # worth knowing, but the worker is doing its job: still ready
        detail["warnings"] = shown
    return ok, detail
