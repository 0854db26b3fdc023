"""A message the server leaves out of a FETCH answer is asked for again, and if it stays
unanswered it is recorded as skipped with the reason: the folder's cursor never passes a
message that was neither stored nor recorded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from servers import Dovecot
from sqlalchemy import select
from sqlmodel import col

from worker.config import load_config
from worker.errors import StoreError
from worker.ingest.prepare import NO_ANSWER
from worker.ingest.run import prepare_store, run_scan
from worker.mailbox.base import Item, RawMessage
from worker.mailbox.imap import ImapSource
from worker.store.models import FolderState, Message, SkippedMessage
from worker.synth import build_message

T0 = datetime(2026, 11, 16, 9, 0)


def question(i: int) -> bytes:
    return build_message(sender="alice@acme.example", to=["shared@firm.example"], subject=f"Question {i}",
                         date=T0 + timedelta(minutes=i), message_id=f"<q{i}@acme.example>")


def leave_out(monkeypatch: pytest.MonkeyPatch, uid: int, times: int) -> list[list[int]]:
    """Make the IMAP source drop `uid` from its first `times` FETCH answers that hold it, as a
    server that skips a message does. Returns the UIDs each FETCH asked for."""
    real = ImapSource.start_fetch
    asked: list[list[int]] = []
    left = [times]

    def start_fetch(self: ImapSource, folder: str, items: Sequence[Item],
                    snippets: bool = False) -> Callable[[], list[RawMessage]]:
        asked.append([int(str(it.key)) for it in items])
        done = real(self, folder, items, snippets)

        def complete() -> list[RawMessage]:
            raws = done()
            if left[0] > 0 and any(r.item.key == uid for r in raws):
                left[0] -= 1
                return [r for r in raws if r.item.key != uid]
            return raws

        return complete

    monkeypatch.setattr(ImapSource, "start_fetch", start_fetch)
    return asked


def scan(tmp_path: Path, dovecot: Dovecot, db_url: str) -> tuple[Any, Any]:
    cfg = load_config(write_config(tmp_path, db_url, dovecot, batch_size=4))
    store, directory = prepare_store(cfg)
    return run_scan(cfg, store, directory), store


def test_a_message_left_out_once_is_asked_for_again_and_stored(tmp_path: Path, dovecot: Dovecot, db_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    dovecot.append([question(i) for i in range(10)])
    asked = leave_out(monkeypatch, uid=6, times=1)
    rep, store = scan(tmp_path, dovecot, db_url)
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert rep.ok and inbox.stored == 10 and inbox.skipped == 0
    assert [6] in asked  # asked again, alone
    with store.session() as db:
        assert len(db.execute(select(Message)).scalars().all()) == 10


def test_a_message_never_answered_is_recorded_as_skipped_not_passed_in_silence(
        tmp_path: Path, dovecot: Dovecot, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dovecot.append([question(i) for i in range(10)])
    leave_out(monkeypatch, uid=6, times=2)
    rep, store = scan(tmp_path, dovecot, db_url)
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert inbox.stored == 9 and inbox.skipped == 1
    with store.session() as db:
        skipped = db.execute(select(SkippedMessage)).scalars().all()
        cursor = db.execute(select(col(FolderState.last_uid)).where(col(FolderState.folder) == "INBOX")).scalar_one()
    assert [(s.folder, s.uid, s.reason) for s in skipped] == [("INBOX", 6, NO_ANSWER)]
    assert cursor == 10  # past it, because it is on record


def test_a_reused_message_id_hides_no_client_question(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    """A promotion stored first under the Message-ID a client's question also carries: both are
    kept (the question under an id of its own), a true copy is still stored once, and reading
    the folder again adds nothing."""
    promo = build_message(sender="news@shop.example", to=["shared@firm.example"], subject="Sale",
                          date=T0, message_id="<same@acme.example>")
    q = build_message(sender="alice@acme.example", to=["shared@firm.example"], subject="Signed contract?",
                      date=T0 + timedelta(hours=1), message_id="<same@acme.example>")
    dovecot.append([promo])
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    run_scan(cfg, store, directory)  # the promotion is stored first, alone
    dovecot.append([q, q])  # the question, and a copy of it in the same batch
    dovecot.append([q], "Sent")  # and another copy elsewhere
    rep = run_scan(cfg, store, directory)
    assert rep.ok, rep.errors
    with store.session() as db:
        got = {m.from_addr: m for m in db.execute(select(Message)).scalars()}
    assert set(got) == {"news@shop.example", "alice@acme.example"}
    question_ = got["alice@acme.example"]
    assert question_.message_id.startswith("<same@acme.example#reused-") and question_.direction == "inbound"
    assert question_.thread_id != got["news@shop.example"].thread_id
    again = run_scan(cfg, store, directory)
    assert sum(f.stored for f in again.folders) == 0
    dovecot.append([q])
    assert sum(f.stored for f in run_scan(cfg, store, directory).folders) == 0  # read again: found stored


def test_one_message_that_cannot_be_stored_is_isolated_and_the_folder_goes_on(
        tmp_path: Path, dovecot: Dovecot, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message that trips a failure while its batch is stored (a value the database refuses,
    or a bug of ours) is found by storing the batch in halves, recorded as skipped with the
    error, and every other message is stored; the next scan goes on past it."""
    from worker.ingest import storing as ingest

    dovecot.append([question(i) for i in range(12)])
    real = ingest.link_contacts

    def link_contacts(conn: Any, rows: list[dict[str, Any]]) -> None:
        if any(r["message_id"] == "<q7@acme.example>" for r in rows):
            raise ValueError("a value nobody expected")
        real(conn, rows)

    monkeypatch.setattr(ingest, "link_contacts", link_contacts)
    rep, store = scan(tmp_path, dovecot, db_url)
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert rep.ok, rep.errors
    assert inbox.stored == 11 and inbox.skipped == 1
    with store.session() as db:
        (skip,) = db.execute(select(SkippedMessage)).scalars().all()
        cursor = db.execute(select(col(FolderState.last_uid)).where(col(FolderState.folder) == "INBOX")).scalar_one()
        ids = set(db.execute(select(col(Message.message_id))).scalars())
    assert skip.uid == 8 and "ValueError: a value nobody expected" in skip.reason
    assert "<q7@acme.example>" not in ids and len(ids) == 11 and cursor == 12


def test_a_database_that_goes_away_is_not_taken_for_a_poison_message(
        tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from worker.ingest import storing as ingest

    dovecot.append([question(i) for i in range(4)])

    def gone(conn: Any, rows: list[dict[str, Any]]) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(ingest, "link_contacts", gone)
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot))
    store, directory = prepare_store(cfg)
    with pytest.raises(StoreError, match="locked"):
        run_scan(cfg, store, directory)
    with store.session() as db:
        assert db.execute(select(SkippedMessage)).scalars().all() == []  # nothing given up: retried whole
