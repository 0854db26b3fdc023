"""Stage one of a big scan (fetch, parse, classify) in a helper process.

A scan is two stages: fetching and parsing a batch, and storing it. On a thread the two share
one interpreter lock, and parsing is Python through and through, so for a big backlog the
stages run in two processes instead: the helper opens its own connection to the mailbox and
sends each prepared batch (plain rows, pickled) through a pipe, in order. The pipe holds about
one batch, so the helper is never more than a batch or two ahead and memory stays flat.

Errors in the helper (a lost connection, a missing folder, a refused login) are sent through
the pipe and raised again in the scan, so a scan fails the same way in either mode.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import pickle
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from .classify import Directory
from .config import MailboxConfig
from .errors import MailboxError
from .mailbox import open_source
from .mailbox.base import Item
from .parsing import PreparedBatch, prepared_batches


def _child(conn: Connection, mb: MailboxConfig, directory: Directory, folder: str,
           batches: list[list[Item]]) -> None:
    # Collect garbage once per batch (see ingest.collected_per_batch): 17% of this process's
    # time went to automatic collections.
    gc.freeze()
    gc.disable()
    try:
        with open_source(mb) as source:
            for prepared in prepared_batches(source, folder, batches, directory, mb.name):
                conn.send_bytes(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))
                del prepared
                gc.collect()
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the scan, as it is
        try:
            payload = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
        except Exception:
            payload = pickle.dumps(MailboxError(f"{type(exc).__name__}: {exc}"))
        with contextlib.suppress(OSError):  # the scan may have gone away
            conn.send_bytes(payload)
    finally:
        conn.close()


def prepared_in_process(mb: MailboxConfig, directory: Directory, folder: str,
                        batches: list[list[Item]]) -> Iterator[PreparedBatch]:
    """Prepared batches from a helper process, in order. Closing the iterator early (a stop
    request, a store error) ends the helper."""
    ctx = multiprocessing.get_context("spawn")  # no fork: the worker may run other threads
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, mb, directory, folder, batches),
                       name=f"carewatch-fetch-{mb.name}", daemon=True)
    proc.start()
    send.close()  # the helper's end: only the helper holds it now, so its exit means EOF here
    try:
        for _ in batches:
            try:
                payload = recv.recv_bytes()
            except EOFError:
                proc.join(5)
                raise MailboxError(f"mailbox {mb.name!r}: the fetch process for {folder!r} ended "
                                   f"unexpectedly (exit code {proc.exitcode}); committed batches are "
                                   "kept, the next scan resumes") from None
            got: Any = pickle.loads(payload)
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        recv.close()
        if proc.is_alive():
            proc.terminate()
        proc.join(5)
