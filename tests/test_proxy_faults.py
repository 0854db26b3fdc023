"""Faults a real server (Dovecot) shows through a small proxy on loopback that edits what it
sends, response by response: a message whose FETCH makes the connection drop every time, a
message whose answer comes with garbage, a connection that drops once, an answer left out,
and a stop request in the middle of each. One bad message never stops the folder, nothing is
skipped in silence, and a stop leaves the cursor before what was not read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import write_config
from servers import Dovecot, ImapAnswers, TcpProxy
from sqlalchemy import select
from sqlmodel import col

from worker.config import load_config
from worker.ingest.prepare import NO_ANSWER
from worker.ingest.reports import ScanReport
from worker.ingest.run import prepare_store
from worker.ingest.scan import Ingestor
from worker.store.models import FolderState, Message, SkippedMessage
from worker.synth import build_message

T0 = datetime(2026, 11, 16, 9, 0)
POISON_UID = 6


def messages(marker: str, n: int = 12) -> list[bytes]:
    """n client questions; the POISON_UID-th has `marker` in its subject."""
    return [build_message(sender="alice@acme.example", to=["shared@firm.example"],
                          subject=f"Question {i} {marker if i == POISON_UID else ''}".strip(),
                          date=T0 + timedelta(minutes=i), message_id=f"<p{i}@acme.example>")
            for i in range(1, n + 1)]


class Faulty:
    """A Dovecot mailbox behind a proxy whose responses go through `change`."""

    def __init__(self, tmp_path: Path, dovecot: Dovecot, db_url: str, marker: str,
                 change: Callable[[bytes], bytes | None]) -> None:
        dovecot.append(messages(marker))
        self.proxy = TcpProxy(dovecot.port, on_server=lambda: ImapAnswers(change))
        path = write_config(tmp_path, db_url, dovecot, batch_size=4, mailbox_extra="timeout_seconds = 10\n")
        path.write_text(path.read_text().replace(f"port = {dovecot.port}", f"port = {self.proxy.port}"))
        self.cfg = load_config(path)
        self.store, self.directory = prepare_store(self.cfg)
        self.stop = threading.Event()

    def scan(self) -> ScanReport:
        return Ingestor(self.store, self.cfg, self.directory, stop=self.stop).scan()

    def stored_subjects(self) -> list[int]:
        with self.store.session() as db:
            ids = db.execute(select(col(Message.message_id))).scalars().all()
        return sorted(int(i.strip("<>").split("@")[0][1:]) for i in ids)

    def skipped(self) -> list[tuple[str, int, str]]:
        with self.store.session() as db:
            return [(s.folder, s.uid, s.reason) for s in db.execute(select(SkippedMessage)).scalars().all()]

    def cursor(self) -> int:
        with self.store.session() as db:
            return db.execute(select(col(FolderState.last_uid)).where(col(FolderState.folder) == "INBOX")).scalar_one()

    def close(self) -> None:
        self.proxy.close()


def inbox(rep: ScanReport) -> Any:
    return next(f for f in rep.folders if f.folder == "INBOX")


def test_a_message_whose_fetch_drops_the_connection_is_isolated_and_the_folder_goes_on(
        tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    cuts = []

    def change(response: bytes) -> bytes | None:
        if b"POISON-CUT" in response:
            cuts.append(1)
            return None
        return response

    f = Faulty(tmp_path, dovecot, db_url, "POISON-CUT", change)
    try:
        rep = f.scan()
        assert rep.ok, rep.errors
        assert f.stored_subjects() == [i for i in range(1, 13) if i != POISON_UID]
        [(folder, uid, reason)] = f.skipped()
        assert (folder, uid) == ("INBOX", POISON_UID) and "drops the connection" in reason
        assert f.cursor() == 12 and inbox(rep).stored == 11 and inbox(rep).skipped == 1
        # The scan's own read, the batch it was in, then the message alone on 3 new connections.
        assert len(cuts) == 1 + 1 + 1 + 3
        # The next scan neither stops at it nor fetches it again.
        assert f.scan().ok and len(cuts) == 6
    finally:
        f.close()


def test_garbage_between_answers_is_read_past_and_nothing_is_lost(tmp_path: Path, dovecot: Dovecot,
                                                                   db_url: str) -> None:
    def change(response: bytes) -> bytes | None:
        # A response of no known shape after the message's own answer, every time it is sent.
        return response + b"* 9 FETCH (}{ \x00garbage\r\n" if b"POISON-GARBLE" in response else response

    f = Faulty(tmp_path, dovecot, db_url, "POISON-GARBLE", change)
    try:
        rep = f.scan()
        assert rep.ok, rep.errors
        assert f.stored_subjects() == list(range(1, 13)) and f.skipped() == [] and f.cursor() == 12
        with f.store.session() as db:
            subject = db.execute(select(col(Message.subject)).where(col(Message.message_id) == "<p6@acme.example>"))
            assert subject.scalar_one() == "Question 6 POISON-GARBLE"
    finally:
        f.close()


def test_garbage_inside_one_messages_answer_is_isolated_like_a_drop(tmp_path: Path, dovecot: Dovecot,
                                                                    db_url: str) -> None:
    def change(response: bytes) -> bytes | None:
        # The literal's byte count no longer matches: the line after it is not IMAP.
        return response.replace(b"POISON-GARBLE", b"POISON-GARBLE\r\n)\r\n* 9 FETCH (}{ \x00garbage")

    f = Faulty(tmp_path, dovecot, db_url, "POISON-GARBLE", change)
    try:
        rep = f.scan()
        assert rep.ok, rep.errors
        stored = f.stored_subjects()
        assert [i for i in range(1, 13) if i != POISON_UID] == [i for i in stored if i != POISON_UID]
        # Either read past (stored) or isolated (recorded): never lost, never blocking.
        assert (POISON_UID in stored) != ([(s[0], s[1]) for s in f.skipped()] == [("INBOX", POISON_UID)])
        print("garbage inside: stored" if POISON_UID in stored else f"garbage inside: {f.skipped()}")
        assert f.cursor() == 12
    finally:
        f.close()


def test_a_connection_that_drops_once_loses_and_skips_nothing(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    cut = [False]

    def change(response: bytes) -> bytes | None:
        if b"ONCE-CUT" in response and not cut[0]:
            cut[0] = True
            return None
        return response

    f = Faulty(tmp_path, dovecot, db_url, "ONCE-CUT", change)
    try:
        rep = f.scan()
        assert rep.ok and cut[0]
        assert f.stored_subjects() == list(range(1, 13)) and f.skipped() == [] and f.cursor() == 12
    finally:
        f.close()


def test_an_answer_the_server_leaves_out_is_recorded_not_passed(tmp_path: Path, dovecot: Dovecot,
                                                                db_url: str) -> None:
    def change(response: bytes) -> bytes | None:
        return b"" if response.startswith(b"* ") and b"POISON-LEFT-OUT" in response else response

    f = Faulty(tmp_path, dovecot, db_url, "POISON-LEFT-OUT", change)
    try:
        rep = f.scan()
        assert rep.ok, rep.errors
        assert f.stored_subjects() == [i for i in range(1, 13) if i != POISON_UID]
        assert f.skipped() == [("INBOX", POISON_UID, NO_ANSWER)] and f.cursor() == 12
    finally:
        f.close()


def test_a_stop_while_the_unreadable_message_is_sought_leaves_it_for_the_next_scan(
        tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    f: Faulty | None = None
    cuts = []

    def change(response: bytes) -> bytes | None:
        if b"POISON-STOP" in response:
            cuts.append(1)
            if len(cuts) == 3 and f is not None:  # the search is under way: stop now
                f.stop.set()
            return None
        return response

    f = Faulty(tmp_path, dovecot, db_url, "POISON-STOP", change)
    try:
        rep = f.scan()
        assert len(cuts) == 3  # nothing more was tried once the stop was asked for
        assert POISON_UID not in f.stored_subjects() and f.skipped() == []
        assert f.cursor() < POISON_UID  # not passed: neither stored nor recorded
        assert not any("Traceback" in e for e in rep.errors)
        f.stop.clear()
        rep = f.scan()
        assert rep.ok, rep.errors
        assert f.stored_subjects() == [i for i in range(1, 13) if i != POISON_UID]
        assert [(s[0], s[1]) for s in f.skipped()] == [("INBOX", POISON_UID)] and f.cursor() == 12
    finally:
        f.close()


def test_a_stop_while_an_answer_is_left_out_leaves_the_cursor_before_it(tmp_path: Path, dovecot: Dovecot,
                                                                          db_url: str) -> None:
    f: Faulty | None = None

    def change(response: bytes) -> bytes | None:
        if response.startswith(b"* ") and b"POISON-LEFT" in response:
            if f is not None:
                f.stop.set()
            return b""
        return response

    f = Faulty(tmp_path, dovecot, db_url, "POISON-LEFT", change)
    try:
        f.scan()
        assert POISON_UID not in f.stored_subjects()
        assert f.cursor() < POISON_UID or f.skipped() == [("INBOX", POISON_UID, NO_ANSWER)]
    finally:
        f.close()
