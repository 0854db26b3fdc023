"""Finding a message the server cannot send.

Some messages make an IMAP server drop the connection whenever they are fetched (a corrupt
file in its store, a server bug a message trips, a proxy that chokes on it). A scan stops at
such a message, and so would every later one: the folder's cursor never passes it and the
mail behind it is never read. When a folder's reading is interrupted, the scan reads that
folder's next batch again in halves, each on a new connection, until the one message that
cannot be fetched is alone; after it has failed on several new connections it is recorded
as skipped with the error, and the scan goes on. Everything else in the batch is stored as
usual. A connection that simply dropped reads fine on the second try: nothing is skipped.
"""

from __future__ import annotations

import imaplib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import defaults
from ..config import MailboxConfig
from ..mailbox import open_source
from ..mailbox.base import Item
from .folders import folder_state, utcnow
from .prepare import PreparedBatch

if TYPE_CHECKING:
    from .reports import FolderReport
    from .scan import Ingestor

log = logging.getLogger(__name__)

#: The errors that mean "the connection went while this was being read".
LOST = (OSError, EOFError, imaplib.IMAP4.error)


def find_unreadable(ingestor: Ingestor, mb: MailboxConfig, folder: str) -> FolderReport:
    """Read the next batch of `folder` in halves on new connections, storing what can be read
    and recording as skipped each message that cannot; the folder's cursor moves past the
    batch. MailboxError if the mailbox cannot be reached at all."""
    from .reports import FolderReport

    t0 = time.perf_counter()
    rep = FolderReport(mb.name, folder)
    st = folder_state(ingestor.store, mb.name, folder)
    with open_source(mb) as source:
        source.stop = ingestor.stop
        status = source.folder_status(folder)
        if st.uidvalidity is not None and st.uidvalidity != status.uidvalidity:
            return rep  # the folder was renumbered: the scan reads it anew
        items = source.new_items(folder, st.last_uid)[: mb.batch_size]
    rep.new = len(items)
    unreadable = _read_in_halves(ingestor, mb, folder, status.uidvalidity, items, rep)
    rep.seconds = time.perf_counter() - t0
    log.warning("%s/%s: %d message(s) read in halves; %d the server cannot send, recorded as skipped",
                mb.name, folder, len(items), unreadable)
    return rep


def _read_in_halves(ingestor: Ingestor, mb: MailboxConfig, folder: str, uidvalidity: int,
                    items: Sequence[Item], rep: FolderReport) -> int:
    """Store `items` (in UID order, so the cursor only moves forward); split them while the
    connection is lost. Returns how many were recorded as unreadable."""
    if not items or ingestor.stop.is_set():
        return 0  # the cursor stays before these: the next scan reads them
    attempts = defaults.UNREADABLE_ATTEMPTS if len(items) == 1 else 1
    error: BaseException | None = None
    for _ in range(attempts):
        try:
            _store_on_new_connection(ingestor, mb, folder, uidvalidity, items, rep)
            return 0
        except LOST as exc:
            error = exc
            if ingestor.stop.is_set():
                return 0  # stopped: nothing more is read, the cursor stays before these

    if len(items) > 1:
        half = len(items) // 2
        return (_read_in_halves(ingestor, mb, folder, uidvalidity, items[:half], rep)
                + _read_in_halves(ingestor, mb, folder, uidvalidity, items[half:], rep))
    reason = (f"the server drops the connection whenever this message is fetched ({error or 'connection lost'}; "
              f"tried on {attempts} new connections)")
    log.error("%s/%s: message %s: %s", mb.name, folder, items[0].key, reason)
    ingestor.writer.write(PreparedBatch(utcnow(), [], [], [], [(items[0], reason[:500])]), mb.name,
                          folder, uidvalidity, items[0].cursor, rep)
    return 1


def _store_on_new_connection(ingestor: Ingestor, mb: MailboxConfig, folder: str, uidvalidity: int,
                             items: Sequence[Item], rep: FolderReport) -> None:
    with open_source(mb) as source:
        source.stop = ingestor.stop
        prepared = ingestor._prepared_in_thread(source, mb.name, folder, [items])
        try:
            ingestor.writer.write_isolating(next(prepared), mb.name, folder, uidvalidity, items, rep)
        finally:
            prepared.close()
