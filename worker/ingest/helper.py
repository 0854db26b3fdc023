"""Stage one of a big scan (fetch, parse, classify) in a helper process.

A scan is two stages: fetching and parsing a batch, and storing it. On a thread the two share
one interpreter lock, and parsing is Python through and through, so for a big backlog the
stages run in two processes instead: the helper opens its own connection to the mailbox and
sends each prepared batch (plain rows, pickled) through a pipe, in order. The pipe holds about
one batch, so the helper is never more than a batch or two ahead and memory stays flat. One
helper serves all the big folders of a mailbox scan.

Errors in the helper (a lost connection, a missing folder, a refused login) are sent through
the pipe and raised again in the scan, so a scan fails the same way in either mode.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections import deque
from collections.abc import Generator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from .. import logs
from ..config import MailboxConfig
from ..errors import MailboxError
from ..mailbox import open_source
from ..mailbox.base import Item
from .classify import Directory
from .prepare import PreparedBatch, collected_per_batch, prepared_batches

log = logging.getLogger(__name__)


def _child(jobs: Connection, out: Connection, mb: MailboxConfig, directory: Directory,
           logging_setup: tuple[str, bool] | None = None) -> None:
    # Ctrl-C reaches the whole process group, and so does SIGTERM when systemd stops the
    # service (KillMode=control-group): the scan decides when this process ends (it finishes the
    # batch in hand first and then kills it), not the signal. Were it to die here, a scan
    # waiting for its next batch would fail with "ended unexpectedly" on a clean stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A spawned process starts with logging unconfigured: it would print only warnings, bare,
    # where the worker writes JSON lines.
    if logging_setup is not None:
        logs.setup_logging(*logging_setup)
    log.debug("fetch helper for mailbox %r started (pid %d)", mb.name, os.getpid())
    # Folders are read off the pipe as they come, on a thread: the scan may hand over the next
    # folder (a big pickle) while this process is blocked sending it a batch of this one, and
    # were neither reading, both would wait for ever.
    queued: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def receive() -> None:
        try:
            while True:
                queued.put(jobs.recv())
        except (EOFError, OSError):  # the scan is done with us
            queued.put(None)

    threading.Thread(target=receive, name="carewatch-fetch-jobs", daemon=True).start()
    try:
        with collected_per_batch() as collect:
            while True:
                job = queued.get()
                if job is None:
                    return
                folder, batches = job
                # A connection per folder: a server process that has read one big folder may
                # hold on to what it mapped for it (Dovecot's imap process is capped at 256 MB
                # by default, and ran out reading a second folder of 150k messages).
                with open_source(mb) as source:
                    for prepared in prepared_batches(source, folder, batches, directory, mb.name):
                        out.send_bytes(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))
                        del prepared
                        collect()
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the scan, as it is
        try:
            payload = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
        except Exception:
            payload = pickle.dumps(MailboxError(f"{type(exc).__name__}: {exc}"))
        with contextlib.suppress(OSError):  # the scan may have gone away
            out.send_bytes(payload)
    finally:
        out.close()


class FetchHelper:
    """A helper process for one mailbox, started for its first big folder and kept for the
    others (starting one costs about 0.7 s). Folders are handed over with submit(), in the
    order they will be read, and may be handed over before the one in hand is done: the
    helper then starts on the next folder (its own connection, the first batches) while the
    scan still stores the last batches of this one, instead of both waiting in turn at every
    folder. Prepared batches come back in order; closing it early, or leaving a folder before
    its last batch, ends the process, and the folders still queued are handed to a new one
    when the scan comes to them."""

    def __init__(self, mb: MailboxConfig, directory: Directory) -> None:
        self.mb = mb
        self.directory = directory
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._jobs: Connection | None = None
        self._out: Connection | None = None
        #: Folders handed over and not yet read back, in order: (folder, batches).
        self._queued: deque[tuple[str, list[Sequence[Item]]]] = deque()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork: the worker may run other threads
        jobs_recv, self._jobs = ctx.Pipe(duplex=False)
        self._out, out_send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(jobs_recv, out_send, self.mb, self.directory, logs.current),
                                 name=f"carewatch-fetch-{self.mb.name}", daemon=True)
        self._proc.start()
        # Only the helper holds its ends now, so its exit reads as EOF here.
        jobs_recv.close()
        out_send.close()

    def _running(self) -> None:
        """Start the process if none runs, and hand it every folder still queued."""
        if self._proc is None:
            self._start()
            assert self._jobs is not None
            for job in self._queued:
                self._jobs.send(job)

    @property
    def busy(self) -> bool:
        """Folders are queued: the next one submitted waits behind them."""
        return bool(self._queued)

    def submit(self, folder: str, batches: list[Sequence[Item]]) -> None:
        """Queue a folder to be fetched and parsed; its batches are read with prepared()."""
        self._queued.append((folder, batches))
        if self._proc is None:
            self._running()  # sends the whole queue, this folder with it
        else:
            assert self._jobs is not None
            self._jobs.send((folder, batches))

    def prepared(self, folder: str, batches: list[Sequence[Item]]) -> Generator[PreparedBatch, None, None]:
        """The prepared batches of `folder`, in order: the next folder queued, or submitted
        now if none is."""
        if not self._queued:
            self.submit(folder, batches)
        queued, batches = self._queued[0]
        assert queued == folder, f"the helper reads {queued!r} next, not {folder!r}"
        self._running()
        assert self._jobs is not None and self._out is not None and self._proc is not None
        self._queued.popleft()
        received = 0
        try:
            for _ in batches:
                try:
                    payload = self._out.recv_bytes()
                except EOFError:
                    self._proc.join(5)
                    raise MailboxError(f"the fetch process for {folder!r} ended "
                                       f"unexpectedly (exit code {self._proc.exitcode}); committed batches "
                                       "are kept, the next scan resumes", where=f"mailbox {self.mb.name!r}") from None
                got: Any = pickle.loads(payload)
                if isinstance(got, BaseException):
                    raise got
                received += 1
                yield got
        finally:
            if received < len(batches):  # mid-FETCH, or failed: it cannot take another folder
                self._end(now=True)

    def close(self, now: bool = False) -> None:
        """End the helper for good. With nothing queued it ends on its own (EOF on its jobs);
        with folders still queued (a stopped scan), or `now`, it is stopped wherever it is."""
        now = now or bool(self._queued)
        self._queued.clear()
        self._end(now)

    def _end(self, now: bool) -> None:
        """End the process; the folders still queued wait for a new one (see _running)."""
        proc, self._proc = self._proc, None
        for conn in (self._jobs, self._out):
            if conn is not None:
                conn.close()
        self._jobs = self._out = None
        if proc is not None:
            if now:
                proc.kill()  # it ignores SIGTERM; it holds nothing to tidy (a read-only session)
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
