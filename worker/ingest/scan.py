"""Incremental, idempotent ingest of mailbox folders into the store.

Per folder we remember UIDVALIDITY and the last UID committed. Only new UIDs are fetched, in
batches, one transaction per batch, and the cursor moves with the batch: an interrupted scan
resumes where it stopped, a re-read changes nothing (Message-ID dedupe), and a changed
UIDVALIDITY re-reads the folder without duplicating anything.
"""

from __future__ import annotations

import hashlib
import imaplib
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from .. import defaults
from ..config import Config, MailboxConfig
from ..errors import FolderMissingError, MailboxError, ReadInterrupted, StoreError
from ..mailbox import MailboxSource, open_source
from ..mailbox.base import Item, folder_selected, is_pattern
from ..store.db import Store, describe_db_error
from ..store.locks import write_alone
from ..store.models import (
    AlertCommand,
    Contact,
    FolderState,
    Message,
    MessageContact,
    Meta,
    SkippedMessage,
    columns,
    table_of,
)
from ..store.threads import among, finish_threads, link_contacts, plan_threads, refresh_replies
from .classify import SENDER_SUBJECT_RULES, ContactRef, Directory, automated_reason, classify
from .headers import ParsedMessage, valid_text
from .helper import FetchHelper
from .prepare import PreparedBatch, classified, collected_per_batch, prepared_batches
from .unreadable import find_unreadable

log = logging.getLogger(__name__)


