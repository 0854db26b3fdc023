"""IMAP IDLE (RFC 2177) as a wake-up call: the server says a folder changed, and the
mailbox's scan runs now instead of at its next interval. What the scan reads does not
depend on it; a server without IDLE is scanned on its interval alone."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..config import MailboxConfig
from ..mailbox import open_source
from ..mailbox.base import is_pattern

log = logging.getLogger(__name__)

#: IDLE is renewed well within RFC 2177's 29 minutes (Office 365 hangs after an hour or two).
IDLE_RENEW_SECONDS = 540.0
#: How often an IDLE loop looks at the stop flag.
IDLE_POLL_SECONDS = 1.0


def watch(mb: MailboxConfig, stop: threading.Event, wake: Callable[[str], None],
          backoff: Callable[[int], float]) -> None:
    """Wait for the server to announce new mail in `mb`'s first named folder and call
    `wake(mb.name)`, until `stop`; reconnect after `backoff(failures)` seconds."""
    failures = 0
    folder = next((f for f in mb.folders if not is_pattern(f)), "INBOX")  # IDLE watches one folder
    while not stop.is_set():
        try:
            with open_source(mb) as src:
                if not getattr(src, "supports_idle", lambda: False)():
                    log.info("mailbox %s: no IDLE support; scanning every %s min", mb.name, mb.scan_interval_minutes)
                    return
                failures = 0
                c = src.c  # type: ignore[attr-defined]
                c.select_folder(folder, readonly=True)
                while not stop.is_set():
                    c.idle()
                    started = time.monotonic()
                    woke = False
                    while not stop.is_set() and time.monotonic() - started < IDLE_RENEW_SECONDS:
                        if c.idle_check(timeout=IDLE_POLL_SECONDS):
                            woke = True
                            break
                    c.idle_done()
                    if woke:
                        log.debug("mailbox %s: IDLE says something changed", mb.name)
                        wake(mb.name)
        except Exception as exc:  # noqa: BLE001 - any failure here means: reconnect later
            failures += 1
            wait = backoff(failures)
            log.warning("mailbox %s: IDLE connection lost (%s); reconnecting in %.0fs", mb.name,
                        exc or type(exc).__name__, wait)
            stop.wait(wait)


