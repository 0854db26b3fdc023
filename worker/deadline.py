"""An overall deadline for a conversation with a server.

A socket timeout only catches a server that goes silent. One that trickles (a few bytes
every few seconds) passes every timeout and holds the caller for ever. A Watchdog ends the
connection, by shutting its socket so that a blocked read returns at once, when a deadline
passes or a stop event is set; the caller then sees an OSError and asks `fired` and `reason`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any


class Watchdog:
    def __init__(self, sock: Callable[[], Any], seconds: float, stop: threading.Event | None = None,
                 what: str = "its answer") -> None:
        """`sock()` gives the socket to shut when the time comes (None: not connected yet)."""
        self.sock, self.seconds, self.stop, self.what = sock, seconds, stop, what
        self.done = threading.Event()
        self.fired = False
        self.reason = ""

    def __enter__(self) -> Watchdog:
        self.thread = threading.Thread(target=self._watch, name="deadline-watchdog", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.done.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
            stopping = self.stop is not None and self.stop.is_set()
            if stopping or time.monotonic() >= deadline:
                self.fired = True
                self.reason = ("stopped while the server was still answering" if stopping else
                               f"the server sent {self.what} too slowly: not complete within {self.seconds:.0f}s")
                sock = self.sock()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