def skipped_uid(item: Item) -> int:
    """The number a skipped message is recorded under: its UID, or for a Maildir file a
    digest of its name. Not hash(): that changes with every process (PYTHONHASHSEED)."""
    if isinstance(item.key, int):
        return item.cursor
    digest = hashlib.blake2b(str(item.key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**62


def scan_batches(items: Sequence[Item], batch_size: int = defaults.SCAN_BATCH_SIZE,
                 small_first: bool = True) -> list[Sequence[Item]]:
    """A folder's new items in the batches a scan reads and commits. A small first batch gets
    both stages going sooner; a folder that a helper process reads after another one does
    not need it (it has its first batch ready when the scan comes to it)."""
    if not items:
        return []
    first = min(batch_size, defaults.SCAN_FIRST_BATCH_SIZE) if small_first else batch_size
    return [items[:first]] + [items[i:i + batch_size] for i in range(first, len(items), batch_size)]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Progress(Protocol):
    def start(self, mailbox: str, folder: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


class LogProgress:
    """Plain log lines for non-terminals (containers, CI): one line per ~10% of a folder."""

    def __init__(self) -> None:
        self.total = self.done = self.next_report = 0
        self.label = ""

    def start(self, mailbox: str, folder: str, total: int) -> None:
        self.total, self.done, self.label = total, 0, f"{mailbox}/{folder}"
        self.next_report = max(total // 10, defaults.SCAN_BATCH_SIZE)
        if total:
            log.info("scanning %s: %d new message(s)", self.label, total)

    def advance(self, n: int) -> None:
        self.done += n
        if self.total and self.done >= self.next_report and self.done < self.total:
            log.info("scanning %s: %d/%d", self.label, self.done, self.total)
            self.next_report += max(self.total // 10, defaults.SCAN_BATCH_SIZE)

    def finish(self) -> None:
        pass


@dataclass
class FolderReport:
    mailbox: str
    folder: str
    new: int = 0
    stored: int = 0
    duplicates: int = 0
    skipped: int = 0
    automated: int = 0
    uidvalidity_reset: bool = False
    unchanged: bool = False
    interrupted: bool = False
    seconds: float = 0.0


@dataclass
class ScanReport:
    folders: list[FolderReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(f.stored for f in self.folders)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _FolderPlan:
    """One folder as a scan found it before reading it (Ingestor._plan_folder)."""

    report: FolderReport
    uidvalidity: int
    #: Where reading starts (the last UID stored, 0 to read it all), and whether the folder's
    #: state must be set to it first (the first scan, or a changed UIDVALIDITY), or marked up
    #: to date (unchanged).
    cursor: int
    set_cursor: bool
    batches: list[Sequence[Item]]
    #: Handed to the fetch helper process (a big backlog), or read on a thread.
    in_helper: bool
    #: Seconds spent finding all that (FolderReport.seconds counts them).
    plan_seconds: float


def configured_folders(mb: MailboxConfig, rows: Iterable[tuple[str, str, datetime | None]]
                       ) -> dict[str, datetime | None]:
    """The folders of `mb` the config asks for now, each with its last good scan: every folder
    it names (None if never read), then each folder with a scan state (`rows` of folder_state:
    mailbox, folder, last_ok_at) that one of its patterns matches. A folder taken out of the
    config keeps its state, to resume if it comes back, and is not among them."""
    out: dict[str, datetime | None] = {f: None for f in mb.folders if not is_pattern(f)}
    out.update({f: t for m, f, t in rows if m == mb.name and folder_selected(mb.folders, f)})
    return out


def folder_states(store: Store, mailbox: str | None = None) -> list[tuple[str, str, datetime | None]]:
    """(mailbox, folder, last good scan) of every folder with a scan state, or one mailbox's."""
    q = select(col(FolderState.mailbox), col(FolderState.folder), col(FolderState.last_ok_at))
    if mailbox is not None:
        q = q.where(col(FolderState.mailbox) == mailbox)
    with store.session() as db:
        return [(m, f, t) for m, f, t in db.execute(q).all()]


def folder_errors(store: Store) -> dict[tuple[str, str], str]:
    """(mailbox, folder) -> the error of its last failed scan, for folders whose last scan failed."""
    q = select(col(FolderState.mailbox), col(FolderState.folder), col(FolderState.last_error)).where(
        col(FolderState.last_error).is_not(None))
    with store.session() as db:
        return {(m, f): e for m, f, e in db.execute(q).all()}


def listed_key(mailbox: str) -> str:
    """The meta key that says a scan has listed a mailbox's folders for its patterns (its value:
    when it first did)."""
    return f"folders_listed:{mailbox}"


def mailboxes_listed(store: Store) -> set[str]:
    """The mailboxes whose folders a scan has listed to match their patterns."""
    prefix = listed_key("")
    with store.session() as db:
        keys = db.execute(select(col(Meta.key))
                          .where(col(Meta.key).startswith(prefix, autoescape=True))).scalars().all()
    return {k[len(prefix):] for k in keys}


def unmatched_patterns(mb: MailboxConfig, rows: Iterable[tuple[str, str, datetime | None]],
                       listed: set[str]) -> list[str]:
    """The patterns of `mb` that matched no folder on the server when a scan last listed its
    folders (`rows` as for configured_folders; `listed` from mailboxes_listed()): nothing is
    read through them. Empty for a mailbox never listed: nobody knows yet."""
    if mb.name not in listed:
        return []
    names = [f for m, f, _ in rows if m == mb.name]
    return [p for p in mb.folders if is_pattern(p) and not any(folder_selected([p], f) for f in names)]


def matches_no_folder(patterns: Sequence[str]) -> str:
    """"'Clients/*' matches no folder on the server ...", for a log line or a note."""
    one = len(patterns) == 1
    return (f"{' and '.join(map(repr, patterns))} {'matches' if one else 'match'} no folder on the server, so "
            f"nothing is read through {'it' if one else 'them'} (`carewatch validate --connect` lists the "
            "server's folders)")


def merge_reports(reports: list[FolderReport], extra: list[FolderReport]) -> list[FolderReport]:
    """`reports` with the counts of `extra` (read meanwhile, for the same folders) added in."""
    by_folder = {r.folder: r for r in reports}
    for e in extra:
        r = by_folder.get(e.folder)
        if r is None:
            reports.append(e)
            by_folder[e.folder] = e
            continue
        r.new = max(r.new, e.new)  # each read counts what was new when it began
        r.stored += e.stored
        r.duplicates += e.duplicates
        r.skipped += e.skipped
        r.automated += e.automated
        r.seconds += e.seconds
        r.unchanged = r.unchanged and e.new == 0
    return reports


class Ingestor:
    def __init__(self, store: Store, config: Config, directory: Directory,
                 stop: threading.Event | None = None, progress: Progress | None = None,
                 on_batch: Callable[[FolderReport], None] | None = None) -> None:
        self.store = store
        self.config = config
        self.directory = directory
        self.stop = stop or threading.Event()
        self.progress = progress or LogProgress()
        #: Test and metrics hook, called after each committed batch.
        self.on_batch = on_batch
        #: What a scan of a mailbox read before it was interrupted, and what find_unreadable
        #: read, added to that mailbox's folder reports when its scan ends.
        self.carried_reports: dict[str, list[FolderReport]] = {}

    # --- state -------------------------------------------------------------------------------
    def _add_states(self, db: Session, mailbox: str, folders: list[str]) -> None:
        """A scan state for each folder that has none yet (insert-or-ignore: another replica may
        create the same row at the same moment)."""
        self.store.insert_ignore(db, table_of(FolderState), [
            {"mailbox": mailbox, "folder": f, "last_uid": 0, "messages_seen": 0, "messages_skipped": 0}
            for f in folders], ["mailbox", "folder"])

    def _state(self, mailbox: str, folder: str) -> FolderState:
        where = (FolderState.mailbox == mailbox, FolderState.folder == folder)
        with self.store.session() as db:
            st = db.exec(sm_select(FolderState).where(*where)).first()
            if st is None:
                # insert-or-ignore: another replica may create the same row at the same moment
                self._add_states(db, mailbox, [folder])
                db.commit()
                st = db.exec(sm_select(FolderState).where(*where)).one()
            return st

    def record_error(self, mailbox: str, folders: Iterable[str], error: str) -> None:
        """Note why these folders were not read (for /healthz, whichever replica asks). A folder
        never read yet gets its state row here: a first start that cannot log in says why too."""
        folders = list(folders)
        try:
            with self.store.session() as db:
                self._add_states(db, mailbox, folders)
                db.execute(update(FolderState).where(
                    col(FolderState.mailbox) == mailbox, col(FolderState.folder).in_(list(folders))
                ).values(last_error=error[:2000], last_scan_at=utcnow()))
                db.commit()
        except StoreError:
            log.warning("could not record the scan error in the store")

    # --- scanning ----------------------------------------------------------------------------
    def scan(self, mailboxes: list[MailboxConfig] | None = None) -> ScanReport:
        """Scan every configured mailbox; one failing mailbox does not stop the others."""
        report = ScanReport()
        for mb in mailboxes if mailboxes is not None else self.config.settings.mailboxes:
            if self.stop.is_set():
                break
            searches = 0
            while True:
                try:
                    with open_source(mb) as source:
                        source.stop = self.stop  # a stop request ends a FETCH still being answered
                        report.folders += merge_reports(self.scan_mailbox(mb, source, report.errors),
                                                        self.carried_reports.pop(mb.name, []))
                except ReadInterrupted as exc:
                    # Lost mid-folder. If one message makes the server drop the connection, every
                    # scan would stop at it for ever: look for it, record it, and scan again.
                    failed: MailboxError = exc
                    if searches < defaults.UNREADABLE_SEARCHES_PER_SCAN and not self.stop.is_set():
                        searches += 1
                        log.warning("%s; reading the folder's next messages in halves, each on a new connection, "
                                    "in case one message is what the server cannot send", exc)
                        try:
                            self.carried_reports.setdefault(mb.name, []).append(
                                find_unreadable(self, mb, exc.folder))
                            continue
                        except MailboxError as again:
                            failed = MailboxError(f"{exc.detail}; then, looking for a message the server cannot "
                                                  f"send: {again.detail}", where=exc.where)
                    self._mailbox_failed(mb, failed, report)
                except MailboxError as exc:
                    self._mailbox_failed(mb, exc, report)
                break
        return report

    def _mailbox_failed(self, mb: MailboxConfig, exc: MailboxError, report: ScanReport) -> None:
        log.error("%s", exc)
        report.errors.append(str(exc))
        self.record_error(mb.name, self._known_folders(mb), str(exc))
        self.carried_reports.pop(mb.name, None)

    def _known_folders(self, mb: MailboxConfig) -> list[str]:
        """The folders of `mb` the config asks for (see configured_folders)."""
        if not any(is_pattern(f) for f in mb.folders):
            return list(mb.folders)
        try:
            rows = folder_states(self.store, mb.name)
        except (StoreError, OperationalError, DBAPIError):
            return [f for f in mb.folders if not is_pattern(f)]  # the error is logged and reported either way
        return list(configured_folders(mb, rows))

    def _sync_matched(self, mb: MailboxConfig, folders: list[str]) -> None:
        """Bring the scan states of a mailbox's pattern-matched folders in line with what the
        server listed just now, and note that it was listed (see unmatched_patterns):
        * a folder matched before and no more (a client's folder deleted or renamed on the
          server) loses its state: it would never be scanned again and look stale to /healthz
          for ever. The messages read from it are kept;
        * a newly matched folder gets one before it is read, so that a scan stopped before
          reaching it does not make its pattern look as if it matched nothing."""
        patterns = [f for f in mb.folders if is_pattern(f)]
        if not patterns:
            return
        names = {f for _, f, _ in folder_states(self.store, mb.name)}
        with self.store.session() as db:
            gone = [n for n in names if n not in folders and n not in mb.folders and folder_selected(patterns, n)]
            if gone:
                db.execute(delete(FolderState).where(col(FolderState.mailbox) == mb.name,
                                                     col(FolderState.folder).in_(gone)))
            self._add_states(db, mb.name, [f for f in folders if f not in names and f not in mb.folders])
            self.store.insert_ignore(db, table_of(Meta), [{"key": listed_key(mb.name),
                                                           "value": utcnow().isoformat()}], ["key"])
            db.commit()
        for n in gone:
            log.info("mailbox %s: folder %r is no longer on the server (or no longer matched): its scan "
                     "state is dropped; the messages read from it are kept", mb.name, n)

    def scan_mailbox(self, mb: MailboxConfig, source: MailboxSource,
                     errors: list[str] | None = None) -> list[FolderReport]:
        helper = FetchHelper(mb, self.directory)  # started only if a folder has a big backlog
        try:
            return self._scan_folders(mb, source, helper, errors)
        finally:
            helper.close()

    def _scan_folders(self, mb: MailboxConfig, source: MailboxSource, helper: FetchHelper,
                      errors: list[str] | None) -> list[FolderReport]:
        out = []
        folders = source.folders_to_scan(mb.folders)
        self._sync_matched(mb, folders)
        # One folder ahead: the next folder is looked at (and, if its backlog is big, handed
        # to the helper process) before this one is stored, so that the helper reads its
        # first batches while the last ones of this folder are stored.
        plans = {0: self._plan_or_error(source, mb.name, folders[0], mb.batch_size, helper)} if folders else {}
        for k, folder in enumerate(folders):
            if self.stop.is_set():
                break
            plan = plans.pop(k)
            if k + 1 < len(folders):
                plans[k + 1] = self._plan_or_error(source, mb.name, folders[k + 1], mb.batch_size, helper)
            try:
                if isinstance(plan, BaseException):
                    raise plan
                out.append(self._read_folder(plan, source, helper))
            except FolderMissingError as exc:
                # A deleted or renamed folder must not stop the others.
                log.error("%s", exc)
                self.record_error(mb.name, [folder], str(exc))
                if errors is None:
                    raise
                errors.append(str(exc))
            except (OSError, EOFError, imaplib.IMAP4.error) as exc:
                if source.gave_up:  # we ended the connection: a deadline or a stop, not a lost server
                    raise MailboxError(source.gave_up, where=f"mailbox {mb.name!r}") from exc
                lost = ReadInterrupted(f"connection lost while reading "
                                       f"{folder!r}: {exc or type(exc).__name__}; committed batches "
                                       "are kept, the next scan resumes", where=f"mailbox {mb.name!r}",
                                       folder=folder)
                # What was stored before the loss still counts in this scan's report.
                self.carried_reports.setdefault(mb.name, []).extend(
                    [*out, *([] if isinstance(plan, BaseException) else [plan.report])])
                raise lost from exc
        return out

    def _plan_or_error(self, source: MailboxSource, mailbox: str, folder: str, batch_size: int,
                       helper: FetchHelper | None) -> _FolderPlan | Exception:
        """_plan_folder, or the error it raised, raised again when the folder's turn comes:
        looking ahead must not fail the folder in hand (a missing folder, a lost connection, a
        store that cannot be written fail where they did before, after that folder)."""
        try:
            return self._plan_folder(source, mailbox, folder, batch_size, helper)
        except Exception as exc:  # noqa: BLE001 - every error is raised again, as it is
            return exc

    def scan_folder(self, source: MailboxSource, mailbox: str, folder: str,
                    batch_size: int = defaults.SCAN_BATCH_SIZE,
                    helper: FetchHelper | None = None) -> FolderReport:
        """Store what is new in one folder. With a `helper`, a big backlog is fetched and
        parsed by a helper process that opens its own connection."""
        return self._read_folder(self._plan_folder(source, mailbox, folder, batch_size, helper), source, helper)

    def _plan_folder(self, source: MailboxSource, mailbox: str, folder: str, batch_size: int,
                     helper: FetchHelper | None) -> _FolderPlan:
        """What a scan of one folder will read: its state, its new items in batches; a big
        backlog is handed to the `helper` at once (see FetchHelper.submit)."""
        t0 = time.perf_counter()
        rep = FolderReport(mailbox, folder)
        st = self._state(mailbox, folder)
        status = source.folder_status(folder)
        last = st.last_uid
        if st.uidvalidity is not None and st.uidvalidity != status.uidvalidity:
            log.warning("%s/%s: UIDVALIDITY changed (%s -> %s): re-reading the folder; "
                        "messages already stored are not duplicated",
                        mailbox, folder, st.uidvalidity, status.uidvalidity)
            last = 0
            rep.uidvalidity_reset = True
        elif st.uidvalidity is not None and status.uidnext is not None and status.uidnext - 1 <= last:
            rep.unchanged = True
            return _FolderPlan(rep, status.uidvalidity, last, True, [], False, time.perf_counter() - t0)
        # Nothing is written here: a scan stopped before it reads this folder leaves its state
        # as it was (a folder never read stays stale for /healthz; a changed UIDVALIDITY is
        # found again next time).
        items = source.new_items(folder, last)
        rep.new = len(items)
        # Two stages: while batch k is written to the store, batch k+1 is fetched, parsed and
        # classified, on a helper thread or, for a big backlog, in a helper process.
        # (A big backlog that fills more than its first batch.)
        in_helper = (helper is not None and len(items) > min(batch_size, defaults.SCAN_FIRST_BATCH_SIZE)
                     and len(items) >= defaults.SCAN_PROCESS_MIN_MESSAGES)
        if in_helper:
            assert helper is not None
            batches = scan_batches(items, batch_size, small_first=not helper.busy)
            helper.submit(folder, batches)
        else:
            batches = scan_batches(items, batch_size)
        first = rep.uidvalidity_reset or st.uidvalidity is None
        return _FolderPlan(rep, status.uidvalidity, last, first, batches, in_helper, time.perf_counter() - t0)

    def _read_folder(self, plan: _FolderPlan, source: MailboxSource, helper: FetchHelper | None) -> FolderReport:
        t0 = time.perf_counter() - plan.plan_seconds
        rep, mailbox, folder = plan.report, plan.report.mailbox, plan.report.folder
        if plan.set_cursor:  # unchanged, or read from `cursor` on (the first time, or anew)
            self._mark_ok(mailbox, folder, plan.uidvalidity, plan.cursor)
        if rep.unchanged:
            rep.seconds = time.perf_counter() - t0
            return rep
        batches = plan.batches
        self.progress.start(mailbox, folder, rep.new)
        if plan.in_helper:
            assert helper is not None
            prepared = helper.prepared(folder, batches)
        else:
            prepared = self._prepared_in_thread(source, mailbox, folder, batches)
        try:
            with collected_per_batch() as collect:
                for batch in batches:
                    if self.stop.is_set():
                        rep.interrupted = True
                        log.info("%s/%s: stop requested; committed up to here, the next scan resumes",
                                 mailbox, folder)
                        break
                    self._store_isolating(next(prepared), mailbox, folder, plan.uidvalidity, batch, rep)
                    collect()
                    self.progress.advance(len(batch))
                    if self.on_batch:
                        self.on_batch(rep)
        finally:
            prepared.close()  # ends the helper: no FETCH left running on a connection in use
            self.progress.finish()
        if not rep.interrupted:
            self._mark_ok(mailbox, folder, plan.uidvalidity, None)
        rep.seconds = time.perf_counter() - t0
        return rep

    def _prepared_in_thread(self, source: MailboxSource, mailbox: str, folder: str,
                            batches: list[Sequence[Item]]) -> Generator[PreparedBatch, None, None]:
        """Prepared batches from a helper thread, one batch ahead. The mailbox connection is
        only ever used by that one thread meanwhile."""
        stage = prepared_batches(source, folder, batches, self.directory, mailbox)
        pool = ThreadPoolExecutor(1, thread_name_prefix="carewatch-fetch")
        try:
            pending = pool.submit(next, stage) if batches else None
            for k in range(len(batches)):
                assert pending is not None
                current = pending.result()
                pending = pool.submit(next, stage) if k + 1 < len(batches) else None
                yield current
        finally:
            # Never leave a FETCH running on the connection the caller is about to reuse or close.
            pool.shutdown(wait=True, cancel_futures=True)
            stage.close()

    def _mark_ok(self, mailbox: str, folder: str, uidvalidity: int, last_uid: int | None) -> None:
        values: dict[str, Any] = {"uidvalidity": uidvalidity, "last_ok_at": utcnow(),
                                  "last_scan_at": utcnow(), "last_error": None}
        if last_uid is not None:
            values["last_uid"] = last_uid
        with self.store.session() as db:
            db.execute(update(FolderState).where(col(FolderState.mailbox) == mailbox,
                                                 col(FolderState.folder) == folder).values(**values))
            db.commit()

    def _discover(self, found: dict[str, tuple[str, int]], now: datetime) -> None:
        """Record unknown people at client domains as discovered contacts."""
        rows = [{"email": addr, "name": name or addr, "role": "user", "client_id": cid,
                 "discovered": True, "active": True, "first_seen_at": now}
                for addr, (name, cid) in found.items()]
        with self.store.session() as db:
            self.store.insert_ignore(db, table_of(Contact), rows, ["email"])
            db.commit()
            for c in db.execute(select(*columns(Contact.id, Contact.email, Contact.client_id, Contact.role,
                                                Contact.active))
                                .where(col(Contact.email).in_(list(found)))).all():
                if c.active and c.client_id in self.directory.domain_clients.values():
                    self.directory.contacts[c.email] = ContactRef(c.id, c.client_id, c.role)

    def _store_isolating(self, prepared: PreparedBatch, mailbox: str, folder: str, uidvalidity: int,
                         batch: Sequence[Item], rep: FolderReport) -> None:
        """Store a batch; if that fails for a reason tied to what a message holds (not the
        database being away), store it in halves until the message is found, record it as
        skipped with the error, and go on: one poison message (or a bug of ours that it trips)
        never stops the firm's mailbox. The cursor moves only once the whole batch is done."""
        cursor = max(it.cursor for it in batch)
        try:
            self._store_batch(prepared, mailbox, folder, uidvalidity, cursor, rep)
        except Exception as exc:  # noqa: BLE001 - sorted below: only a message's fault is isolated
            if not _tied_to_a_message(exc) or len(prepared.rows) == 0:
                raise
            log.warning("%s/%s: a batch of %d could not be stored (%s); finding the message that fails",
                        mailbox, folder, len(prepared.rows), exc)
            failed = _isolate(prepared, lambda b: self._store_batch(b, mailbox, folder, uidvalidity, None, rep))
            # The messages that fail are recorded as skipped, as any unreadable one is, and the
            # cursor moves past the batch with them.
            self._store_batch(PreparedBatch(prepared.now, [], [], [], failed), mailbox, folder, uidvalidity, cursor,
                              rep)

    def _store_batch(self, prepared: PreparedBatch, mailbox: str, folder: str, uidvalidity: int,
                     cursor: int | None, rep: FolderReport) -> None:
        """Stage two, on the scanning thread: discovered contacts, then one transaction that
        stores the batch, threads it and moves the folder's cursor to `cursor` (None: it stays)."""
        now, command_rows, skipped = prepared.now, prepared.commands, prepared.skipped
        # People, not newsletters or bounces, become discovered contacts.
        found: dict[str, tuple[str, int]] = {}
        for i, people, _ in prepared.discovered:
            if not prepared.rows[i]["automated"]:
                for addr, name, cid in people:
                    found.setdefault(addr, (name, cid))
        if found:
            self._discover(found, now)
        for i, _, pm in prepared.discovered:
            # Classified before the people it names were stored (here, by the batch before, or
            # in another process): classify again to link them.
            prepared.rows[i].update(classified(classify(pm, self.directory)))
        rows: dict[str, dict[str, Any]] = {}
        for row in prepared.rows:
            seen = rows.get(row["message_id"])
            if seen is not None and not same_message(seen, row):
                reuse_id(row)  # another message under a reused Message-ID: kept, not dropped
                seen = rows.get(row["message_id"])
            if seen is not None:
                rep.duplicates += 1
                continue
            rows[row["message_id"]] = row
            if row["automated"]:
                rep.automated += 1
            if row["problems"]:
                log.debug("%s/%s uid %s: %s", mailbox, folder, row["uid"], row["problems"])

        for item, reason in skipped:
            log.warning("%s/%s: skipped message %s: %s", mailbox, folder, item.cursor, reason)
        try:
            with self.store.session() as db:
                conn = db.connection()
                write_alone(self.store, conn)
                batch_rows = distinct_from_stored(db, list(rows.values()))
                merged = plan_threads(conn, batch_rows) if batch_rows else set()  # sets thread_id
                inserted = self.store.insert_ignore(db, table_of(Message), batch_rows, ["message_id"])
                if batch_rows:
                    finish_threads(conn, batch_rows, merged=merged)
                    link_contacts(conn, batch_rows)
                if command_rows:
                    self.store.insert_ignore(db, table_of(AlertCommand), command_rows, ["message_id"])
                if skipped:
                    self.store.insert_ignore(db, table_of(SkippedMessage), [
                        {"mailbox": mailbox, "folder": folder, "uidvalidity": uidvalidity,
                         "uid": skipped_uid(it),
                         "reason": reason, "seen_at": now} for it, reason in skipped
                    ], ["mailbox", "folder", "uidvalidity", "uid"])
                moved = {} if cursor is None else {"last_uid": cursor}
                db.execute(update(FolderState).where(
                    col(FolderState.mailbox) == mailbox, col(FolderState.folder) == folder).values(
                    **moved, uidvalidity=uidvalidity,
                    messages_seen=FolderState.messages_seen + inserted,
                    messages_skipped=FolderState.messages_skipped + len(skipped),
                    last_scan_at=now))
                db.commit()
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"{mailbox}/{folder}: could not store a batch: "
                             f"{describe_db_error(exc)}") from exc
        rep.stored += inserted
        rep.duplicates += len(rows) - inserted
        rep.skipped += len(skipped)


def _tied_to_a_message(exc: BaseException) -> bool:
    """Whether a failure to store a batch may come from what one message holds (a value the
    database refuses, a bug of ours that a message trips), not from the database being away,
    locked or full: those stop the scan, to be retried whole."""
    if isinstance(exc, StoreError):
        cause = exc.__cause__
        if isinstance(cause, OperationalError) or cause is None:
            return False
        return isinstance(cause, DBAPIError) and not cause.connection_invalidated
    return isinstance(exc, ValueError | TypeError | KeyError | IndexError | AttributeError | UnicodeError)


def _isolate(prepared: PreparedBatch, store: Callable[[PreparedBatch], None]) -> list[tuple[Item, str]]:
    """Store `prepared` in halves, down to the single messages that fail; returns those, with
    the error, as skipped messages are kept. The batch's skipped messages and commands go with
    the first part that holds their message."""
    failed: list[tuple[Item, str]] = []
    todo = [prepared]
    while todo:
        part = todo.pop(0)
        try:
            store(part)
            continue
        except Exception as exc:  # noqa: BLE001 - the same sorting as the whole batch's
            if not _tied_to_a_message(exc):
                raise
            if len(part.rows) <= 1:
                row = part.rows[0] if part.rows else None
                if row is None:
                    raise
                # An IMAP message by its UID; a Maildir one (no UID) by its Message-ID, digested
                # as skipped_uid() digests a file name.
                uid = row.get("uid")
                item = Item(uid, uid) if isinstance(uid, int) else Item(row["message_id"], 0)
                failed.append((item, valid_text(f"could not be stored: {type(exc).__name__}: {exc}")[:500]))
                continue
            todo[:0] = list(_halves(part))
    return failed


def _halves(p: PreparedBatch) -> tuple[PreparedBatch, PreparedBatch]:
    mid = len(p.rows) // 2
    parts = []
    for lo, hi in ((0, mid), (mid, len(p.rows))):
        rows = p.rows[lo:hi]
        ids = {r["message_id"] for r in rows}
        parts.append(PreparedBatch(
            p.now, rows, [(i - lo, people, pm) for i, people, pm in p.discovered if lo <= i < hi],
            [c for c in p.commands if c["message_id"] in ids], p.skipped if lo == 0 else []))
    return parts[0], parts[1]


def same_message(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two messages with one Message-ID are copies of one message (INBOX and Sent, Gmail
    labels, a re-import): the same sender and subject. A promotion that reuses a client's
    Message-ID (or a broken mailer that gives every message the same one) is not."""
    return bool(a["from_addr"] == b["from_addr"] and a["norm_subject"] == b["norm_subject"])


def reuse_id(row: dict[str, Any]) -> None:
    """Give a message that reuses another's Message-ID an id of its own, derived from what it
    is (so reading it again finds it stored), and stop it sharing the other's thread."""
    original = row["message_id"]
    mark = hashlib.sha256(f"{row['from_addr']}\n{row['norm_subject']}".encode()).hexdigest()[:12]
    row["message_id"] = f"{original[:-1][:960]}#reused-{mark}>"
    note = f"Message-ID {original} is also another message's: stored as {row['message_id']}"
    row["problems"] = f"{row['problems']}; {note}" if row["problems"] else note


def distinct_from_stored(db: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch's rows, those that reuse the Message-ID of a different stored message given
    an id of their own (a copy of a stored message keeps its id and is then a duplicate)."""
    if not rows:
        return rows
    stored = {r.message_id: r for r in db.execute(
        select(*columns(Message.message_id, Message.from_addr, Message.norm_subject))
        .where(col(Message.message_id).in_([r["message_id"] for r in rows]))).all()}
    if not stored:
        return rows
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        old = stored.get(row["message_id"])
        if old is not None and not same_message(old._asdict(), row):
            reuse_id(row)
        out.setdefault(row["message_id"], row)
    return list(out.values())


def reclassify_automation(store: Store, chunk: int = 5000) -> int:
    """Judge stored messages again by the automated-mail rules that need only what is stored
    (the sender's address and the subject), after those rules changed. A message known as
    automated by a header (Auto-Submitted, List-Id, a bounce report...) stays so: its headers
    are not stored. Acknowledgements cannot be judged again: bodies are never stored.
    Returns how many messages changed."""
    changed = 0
    last_id = 0
    while True:
        with store.session() as db:
            write_alone(store, db.connection())
            rows = db.execute(
                select(*columns(Message.id, Message.from_addr, Message.subject, Message.automated,
                                Message.automated_reason, Message.thread_id))
                .where(col(Message.id) > last_id).order_by(col(Message.id)).limit(chunk)).all()
            if not rows:
                return changed
            threads: set[int] = set()
            for r in rows:
                if r.automated and r.automated_reason not in SENDER_SUBJECT_RULES:
                    continue
                pm = ParsedMessage(
                    message_id="", synthetic_id=False, in_reply_to=None, references=[], subject=r.subject,
                    from_addr=r.from_addr, from_name="", to=[], cc=[], date_header=None, internal_date=None,
                    sent_at=datetime.min)
                reason = automated_reason(pm)
                if (reason is not None) != bool(r.automated) or (reason and reason != r.automated_reason):
                    db.execute(update(Message).where(Message.id == r.id).values(
                        automated=reason is not None, automated_reason=reason))
                    changed += 1
                    if r.thread_id is not None:
                        threads.add(r.thread_id)
            if threads:
                refresh_replies(db.connection(), threads, merged=threads)
            db.commit()
            last_id = rows[-1].id


def reclassify(store: Store, directory: Directory, chunk: int = 5000) -> int:
    """Classify stored messages again after who-is-who changed in the config. Returns changed.

    A message that now has a client is threaded by subject as ingest would have threaded it
    (which needs a client): a refs-less reply to a client listed only now joins the question
    it answered, whichever of the two comes first here. Each chunk is stored alone, as a
    scan's batch is (write_alone), so a scan running meanwhile sees it whole."""
    changed = 0
    last_id = 0
    while True:
        with store.session() as db:
            write_alone(store, db.connection())
            relink: list[dict[str, Any]] = []
            gained: list[int] = []  # messages that now have a client: to thread by subject
            threads: set[int] = set()
            rows = db.execute(
                select(*columns(Message.id, Message.message_id, Message.from_addr, Message.from_name,
                                Message.to_addrs, Message.cc_addrs, Message.direction, Message.client_id,
                                Message.contact_ids, Message.automated, Message.sent_at, Message.thread_id))
                .where(col(Message.id) > last_id).order_by(col(Message.id)).limit(chunk)
            ).all()
            if not rows:
                return changed
            for r in rows:
                pm = ParsedMessage(
                    message_id="", synthetic_id=False, in_reply_to=None, references=[], subject="",
                    from_addr=r.from_addr, from_name=r.from_name,
                    to=[a for a in r.to_addrs.split(",") if a], cc=[a for a in r.cc_addrs.split(",") if a],
                    date_header=None, internal_date=None, sent_at=datetime.min)
                cl = classify(pm, directory)
                ids = ",".join(map(str, cl.contact_ids))
                if (cl.direction, cl.client_id, ids) != (r.direction, r.client_id, r.contact_ids):
                    db.execute(update(Message).where(Message.id == r.id).values(
                        direction=cl.direction, client_id=cl.client_id, contact_ids=ids,
                        firm_in_to=cl.firm_in_to, firm_in_cc=cl.firm_in_cc))
                    db.execute(delete(MessageContact).where(MessageContact.message_pk == r.id))
                    relink.append({"message_id": r.message_id, "contact_ids": ids, "direction": cl.direction,
                                   "automated": r.automated, "sent_at": r.sent_at})
                    if r.thread_id is not None:
                        threads.add(r.thread_id)
                        if cl.client_id is not None and cl.client_id != r.client_id:
                            gained.append(r.id)
                    changed += 1
            link_contacts(db.connection(), relink)
            if gained:
                # Their threading columns (References can run to kilobytes) are read for them
                # only, as updated above.
                cond, ids_param = among(store.dialect, "id", "BIGINT")
                rethread = db.execute(select(*columns(
                    Message.message_id, Message.client_id, Message.contact_ids, Message.thread_id, Message.sent_at,
                    Message.norm_subject, Message.subject, Message.in_reply_to, Message.references))
                    .where(text(cond).bindparams(ids_param)), {"ids": gained}).mappings().all()
                threads |= finish_threads(db.connection(), [dict(r) for r in rethread])
            # Directions and contacts changed: the replies and answered episodes of these
            # threads may have too. (Every chunk used to recompute every thread of the store:
            # a client spread over the whole history cost that once per 5,000 messages.)
            if threads:
                refresh_replies(db.connection(), threads, merged=threads)
            db.commit()
            last_id = rows[-1].id
