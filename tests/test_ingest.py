"""Ingest against a real Dovecot: incremental, resumable, idempotent, and read-only."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import imapclient
import pytest
from conftest import write_config
from servers import Dovecot
from sqlalchemy import func, select
from sqlmodel import col

from worker.config import load_config
from worker.ingest.run import prepare_store, run_scan
from worker.ingest.scan import Ingestor
from worker.mailbox import open_source
from worker.mailbox.imap import ImapSource
from worker.mailbox.imap_wire import Wire
from worker.store.models import Contact, FolderState, Message, ThreadLink, table_of
from worker.synth import build_message

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def inbound(i: int, sender: str = "alice@acme.example", **kw: Any) -> bytes:
    return build_message(**{
        "sender": sender,
        "to": ["shared@firm.example"],
        "subject": f"Question {i}",
        "date": T0 + timedelta(minutes=i),
        "message_id": f"<q{i}@acme.example>",
        **kw,
    })


def count(store, *where) -> int:  # type: ignore[no-untyped-def]
    with store.session() as db:
        return int(db.execute(select(func.count()).select_from(Message).where(*where)).scalar_one())


def flags_of(d: Dovecot, folder: str) -> dict[int, tuple[bytes, ...]]:
    with imapclient.IMAPClient("127.0.0.1", port=d.port, ssl=False) as c:
        c.login(d.user, d.password)
        c.select_folder(folder, readonly=True)
        return {uid: v[b"FLAGS"] for uid, v in c.fetch(c.search("ALL"), ["FLAGS"]).items()}


def test_a_second_scan_reads_only_what_is_new(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    dovecot.append([inbound(i) for i in range(5)])
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    r1 = run_scan(cfg, store, directory)
    assert r1.ok and r1.stored == 5
    r2 = run_scan(cfg, store, directory)
    assert r2.stored == 0 and all(f.unchanged for f in r2.folders)
    dovecot.append([inbound(i) for i in range(5, 8)])
    r3 = run_scan(cfg, store, directory)
    inbox = next(f for f in r3.folders if f.folder == "INBOX")
    assert inbox.new == 3 and inbox.stored == 3
    assert count(store) == 8
    m = _one(store, "<q6@acme.example>")
    assert m.direction == "inbound" and m.client_id is not None and m.contact_ids
    assert m.sent_at == (T0 + timedelta(minutes=6)).replace(tzinfo=None)
    assert m.internal_date is not None and m.uid == 7 and m.folder == "INBOX"


def _one(store, message_id: str) -> Message:  # type: ignore[no-untyped-def]
    with store.session() as db:
        return db.execute(select(Message).where(col(Message.message_id) == message_id)).scalar_one()


def test_scanning_never_changes_the_mailbox(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    dovecot.append([inbound(i) for i in range(4)])
    dovecot.append(
        [
            build_message(
                sender="olivia@firm.example",
                to=["alice@acme.example"],
                subject="Re: Question 1",
                date=T0 + timedelta(hours=1),
            )
        ],
        folder="Sent",
    )
    before = {f: flags_of(dovecot, f) for f in ("INBOX", "Sent")}
    assert all(b"\\Seen" not in fl for fl in before["INBOX"].values())
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    assert run_scan(cfg, store, directory).stored == 5
    after = {f: flags_of(dovecot, f) for f in ("INBOX", "Sent")}
    assert after == before


def test_an_interrupted_scan_resumes_where_it_stopped(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    dovecot.append([inbound(i) for i in range(10)])
    cfg = load_config(write_config(tmp_path, db_url, dovecot, batch_size=3))
    store, directory = prepare_store(cfg)
    stop = threading.Event()
    ing = Ingestor(store, cfg, directory, stop=stop, on_batch=lambda rep: stop.set())
    with open_source(cfg.settings.mailboxes[0]) as src:
        rep = ing.scan_folder(src, "shared", "INBOX", 3)
    assert rep.interrupted and rep.stored == 3
    with store.session() as db:
        st = db.execute(select(FolderState).where(col(FolderState.folder) == "INBOX")).scalar_one()
    assert st.last_uid == 3
    r = run_scan(cfg, store, directory)
    inbox = next(f for f in r.folders if f.folder == "INBOX")
    assert inbox.new == 7 and inbox.stored == 7 and inbox.duplicates == 0
    assert count(store) == 10


@pytest.mark.private_dovecot
def test_a_changed_uidvalidity_rereads_without_duplicates(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    dovecot.append([inbound(i) for i in range(4)])
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    run_scan(cfg, store, directory)
    # Dovecot assigns a new UIDVALIDITY when its uid list and indexes are gone (a restored
    # backup or a rebuilt mailbox looks like this to a client).
    dovecot.stop()
    for p in dovecot.maildir.glob("dovecot*"):
        p.unlink()
    dovecot.start()
    dovecot.append([inbound(9)])
    r = run_scan(cfg, store, directory)
    inbox = next(f for f in r.folders if f.folder == "INBOX")
    assert inbox.uidvalidity_reset and inbox.new == 5 and inbox.stored == 1 and inbox.duplicates == 4
    assert count(store) == 5


def test_a_message_in_inbox_and_sent_is_stored_once(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    # Someone at the firm writes to a client and copies the shared mailbox: it lands in
    # INBOX and in Sent with one Message-ID.
    msg = build_message(
        sender="olivia@firm.example",
        to=["alice@acme.example"],
        cc=["shared@firm.example"],
        subject="Engagement letter",
        date=T0,
        message_id="<eng@firm.example>",
    )
    no_id = build_message(
        sender="olivia@firm.example", to=["bob@acme.example"], subject="No id", date=T0, message_id=False
    )
    dovecot.append([msg, no_id])
    dovecot.append([msg, no_id], folder="Sent")
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    r = run_scan(cfg, store, directory)
    assert r.stored == 2 and sum(f.duplicates for f in r.folders) == 2
    m = _one(store, "<eng@firm.example>")
    assert m.direction == "outbound"
    with store.session() as db:
        synth = db.execute(select(Message).where(col(Message.synthetic_id))).scalar_one()
    assert synth.message_id.endswith("@synthetic.carewatch>")


def test_unknown_people_at_a_client_domain_become_discovered_contacts(
    tmp_path: Path, dovecot: Dovecot, db_url: str
) -> None:
    dovecot.append(
        [
            inbound(1, sender=("Carl New", "carl@acme.example")),  # type: ignore[arg-type]
            inbound(2, sender="stranger@elsewhere.example"),
        ]
    )
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    run_scan(cfg, store, directory)
    with store.session() as db:
        carl = db.execute(select(Contact).where(col(Contact.email) == "carl@acme.example")).scalar_one()
    assert carl.discovered and carl.name == "Carl New"
    m = _one(store, "<q1@acme.example>")
    assert m.direction == "inbound" and m.contact_ids == str(carl.id)
    assert _one(store, "<q2@acme.example>").direction == "other"


def test_directions_cover_outbound_internal_and_internal_clients(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    msgs = [
        build_message(
            sender="olivia@firm.example",
            to=["alice@acme.example", "bob@acme.example"],
            subject="Update",
            date=T0,
            message_id="<out@firm>",
        ),
        build_message(
            sender="olivia@firm.example", to=["oscar@firm.example"], subject="Lunch?", date=T0, message_id="<int@firm>"
        ),
        # Ivan works at the firm but is a contact of the internal client "Tax Division".
        build_message(
            sender="ivan@firm.example",
            to=["shared@firm.example"],
            subject="Need the figures",
            date=T0,
            message_id="<ivan@firm>",
        ),
        build_message(
            sender="oscar@firm.example",
            to=["ivan@firm.example"],
            subject="Re: Need the figures",
            date=T0,
            message_id="<ivan-reply@firm>",
        ),
    ]
    dovecot.append(msgs)
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    run_scan(cfg, store, directory)
    out = _one(store, "<out@firm>")
    assert out.direction == "outbound" and len(out.contact_ids.split(",")) == 2
    assert _one(store, "<int@firm>").direction == "internal"
    assert _one(store, "<ivan@firm>").direction == "inbound"
    assert _one(store, "<ivan-reply@firm>").direction == "outbound"


def test_a_new_contact_in_the_config_reclassifies_stored_mail(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    dovecot.append(
        [
            build_message(
                sender="zed@initech.example",
                to=["shared@firm.example"],
                subject="Hello",
                date=T0,
                message_id="<zed@initech>",
            )
        ]
    )
    path = write_config(tmp_path, db_url, dovecot)
    cfg = load_config(path)
    store, directory = prepare_store(cfg)
    run_scan(cfg, store, directory)
    assert _one(store, "<zed@initech>").direction == "other"
    path.write_text(
        path.read_text() + '\n[[clients]]\nname = "Initech"\ndomains = ["initech.example"]\n'
        'owner = "olivia@firm.example"\ncontacts = [{ name = "Zed", email = "zed@initech.example", '
        'role = "principal" }]\n'
    )
    cfg2 = load_config(path)
    store2, _ = prepare_store(cfg2)
    assert _one(store2, "<zed@initech>").direction == "inbound"


def test_reclassifying_refreshes_exactly_the_threads_whose_replies_could_change(
        tmp_path: Path, dovecot: Dovecot, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a config change, reclassify refreshes the replies and answered episodes of the
    threads its changes touch (it refreshed every thread of the store once per chunk). A
    full recomputation afterwards finds nothing left to change."""
    from sqlalchemy import text

    from worker.demo import generate
    from worker.ingest import reclassify as reclassifying
    from worker.ingest import run as application
    from worker.store.threads import refresh_replies

    firm = generate(dovecot.home, seed=11)
    dovecot.chown_mail()

    def without(k: int) -> Any:
        def edit(data: dict[str, Any]) -> None:
            del data["clients"][k]
        return edit

    # The last client is listed only later (its mail gains a client, and is threaded by
    # subject), and the first one is dropped then (its mail loses its client: no longer
    # inbound, no longer waiting).
    cfg = demo_config(firm.config, dovecot, db_url, 200, edit=without(-1))
    store, directory = prepare_store(cfg)
    assert run_scan(cfg, store, directory).ok
    before = store_dump(store)

    real = reclassifying.reclassify
    changed: list[int] = []

    def in_small_chunks(store: Any, directory: Any) -> int:
        changed.append(real(store, directory, 100))
        return changed[-1]

    monkeypatch.setattr(application, "reclassify", in_small_chunks)
    store2, _ = prepare_store(demo_config(firm.config, dovecot, db_url, 200, edit=without(0)))
    after = store_dump(store2)
    assert changed and changed[0] > 50 and after["episodes"] != before["episodes"]
    with store2.engine.begin() as conn:
        refresh_replies(conn)  # every thread, from scratch
    assert store_dump(store2) == after
    with store2.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM message WHERE client_id IS NULL AND direction = 'inbound'")
                            ).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM episode e JOIN message m ON m.id = e.first_pk "
                                 "WHERE m.direction <> 'inbound'")).scalar_one() == 0


def test_maildir_source_scans_incrementally_without_touching_files(tmp_path: Path, db_url: str) -> None:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(3):
        (md / "new" / f"{i}.host").write_bytes(inbound(i))
    cfg = load_config(write_config(tmp_path, db_url, maildir=md))
    store, directory = prepare_store(cfg)
    names_before = sorted(p.name for p in md.rglob("*") if p.is_file())
    assert run_scan(cfg, store, directory).stored == 3
    assert run_scan(cfg, store, directory).stored == 0
    (md / "new" / "9.host").write_bytes(inbound(9))
    assert run_scan(cfg, store, directory).stored == 1
    assert sorted(p.name for p in md.rglob("*") if p.is_file()) == names_before + ["9.host"]
    # Snippets read with the headers are the ones read on their own (the same read of the file).
    with open_source(cfg.settings.mailboxes[0]) as src:
        items = src.new_items("INBOX", 0)
        together = {r.item.key: r.snippet for r in src.fetch("INBOX", items, snippets=True)}
        assert together == src.fetch_snippets("INBOX", items) and len(together) == 4
        assert all(r.snippet is None for r in src.fetch("INBOX", items))


def test_an_unchanged_maildir_reads_nothing_but_a_just_arrived_file_is_read_again(tmp_path: Path) -> None:
    from worker.mailbox import maildir
    from worker.mailbox.maildir import MaildirSource

    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(3):
        (md / "new" / f"{i}.host").write_bytes(inbound(i))
    newest = max(p.stat().st_ctime_ns for p in (md / "new").iterdir())
    # Listed at once: the newest file may yet get a twin of the same ctime (timestamps are only
    # as fine as the clock tick), so its cursor is its own time and that time is read again.
    now = MaildirSource("m", md, clock=lambda: newest + 1000)
    items = now.new_items("INBOX", 0)
    assert [it.cursor for it in items][-1] == newest
    assert [str(it.key) for it in now.new_items("INBOX", items[-1].cursor)] == [str(items[-1].key)]
    # Listed later, every file is settled: the cursor steps past it and nothing is read again.
    later = MaildirSource("m", md, clock=lambda: newest + maildir.SETTLED_NS + 1)
    items = later.new_items("INBOX", 0)
    assert [it.cursor for it in items] == sorted(p.stat().st_ctime_ns + 1 for p in (md / "new").iterdir())
    assert later.new_items("INBOX", items[-1].cursor) == []
    # A stored cursor from before (a ctime, not ctime + 1) reads its tie once more, as before.
    assert len(later.new_items("INBOX", newest)) >= 1


def test_a_rescan_of_an_unchanged_maildir_reports_no_new_mail(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The report (and the worker's log line every interval) used to say "1 new" per folder,
    # a duplicate, for a folder nobody had touched.
    from worker.mailbox import maildir

    monkeypatch.setattr(maildir, "SETTLED_NS", 0)  # the files below count as old at once
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(3):
        (md / "new" / f"{i}.host").write_bytes(inbound(i))
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=md))
    store, directory = prepare_store(cfg)
    assert run_scan(cfg, store, directory).stored == 3
    time.sleep(0.01)  # past the clock tick of the files' ctimes
    again = run_scan(cfg, store, directory)
    assert [(f.folder, f.new, f.duplicates) for f in again.folders] == [("INBOX", 0, 0), ("Sent", 0, 0)]
    (md / "cur" / "9.host:2,").write_bytes(inbound(9))
    assert run_scan(cfg, store, directory).stored == 1


def test_fetch_responses_are_split_by_uid_whatever_the_item_order() -> None:
    from worker.mailbox.imap_answers import fetch_answers

    data = [
        (b'1 (UID 7 INTERNALDATE "02-Nov-2026 09:00:00 +0000" BODY[HEADER.FIELDS (FROM)] {12}', b"From: a@b.c\r\n"),
        b")",
        (b'2 (INTERNALDATE "02-Nov-2026 09:01:00 +0000" BODY[HEADER.FIELDS ("FROM")] {12}', b"From: d@e.f\r\n"),
        b" UID 9)",
        b'3 (UID 11 INTERNALDATE "02-Nov-2026 09:02:00 +0000" BODY[HEADER.FIELDS (FROM)] "")',
    ]
    answers = fetch_answers(data)
    assert answers is not None
    out = {uid: (meta, sections) for uid, meta, sections in answers}
    assert sorted(out) == [7, 9, 11]
    assert out[9][1] == {b"BODY[HEADER": b"From: d@e.f\r\n"} and b"INTERNALDATE" in out[9][0]
    assert out[11][1] == {b"BODY[HEADER": b""}
    # A response we do not understand sends the caller to imapclient's full parser.
    assert fetch_answers([(b"1 (BODY[TEXT] {3}", b"abc"), b")"]) is None


def test_an_answer_with_the_header_and_the_body_text_gives_both_whatever_their_order() -> None:
    from worker.mailbox.imap_answers import HEADER, TEXT, fetch_answers

    data = [
        (b'1 (UID 7 INTERNALDATE "02-Nov-2026 09:00:00 +0000" BODY[HEADER.FIELDS (FROM)] {12}', b"From: a@b.c\r\n"),
        (b" BODY[TEXT]<0> {5}", b"Hello"),
        b")",
        (b"2 (UID 8 BODY[TEXT]<0> {9}", b"Thanks!\r\n"),
        (b' INTERNALDATE "02-Nov-2026 09:01:00 +0000" BODY[HEADER.FIELDS ("FROM")] {12}', b"From: d@e.f\r\n"),
        b")",
        # An empty body comes as a quoted string, not a literal.
        (b'3 (UID 9 INTERNALDATE "02-Nov-2026 09:02:00 +0000" BODY[HEADER.FIELDS (FROM)] {12}', b"From: g@h.i\r\n"),
        b' BODY[TEXT]<0> "")',
        # A header asked for alone, beside them.
        (b'4 (UID 10 BODY[HEADER.FIELDS (FROM)] {12}', b"From: j@k.l\r\n"),
        b")",
        # Flags another client changed: without a UID (Dovecot), or with one; no section.
        b"1 (FLAGS (\\Seen))",
        b"2 (UID 8 FLAGS (\\Seen \\Flagged))",
    ]
    answers = fetch_answers(data)
    assert answers is not None
    out = {uid: sections for uid, _, sections in answers if sections}
    assert [uid for uid, _, sections in answers if not sections] == [8]
    assert out == {7: {HEADER: b"From: a@b.c\r\n", TEXT: b"Hello"},
                   8: {HEADER: b"From: d@e.f\r\n", TEXT: b"Thanks!\r\n"},
                   9: {HEADER: b"From: g@h.i\r\n", TEXT: b""},
                   10: {HEADER: b"From: j@k.l\r\n"}}
    assert all(b"INTERNALDATE" in meta for uid, meta, sections in answers if sections and uid != 10)


def test_the_socket_reader_gives_the_same_answers_in_one_pass_or_the_generic_way() -> None:
    """FETCH answers as they come off the wire: the usual shape (UID, INTERNALDATE, then the
    header and the snippet) is read in one pass; one that starts so and then differs (an
    empty body sent as "", FLAGS after the literal, sections in another order) and
    unsolicited flag updates go the generic way; every message comes out the same either
    way, and the reader stops at the tagged completion, leaving what follows unread."""
    import io
    from types import SimpleNamespace

    from worker.mailbox.imap_answers import HEADER, TEXT, fetch_answers, read_until_tagged

    head = b"BODY[HEADER.FIELDS (FROM SUBJECT)]"
    wire = b"".join([
        b'* 1 FETCH (UID 7 INTERNALDATE "02-Nov-2026 09:00:00 +0000" ' + head + b" {13}\r\nFrom: a@b.c\r\n)\r\n",
        b'* 2 FETCH (UID 8 INTERNALDATE "02-Nov-2026 09:01:00 +0000" ' + head + b" {13}\r\nFrom: d@e.f\r\n"
        b" BODY[TEXT]<0> {7}\r\nThanks!)\r\n",
        b"* 3 FETCH (FLAGS (\\Seen))\r\n",
        b'* 4 FETCH (UID 9 INTERNALDATE "02-Nov-2026 09:02:00 +0000" ' + head + b' {13}\r\nFrom: g@h.i\r\n'
        b' BODY[TEXT]<0> "")\r\n',
        b'* 5 FETCH (UID 10 INTERNALDATE "02-Nov-2026 09:03:00 +0000" ' + head + b" {13}\r\nFrom: j@k.l\r\n"
        b" FLAGS (\\Seen))\r\n",
        b"* 6 FETCH (UID 11 BODY[TEXT]<0> {2}\r\nHi" b' INTERNALDATE "02-Nov-2026 09:04:00 +0000" ' + head
        + b" {13}\r\nFrom: m@n.o\r\n)\r\n",
        b"* 9 EXISTS\r\n",
        b"A12 OK Fetch completed.\r\n",
        b"* 10 EXISTS\r\n",
    ])
    file = io.BufferedReader(io.BytesIO(wire))
    imap = SimpleNamespace(file=file, tagged_commands={b"A12": None})
    fast, data, tag, status, _ = read_until_tagged(Wire(imap))
    assert (tag, status, imap.tagged_commands) == (b"A12", b"OK", {})
    assert file.read() == b"* 10 EXISTS\r\n"
    assert [uid for uid, _, _ in fast] == [7, 8]  # the usual shape, in one pass
    others = fetch_answers(data)
    assert others is not None
    got = {uid: sections for uid, _, sections in fast + others if sections}
    assert got == {7: {HEADER: b"From: a@b.c\r\n"},
                   8: {HEADER: b"From: d@e.f\r\n", TEXT: b"Thanks!"},
                   9: {HEADER: b"From: g@h.i\r\n", TEXT: b""},
                   10: {HEADER: b"From: j@k.l\r\n"},
                   11: {HEADER: b"From: m@n.o\r\n", TEXT: b"Hi"}}
    dates = {uid: meta for uid, meta, sections in fast + others if sections}
    assert all(b'INTERNALDATE "02-Nov-2026 09:0' in meta for meta in dates.values())


def test_internaldates_parse_like_imapclient_and_garbage_is_none() -> None:
    from imapclient.datetime_util import parse_to_datetime

    from worker.mailbox.imap_answers import parse_internaldate

    for v in (b"02-Nov-2026 09:00:00 +0100", b" 2-Nov-2026 09:00:00 -0530", b"29-Mar-2026 01:30:00 +0000",
              b"2-nov-2026 23:59:59 +1400"):
        assert parse_internaldate(v) == parse_to_datetime(v, normalise=False)
        parsed = parse_internaldate(v)
        assert parsed is not None and parsed.utcoffset() == parse_to_datetime(v, normalise=False).utcoffset()
    assert parse_internaldate(b"31-Feb-2026 09:00:00 +0000") is None
    assert parse_internaldate(b"not a date") is None


def test_maildir_mail_restored_with_an_old_mtime_is_still_scanned(tmp_path: Path) -> None:
    import os

    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / "new-one:2,").write_bytes(inbound(1))
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=md))
    cfg.settings.mailboxes[0].folders = ["INBOX"]
    store, directory = prepare_store(cfg)
    assert run_scan(cfg, store, directory).stored == 1
    old = md / "cur" / "restored:2,"
    old.write_bytes(inbound(2))
    os.utime(old, (T0.timestamp(), T0.timestamp()))  # cp -p / rsync -t keep the old time
    assert run_scan(cfg, store, directory).stored == 1
    assert _one(store, "<q2@acme.example>").internal_date == T0.replace(tzinfo=None)


def test_a_late_message_linking_two_threads_merges_them(tmp_path: Path, db_url: str) -> None:
    from worker.store.threads import assign_threads

    cfg = load_config(write_config(tmp_path, db_url, maildir=tmp_path / "md"))
    store, _ = prepare_store(cfg)
    now = datetime(2026, 11, 16, 9, 0)
    base = {
        "subject": "s",
        "norm_subject": "s",
        "client_id": None,
        "contact_ids": "",
        "from_addr": "a@x.example",
        "direction": "other",
        "sent_at": now,
        "ingested_at": now,
        "references": "",
        "in_reply_to": None,
    }

    def add(mid: str, refs: str = "", direction: str = "other", minutes: int = 0) -> None:
        row = {
            **base,
            "message_id": mid,
            "references": refs,
            "direction": direction,
            "sent_at": now + timedelta(minutes=minutes),
        }
        with store.session() as db:
            store.insert_ignore(db, table_of(Message), [row], ["message_id"])
            assign_threads(db.connection(), [row])
            db.commit()

    def thread_of(mid: str) -> int:
        return _one(store, mid).thread_id  # type: ignore[return-value]

    add("<a@x>", "<x@x>", "inbound")
    add("<b@x>", "<y@x>", "outbound", minutes=5)
    assert thread_of("<a@x>") != thread_of("<b@x>")
    add("<c@x>", "<x@x> <y@x>", minutes=10)  # knows both parents: one conversation after all
    assert thread_of("<a@x>") == thread_of("<b@x>") == thread_of("<c@x>")
    # ...and the inbound message now knows it was answered by the outbound one.
    assert _one(store, "<a@x>").reply_at == now + timedelta(minutes=5)


def test_one_batch_linking_three_stored_threads_in_two_places_leaves_one_thread(tmp_path: Path,
                                                                                db_url: str) -> None:
    """Two conversations of one batch each link a stored thread they share with a third: all
    of it must end as one thread, never a thread id that a merge just retired."""
    from worker.store.threads import assign_threads

    cfg = load_config(write_config(tmp_path, db_url, maildir=tmp_path / "md"))
    store, _ = prepare_store(cfg)
    now = datetime(2026, 11, 16, 9, 0)

    def row(mid: str, refs: str, minutes: int) -> dict[str, object]:
        return {"subject": "s", "norm_subject": "s", "client_id": None, "contact_ids": "",
                "from_addr": "a@x.example", "direction": "other", "ingested_at": now, "in_reply_to": None,
                "message_id": mid, "references": refs,
                "sent_at": now + timedelta(minutes=minutes)}

    def add(rows: list[dict[str, object]]) -> None:
        with store.session() as db:
            store.insert_ignore(db, table_of(Message), rows, ["message_id"])
            assign_threads(db.connection(), rows)
            db.commit()

    add([row("<x@x>", "", 0)])
    add([row("<y1@x>", "", 1)])
    add([row("<y2@x>", "<y1@x>", 2)])
    add([row("<z@x>", "", 3)])
    everyone = ["<x@x>", "<y1@x>", "<y2@x>", "<z@x>"]
    assert len({_one(store, m).thread_id for m in everyone}) == 3
    # One batch, two components: <p> links z with y1, <q> links y2 with x. The y thread is the
    # largest of the three ids (they are hashes of the first Message-ID), so merging one
    # component at a time would hand <p> a thread id that <q>'s merge retires.
    add([row("<p@x>", "<z@x> <y1@x>", 10), row("<q@x>", "<y2@x> <x@x>", 11)])
    threads = {_one(store, m).thread_id for m in everyone + ["<p@x>", "<q@x>"]}
    assert len(threads) == 1
    with store.session() as db:
        links = set(db.execute(select(ThreadLink.thread_id)).scalars())  # type: ignore[call-overload]
    assert links == threads


def test_upgrading_an_existing_store_backfills_threads_and_replies(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import text

    from worker.store.db import MIGRATIONS_DIR, make_engine, run_migrations

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    acfg = AlembicConfig()
    acfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        acfg.attributes["connection"] = conn
        command.upgrade(acfg, "0002")  # a store from before threads were kept
        conn.execute(text("INSERT INTO client (name, internal, domains, active) VALUES ('C', 0, 'c.example', 1)"))
        cols = (
            'message_id, synthetic_id, thread_key, in_reply_to, "references", subject, norm_subject, from_addr, '
            "from_name, to_addrs, cc_addrs, sent_at, direction, automated, acknowledgement, firm_in_to, firm_in_cc, "
            "client_id, contact_ids, mailbox, folder, ingested_at"
        )
        conn.execute(
            text(
                f"INSERT INTO message ({cols}) VALUES ('<q@c>', 0, '<q@c>', NULL, '', 'Q', 'q', 'p@c.example', "
                "'', 'f@firm.example', '', '2026-11-16 09:00:00.000000', 'inbound', 0, 0, 1, 0, 1, '7', "
                "'m', 'INBOX', '2026-11-16 09:00:00.000000')"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO message ({cols}) VALUES ('<r@f>', 0, '<q@c>', '<q@c>', '<q@c>', 'Re: Q', 'q', "
                "'f@firm.example', '', 'p@c.example', '', '2026-11-16 10:00:00.000000', 'outbound', 0, 0, 0, "
                "0, 1, '7', 'm', 'Sent', '2026-11-16 10:00:00.000000')"
            )
        )
    run_migrations(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, thread_id, reply_at FROM message ORDER BY id")).all()
        links = conn.execute(text("SELECT count(*) FROM message_contact")).scalar()
        days = set(conn.execute(text("SELECT day FROM message_contact")).scalars())
        episodes = conn.execute(text("SELECT scope, first_pk, contact_id, reply_ts - started_ts, size FROM episode "
                                     "ORDER BY scope")).all()
    assert rows[0][1] == rows[1][1] is not None
    assert str(rows[0][2]).startswith("2026-11-16 10:00") and rows[1][2] is None
    assert links == 2
    assert days == {(datetime(2026, 11, 16) - datetime(1970, 1, 1)).days}  # 0005 fills the day
    # ...and 0005 keeps the answered wait as an episode, for both readings of count_cc.
    assert [tuple(e) for e in episodes] == [("any", 1, 7, 3600.0, 1), ("to", 1, 7, 3600.0, 1)]


def test_the_migrations_build_exactly_the_models_and_schema_head_is_alembics(tmp_path: Path, db_url: str) -> None:
    """A store migrated to head has every table, column and index the models declare (and the
    SCHEMA_HEAD shortcut names the newest migration)."""
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config as AlembicConfig
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlmodel import SQLModel

    from worker.store.db import MIGRATIONS_DIR, SCHEMA_HEAD, schema_revision

    acfg = AlembicConfig()
    acfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(acfg).get_current_head() == SCHEMA_HEAD
    cfg = load_config(write_config(tmp_path, db_url, maildir=tmp_path / "md"))
    store, _ = prepare_store(cfg)
    assert schema_revision(store.engine) == SCHEMA_HEAD
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), SQLModel.metadata)
    assert diff == []


def test_the_direct_inserts_store_exactly_what_sqlalchemy_would(tmp_path: Path, db_url: str) -> None:
    """insert_ignore's fast paths (sqlite3 executemany, PostgreSQL unnest arrays) adapt values
    themselves: the stored row must be the one SQLAlchemy writes (dates, booleans, NULLs,
    defaults, big integers, non-ASCII), and a conflict must insert nothing."""
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql, sqlite

    from worker.store.db import _postgres_insert_ignore, _sqlite_insert_ignore

    cfg = load_config(write_config(tmp_path, db_url, maildir=tmp_path / "md"))
    store, _ = prepare_store(cfg)
    row = {"message_id": "<a@b>", "synthetic_id": True, "in_reply_to": None,
           "references": "<x@y> <z@y>", "subject": "Re: caf\u00e9 \"q\" 50%", "norm_subject": "caf\u00e9",
           "from_addr": "a@b", "from_name": "A", "to_addrs": "f@firm", "cc_addrs": "",
           "date_header": datetime(2026, 11, 16, 9, 0, 5, 123), "internal_date": None,
           "sent_at": datetime(2026, 11, 16, 9, 0, 5, 123), "direction": "inbound", "automated": False,
           "automated_reason": None, "acknowledgement": True, "firm_in_to": True, "firm_in_cc": False,
           "client_id": None, "contact_ids": "", "mailbox": "m", "folder": "INBOX", "uid": 2**40,
           "ingested_at": datetime(2026, 11, 16, 10, 0), "problems": None, "thread_id": 2**62}
    other = {**row, "message_id": "<b@b>"}
    fast, dialect_insert = ((_sqlite_insert_ignore, sqlite.insert) if store.dialect == "sqlite"
                            else (_postgres_insert_ignore, postgresql.insert))
    with store.engine.begin() as conn:
        assert fast(conn, table_of(Message), [row], ["message_id"]) == 1
        assert fast(conn, table_of(Message), [row, other], ["message_id"]) == 1  # <a@b> is there
        conn.execute(text("DELETE FROM message WHERE message_id = '<b@b>'"))
        conn.execute(dialect_insert(table_of(Message)).on_conflict_do_nothing(index_elements=["message_id"]),
                     [other])
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT * FROM message ORDER BY message_id")).mappings().all()
    assert len(stored) == 2
    a, b = ({k: v for k, v in r.items() if k not in ("id", "message_id")} for r in stored)
    assert a == b


def test_the_direct_inserts_read_each_row_by_its_keys(tmp_path: Path, db_url: str) -> None:
    """The fast paths read every row by the first row's keys: a row with its keys in another
    order stores its own values; a row as long as the first with another key, or of another
    length, is not read that way but goes to SQLAlchemy (which refuses the first: nothing of
    the batch is stored)."""
    from sqlalchemy import text

    cfg = load_config(write_config(tmp_path, db_url, maildir=tmp_path / "md"))
    store, _ = prepare_store(cfg)
    base = {"message_id": "<a@b>", "sent_at": datetime(2026, 11, 16, 9, 0),
            "direction": "inbound", "ingested_at": datetime(2026, 11, 16, 10, 0), "thread_id": 1, "uid": 7}
    reordered = dict(reversed({**base, "message_id": "<b@b>", "uid": 8}.items()))
    other_key = {k: v for k, v in base.items() if k != "uid"} | {"message_id": "<c@b>", "problems": "bad date"}
    longer = {**base, "message_id": "<d@b>", "problems": "bad date"}
    table = table_of(Message)
    with store.engine.begin() as conn:
        assert store.insert_ignore(conn, table, [base | {"message_id": "<e@b>"}, longer], ["message_id"]) == 2
        conn.execute(text("DELETE FROM message"))
    with pytest.raises(Exception), store.engine.begin() as conn:  # noqa: B017 - SQLAlchemy's own refusal
        store.insert_ignore(conn, table, [base, other_key], ["message_id"])
    with store.engine.begin() as conn:
        assert store.insert_ignore(conn, table, [base, reordered], ["message_id"]) == 2
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT message_id, uid, problems FROM message ORDER BY message_id")).all()
    assert [tuple(r) for r in stored] == [("<a@b>", 7, None), ("<b@b>", 8, None)]


# --- big backlogs: fetch and parse in a helper process ---------------------------------------
def demo_over_imap(dovecot: Dovecot, db_urls: list[str], batch_size: int):  # type: ignore[no-untyped-def]
    """The demo firm's mail (inbound, replies, automated mail, acknowledgements, people not yet
    listed as contacts) in the test Dovecot, and a config reading it over IMAP per store."""
    from worker.demo import generate

    firm = generate(dovecot.home, seed=11)
    dovecot.chown_mail()
    return [demo_config(firm.config, dovecot, url, batch_size) for url in db_urls]


def demo_config(path: Path, dovecot: Dovecot, db_url: str, batch_size: int,  # type: ignore[no-untyped-def]
                edit: Any = None):
    """The demo firm's config (`edit` may change its data first) reading the test Dovecot."""
    import os
    import tomllib

    from worker.config import validate_data

    data = tomllib.loads(path.read_text())
    if edit is not None:
        edit(data)
    data["store"] = {"url": db_url}
    data["mailboxes"] = [{"name": "shared", "host": "127.0.0.1", "port": dovecot.port, "tls": "none",
                          "allow_plaintext": True, "username": dovecot.user,
                          "password_env": "CW_TEST_IMAP_PASSWORD", "folders": ["INBOX", "Sent"],
                          "batch_size": batch_size}]
    os.environ["CW_TEST_IMAP_PASSWORD"] = dovecot.password
    return validate_data(data, None, os.environ)


def store_dump(store) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    """Everything a scan derives, without surrogate keys and ingest times."""
    from sqlalchemy import text

    queries = {
        "message": "SELECT * FROM message ORDER BY message_id",
        "contacts": "SELECT email, name, role, client_id, discovered FROM contact ORDER BY email",
        "links": "SELECT m.message_id, mc.contact_id, mc.inbound, mc.automated, mc.day FROM message_contact mc "
                 "JOIN message m ON m.id = mc.message_pk ORDER BY 1, 2",
        "episodes": "SELECT e.scope, e.thread_id, m.message_id, e.contact_id, e.started_ts, e.reply_ts, e.size "
                    "FROM episode e JOIN message m ON m.id = e.first_pk ORDER BY 1, 3",
        "threads": "SELECT mid, thread_id FROM thread_link ORDER BY mid",
        "commands": "SELECT message_id, command, argument FROM alert_command ORDER BY message_id",
    }
    out = {}
    with store.session() as db:
        for name, sql in queries.items():
            res = db.execute(text(sql))
            keep = [i for i, c in enumerate(res.keys()) if c not in ("id", "ingested_at")]
            # Comparable across SQLite and PostgreSQL: booleans as 0/1, times as text, and
            # sorted here (the two sort text differently).
            out[name] = sorted(tuple(_plain(r[i]) for i in keep) for r in res.all())
    return out


def _plain(v: object) -> object:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str) and len(v) == 26 and v[4] == "-" and v[19] == ".":  # SQLite's DATETIME text
        v = datetime.fromisoformat(v)
    if isinstance(v, datetime):
        return v.replace(tzinfo=None).isoformat(" ")
    if isinstance(v, float):
        return round(v, 3)
    return "" if v is None else v


def test_a_big_backlog_is_read_by_a_helper_process_with_the_same_result(
        tmp_path: Path, dovecot: Dovecot, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    from worker import defaults

    cfg, cfg2 = demo_over_imap(dovecot, [db_url, f"sqlite:///{tmp_path / 'threaded.db'}"], batch_size=150)
    store, directory = prepare_store(cfg)
    from worker.ingest.helper import FetchHelper

    starts = []
    real_start = FetchHelper._start

    def counted_start(self: FetchHelper) -> None:
        starts.append(1)
        real_start(self)

    monkeypatch.setattr(FetchHelper, "_start", counted_start)
    monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", 1)
    rep = run_scan(cfg, store, directory)
    assert rep.ok and rep.stored > 600
    assert len(starts) == 1  # one helper read both folders
    assert multiprocessing.active_children() == []  # and it is gone
    by_process = store_dump(store)

    store2, directory2 = prepare_store(cfg2)
    monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", 10**9)
    assert run_scan(cfg2, store2, directory2).stored == rep.stored
    by_thread = store_dump(store2)
    assert by_process == by_thread
    assert by_process["episodes"] and by_process["links"]
    # The demo's mail has all the kinds the two modes must agree on.
    assert count(store, Message.acknowledgement) and count(store, Message.automated)
    assert count(store, Message.direction == "inbound") and count(store, Message.direction == "outbound")
    with store.session() as db:
        assert db.execute(select(func.count()).select_from(Contact).where(col(Contact.discovered))).scalar_one()


def test_snippets_fetched_with_the_headers_give_the_same_store_and_leave_mail_unread(
        tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where most of a batch wanted its snippet, the next batch's snippets come with its
    headers (one FETCH, BODY.PEEK): the same acknowledgements and alert commands as when each
    snippet is fetched on its own, fewer FETCHes, and no message marked read."""
    from worker import defaults

    urls = [f"sqlite:///{tmp_path / 'together.db'}", f"sqlite:///{tmp_path / 'apart.db'}"]
    cfg, cfg2 = demo_over_imap(dovecot, urls, batch_size=100)
    flags = flags_of(dovecot, "INBOX")
    asked: list[tuple[str, bool]] = []
    snippet_fetches: list[int] = []
    real_fetch, real_snippets = ImapSource.start_fetch, ImapSource.start_fetch_snippets

    def fetch(self: ImapSource, folder: str, items: Any, snippets: bool = False) -> Any:
        asked.append((folder, snippets))
        return real_fetch(self, folder, items, snippets)

    def fetch_snippets(self: ImapSource, folder: str, items: Any) -> Any:
        snippet_fetches.append(len(items))
        return real_snippets(self, folder, items)

    monkeypatch.setattr(ImapSource, "start_fetch", fetch)
    monkeypatch.setattr(ImapSource, "start_fetch_snippets", fetch_snippets)
    store, directory = prepare_store(cfg)
    assert run_scan(cfg, store, directory).ok
    together, fetched_apart = list(asked), sum(snippet_fetches)

    asked.clear()
    snippet_fetches.clear()
    monkeypatch.setattr(defaults, "SNIPPETS_WITH_HEADERS_SHARE", 2.0)  # never together
    store2, directory2 = prepare_store(cfg2)
    assert run_scan(cfg2, store2, directory2).ok
    assert not any(s for _, s in asked)
    assert store_dump(store) == store_dump(store2)
    # Client mail came with its snippets after the first batch; the firm's Sent did not.
    inbox = [s for f, s in together if f == "INBOX"]
    assert inbox[0] is False and len(inbox) > 3 and all(inbox[1:])
    assert not any(s for f, s in together if f == "Sent")
    assert fetched_apart < sum(snippet_fetches) / 3
    assert count(store, Message.acknowledgement) and count(store, Message.direction == "inbound")
    assert flags_of(dovecot, "INBOX") == flags


def test_the_helper_reads_the_next_big_folder_while_this_one_is_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next folder is handed to the helper before the one in hand is stored. Its list of
    batches is a big pickle, sent while the helper may be blocked sending a batch: the helper
    reads its jobs on a thread, or the two processes would wait for each other for ever.
    (A Maildir's items are file names: 3,000 of them pickle to several times what a pipe
    holds, where an IMAP folder would need some 30,000 messages.)"""
    import multiprocessing

    from worker import defaults
    from worker.ingest.helper import FetchHelper

    md = tmp_path / "md"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(2500):
        (md / "cur" / f"1700000000.M{i}P1.host:2,S").write_bytes(inbound(i))
    for i in range(3000):
        (md / ".Sent" / "cur" / f"1700000001.M{i}P1.host:2,S").write_bytes(
            inbound(i, message_id=f"<s{i}@acme.example>"))
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=md, batch_size=1000))
    store, directory = prepare_store(cfg)
    monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", 1)
    monkeypatch.setattr(defaults, "SCAN_FIRST_BATCH_SIZE", 20)
    starts, handed = [], []
    real_start, real_submit = FetchHelper._start, FetchHelper.submit

    def counted_start(self: FetchHelper) -> None:
        starts.append(1)
        real_start(self)

    def recorded_submit(self: FetchHelper, folder: str, batches: list[Any]) -> None:
        handed.append((folder, [len(b) for b in batches], stored_by_folder()))
        real_submit(self, folder, batches)

    def stored_by_folder() -> dict[str, int]:
        with store.session() as db:
            return dict(db.execute(select(col(Message.folder), func.count()).group_by(Message.folder)).all())

    monkeypatch.setattr(FetchHelper, "_start", counted_start)
    monkeypatch.setattr(FetchHelper, "submit", recorded_submit)
    reports: list[Any] = []
    scan = threading.Thread(target=lambda: reports.append(run_scan(cfg, store, directory)), daemon=True)
    scan.start()
    scan.join(120)
    if scan.is_alive():
        for p in multiprocessing.active_children():
            p.kill()  # unblocks the scan, which then fails
        pytest.fail("the scan and its helper process are waiting for each other")
    rep = reports[0]
    assert rep.ok and [(f.folder, f.stored) for f in rep.folders] == [("INBOX", 2500), ("Sent", 3000)]
    assert [f for f, _, _ in handed] == ["INBOX", "Sent"] and len(starts) == 1
    assert handed[1][2] == {}  # Sent went to the helper before INBOX was stored
    # The first folder starts small so that storing starts soon; Sent, queued behind it, does
    # not need to; no batch is larger than the config's.
    inbox_sizes, sent_sizes = handed[0][1], handed[1][1]
    assert inbox_sizes[0] < max(inbox_sizes) <= 1000 and min(sent_sizes[:-1]) == max(sent_sizes) <= 1000
    assert multiprocessing.active_children() == []


def test_a_folder_queued_behind_one_that_fails_is_still_read(
        tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that vanishes after the scan looked at it fails in the helper, which then
    ends; the folder queued behind it is read by a new helper, and the error is the
    vanished folder's alone."""
    from worker import defaults
    from worker.ingest.helper import FetchHelper

    with imapclient.IMAPClient("127.0.0.1", port=dovecot.port, ssl=False) as c:
        c.login(dovecot.user, dovecot.password)
        c.create_folder("Clients")
    dovecot.append([inbound(i, message_id=f"<c{i}@acme.example>") for i in range(30)], folder="Clients")
    dovecot.deliver_files([inbound(i) for i in range(40)])
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot, batch_size=10))
    cfg.settings.mailboxes[0].folders = ["Clients", "INBOX"]
    store, directory = prepare_store(cfg)
    monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", 1)
    starts = []
    real_start, real_plan = FetchHelper._start, Ingestor._plan_folder

    def counted_start(self: FetchHelper) -> None:
        starts.append(1)
        real_start(self)

    def plan_then_delete(self: Ingestor, source: Any, mailbox: str, folder: str, *a: Any) -> Any:
        plan = real_plan(self, source, mailbox, folder, *a)
        if folder == "INBOX":  # both are planned and queued: now Clients goes away
            with imapclient.IMAPClient("127.0.0.1", port=dovecot.port, ssl=False) as c:
                c.login(dovecot.user, dovecot.password)
                c.delete_folder("Clients")
        return plan

    monkeypatch.setattr(FetchHelper, "_start", counted_start)
    monkeypatch.setattr(Ingestor, "_plan_folder", plan_then_delete)
    rep = run_scan(cfg, store, directory)
    assert len(rep.errors) == 1 and "Clients" in rep.errors[0]
    assert [(f.folder, f.stored) for f in rep.folders] == [("INBOX", 40)]
    assert len(starts) == 2 and count(store) == 40


def test_an_error_looking_ahead_comes_after_the_folder_in_hand(tmp_path: Path, dovecot: Dovecot,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The next folder is looked at before this one is stored; what fails there (here the
    store) fails the scan where it did before: after this folder is stored."""
    from worker.errors import StoreError

    dovecot.deliver_files([inbound(i) for i in range(5)])
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot))
    store, directory = prepare_store(cfg)
    real_plan = Ingestor._plan_folder

    def failing_for_sent(self: Ingestor, source: Any, mailbox: str, folder: str, *a: Any) -> Any:
        if folder == "Sent":
            raise StoreError("the disk holding the database is full")
        return real_plan(self, source, mailbox, folder, *a)

    monkeypatch.setattr(Ingestor, "_plan_folder", failing_for_sent)
    with pytest.raises(StoreError, match="disk"):
        run_scan(cfg, store, directory)
    assert count(store) == 5


@pytest.mark.private_dovecot
def test_a_helper_process_that_loses_the_server_fails_the_scan_cleanly(
        tmp_path: Path, dovecot: Dovecot, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    from worker import defaults

    n = 4000
    dovecot.deliver_files([inbound(i) for i in range(n)])
    cfg = load_config(write_config(tmp_path, db_url, dovecot, batch_size=100))
    store, directory = prepare_store(cfg)
    monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", 1)
    seen = []

    def kill_after_first(rep):  # type: ignore[no-untyped-def]
        seen.append(rep.stored)
        if len(seen) == 1:
            dovecot.stop(kill=True)

    rep = Ingestor(store, cfg, directory, on_batch=kill_after_first).scan(cfg.settings.mailboxes)
    assert not rep.ok and "connection lost" in rep.errors[0]
    assert multiprocessing.active_children() == []
    with store.session() as db:
        st = db.execute(select(FolderState).where(col(FolderState.folder) == "INBOX")).scalar_one()
    # What the helper had prepared before the server died may still have been stored; the
    # cursor says exactly how far, and a rerun finishes the folder without duplicates.
    assert 100 <= st.last_uid < n and st.last_error
    assert count(store) == st.last_uid
    dovecot.start()
    assert run_scan(cfg, store, directory).ok
    assert count(store) == n


def test_a_stop_request_ends_the_helper_process_after_the_batch_in_hand(
        tmp_path: Path, dovecot: Dovecot, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    from worker import defaults

    dovecot.deliver_files([inbound(i) for i in range(50)])
    cfg = load_config(write_config(tmp_path, db_url, dovecot, batch_size=10))
    store, directory = prepare_store(cfg)
    monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", 1)
    stop = threading.Event()
    ing = Ingestor(store, cfg, directory, stop=stop, on_batch=lambda rep: stop.set())
    rep = ing.scan(cfg.settings.mailboxes)
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert inbox.interrupted and inbox.stored == 10 and count(store) == 10
    assert multiprocessing.active_children() == []
    stop.clear()
    assert run_scan(cfg, store, directory).stored == 40


def test_a_sigterm_to_the_whole_process_group_leaves_the_helper_to_the_scan(
        tmp_path: Path, dovecot: Dovecot) -> None:
    """systemd stops a service by sending SIGTERM to every process in its group. The worker
    then finishes the batch in hand; the helper must not die under it, or a scan waiting for
    its next batch fails with "ended unexpectedly" on a clean stop. Closed early, the helper
    still ends at once."""
    import signal
    import time

    from worker.ingest.helper import FetchHelper
    from worker.ingest.scan import scan_batches

    dovecot.deliver_files([inbound(i) for i in range(3000)])
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot))
    store, directory = prepare_store(cfg)
    mb = cfg.settings.mailboxes[0]
    with open_source(mb) as src:
        batches = scan_batches(src.new_items("INBOX", 0), 100)
    assert len(batches) == 30
    helper = FetchHelper(mb, directory)
    try:
        prepared = helper.prepared("INBOX", batches)
        first = next(prepared)
        assert helper._proc is not None and helper._proc.pid is not None
        os.kill(helper._proc.pid, signal.SIGTERM)
        # The pipe holds about one batch: all the others are prepared after the signal.
        rest = list(prepared)
        assert sum(len(p.rows) for p in [first, *rest]) == 3000

        prepared = helper.prepared("INBOX", batches)
        next(prepared)
        proc = helper._proc
        t = time.monotonic()
        prepared.close()  # left early: the helper is ended where it is
        assert proc is not None and not proc.is_alive() and time.monotonic() - t < 4
    finally:
        helper.close()
        store.dispose()


def test_pipelined_fetches_each_get_their_own_answers_in_any_order(tmp_path: Path, dovecot: Dovecot) -> None:
    """Several FETCHes in flight at once (headers and snippets of overlapping messages): the
    server may run them side by side and interleave the answers; each completion must get
    exactly its own messages, the same as a plain fetch, whatever order they complete in."""

    dovecot.append([inbound(i, body=f"body of message {i}\n") for i in range(30)])
    dovecot.append([inbound(100 + i) for i in range(3)], folder="Sent")
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot))
    with open_source(cfg.settings.mailboxes[0]) as src:
        items = src.new_items("INBOX", 0)
        assert len(items) == 30
        plain = {r.item.cursor: r for r in src.fetch("INBOX", items)}
        plain_snips = src.fetch_snippets("INBOX", items)
        for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
            started = [src.start_fetch("INBOX", items[:10]), src.start_fetch_snippets("INBOX", items[5:20]),
                       src.start_fetch("INBOX", items[10:]), src.start_fetch_snippets("INBOX", items[:5])]
            got: dict[int, object] = {k: started[k]() for k in order}
            heads = got[0] + got[2]  # type: ignore[operator]
            assert [r.item.cursor for r in heads] == [i.cursor for i in items]
            for r in heads:
                assert (r.header, r.internal_date) == (plain[r.item.cursor].header, plain[r.item.cursor].internal_date)
            assert got[1] == {i.key: plain_snips[i.key] for i in items[5:20]}
            assert got[3] == {i.key: plain_snips[i.key] for i in items[:5]}
            assert b"body of message 7" in got[1][items[7].key]
        # Headers with their snippets, beside a FETCH of other messages' snippets alone.
        for order in ([0, 1], [1, 0]):
            both = [src.start_fetch("INBOX", items[:20], snippets=True), src.start_fetch_snippets("INBOX", items[20:])]
            done: dict[int, Any] = {k: both[k]() for k in order}
            assert [(r.header, r.internal_date) for r in done[0]] == [
                (plain[i.cursor].header, plain[i.cursor].internal_date) for i in items[:20]]
            assert {r.item.key: r.snippet for r in done[0]} == {i.key: plain_snips[i.key] for i in items[:20]}
            assert done[1] == {i.key: plain_snips[i.key] for i in items[20:]}
        assert all(r.snippet is None for r in src.fetch("INBOX", items[:3]))
        # FETCHes abandoned in flight (a stopped scan) do not disturb what comes next.
        src.start_fetch("INBOX", items)
        src.start_fetch_snippets("INBOX", items)
        sent = src.new_items("Sent", 0)
        assert [r.header for r in src.fetch("Sent", sent)] == [r.header for r in src.fetch("Sent", sent)]
        assert len(sent) == 3 and src.folder_status("INBOX").messages == 30


def test_two_fetches_in_flight_for_the_same_messages_each_get_every_answer() -> None:
    """Two FETCHes in flight may ask for the same section of one message (headers twice, a
    snippet with its headers and alone). Untagged answers name no command, and the server may
    send both commands' answers before either completes: each completion must still get one
    answer per message. When each answer was filed by section and UID alone, the first to
    complete took them all and the other got nothing (seen with Dovecot, about 1 run in 15)."""
    from servers import replayed_imap

    from worker.mailbox.base import UidItems

    head = b"BODY[HEADER.FIELDS (FROM SUBJECT)]"

    def header(uid: int) -> bytes:
        h = f"Subject: m{uid}\r\n".encode()
        return (f'* {uid} FETCH (UID {uid} INTERNALDATE "02-Nov-2026 09:0{uid}:00 +0000" '.encode() + head
                + f" {{{len(h)}}}\r\n".encode() + h)

    def with_text(uid: int, text: bytes) -> bytes:
        return header(uid) + f" BODY[TEXT]<0> {{{len(text)}}}\r\n".encode() + text + b")\r\n"

    wire = b"".join([
        header(1) + b")\r\n", with_text(1, b"hi one"), header(2) + b")\r\n",  # A1 and A2 side by side
        with_text(2, b"hi two"), b"* 1 FETCH (UID 1 BODY[TEXT]<0> {6}\r\nhi one)\r\n",
        b"A2 OK done\r\n", b"A3 OK done\r\n", b"A1 OK done\r\n",
    ])
    src, file = replayed_imap(wire, [b"A1", b"A2", b"A3"], "INBOX")
    items = UidItems([1, 2])
    plain = src.start_fetch("INBOX", items)
    both = src.start_fetch("INBOX", items, snippets=True)
    snippet = src.start_fetch_snippets("INBOX", items[:1])
    first = plain()  # reads up to A1's completion: every answer of the three
    assert [(r.item.key, r.header, r.snippet) for r in first] == [
        (1, b"Subject: m1\r\n", None), (2, b"Subject: m2\r\n", None)]
    assert [(r.item.key, r.header, r.snippet) for r in both()] == [
        (1, b"Subject: m1\r\n", b"hi one"), (2, b"Subject: m2\r\n", b"hi two")]
    assert snippet() == {1: b"hi one"}
    assert not src.pipeline.answers and not src.pipeline.more and file.read() == b""


def test_a_colleague_reading_the_shared_inbox_during_a_fetch_costs_the_scan_nothing(
        tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone reads mail while the scan's FETCHes are in flight: the server tells the scan's
    session of the new flags, as FETCH answers of their own without a UID (Dovecot). They
    are not answers to the scan's FETCHes; they once sent every FETCH in flight again
    through imapclient's parser, several times slower."""
    dovecot.append([inbound(i) for i in range(30)])
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot))
    slow: list[int] = []
    real_slow = ImapSource._fetch

    def counted_slow(self: ImapSource, folder: str, uids: list[int], what: list[bytes]) -> Any:
        slow.append(len(uids))
        return real_slow(self, folder, uids, what)

    monkeypatch.setattr(ImapSource, "_fetch", counted_slow)
    with open_source(cfg.settings.mailboxes[0]) as src, \
            imapclient.IMAPClient("127.0.0.1", port=dovecot.port, ssl=False) as colleague:
        colleague.login(dovecot.user, dovecot.password)
        colleague.select_folder("INBOX")
        items = src.new_items("INBOX", 0)
        plain = [(r.header, r.snippet) for r in src.fetch("INBOX", items, snippets=True)]
        first = src.start_fetch("INBOX", items[:15], snippets=True)
        colleague.add_flags([2, 17], [b"\\Seen"])  # told to the scan's session at its next completion
        second = src.start_fetch("INBOX", items[15:], snippets=True)
        got = first() + second()
        colleague.remove_flags([2, 17], [b"\\Seen"])
        third = src.start_fetch("INBOX", items)
        assert [r.header for r in third()] == [h for h, _ in plain]
    assert [(r.header, r.snippet) for r in got] == plain
    assert slow == []


def test_answers_the_fast_reader_does_not_understand_are_read_again_by_imapclient_alike(
        tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FETCH answer of a shape the fast reader does not know sends every FETCH in flight
    through imapclient's parser instead: headers, INTERNALDATE and snippets come out the
    same, whether asked for together or apart."""
    from worker.mailbox import imap_answers, imap_pipeline

    dovecot.append([inbound(i, body=f"body of message {i}\n") for i in range(12)])
    dovecot.append([b"Subject: no body at all\r\nFrom: alice@acme.example\r\n\r\n"])
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot))
    with open_source(cfg.settings.mailboxes[0]) as src:
        items = src.new_items("INBOX", 0)

        def read() -> tuple[Any, ...]:
            together = src.start_fetch("INBOX", items, snippets=True)
            apart = src.start_fetch("INBOX", items)
            snippets = src.start_fetch_snippets("INBOX", items)
            return ([(r.item.key, r.header, r.internal_date, r.snippet) for r in together()],
                    [(r.item.key, r.header, r.internal_date, r.snippet) for r in apart()], snippets())

        fast = read()
        monkeypatch.setattr(imap_answers, "_FAST_ANSWER_RE", re.compile(b"(?!)"))  # nothing is read in one pass
        monkeypatch.setattr(imap_pipeline, "fetch_answers", lambda data: None)
        slow = read()
    assert slow == fast
    together, apart, snippets = fast
    assert len(together) == 13 and {k: s for k, _, _, s in together} == snippets
    assert snippets[items[12].key] == b"" and all(s is None for *_, s in apart)
    assert [(k, h, d) for k, h, d, _ in together] == [(k, h, d) for k, h, d, _ in apart]


def test_new_messages_are_listed_in_uid_spans_without_gaps_or_repeats(tmp_path: Path, dovecot: Dovecot,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A SEARCH answer over 1 MB (~140k UIDs) is refused by imaplib, so a big folder is listed a
    span of UIDs at a time; here the span is 7 so 30 messages take several."""
    from worker import defaults

    monkeypatch.setattr(defaults, "SEARCH_UID_SPAN", 7)
    dovecot.append([inbound(i) for i in range(30)])
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot))
    with open_source(cfg.settings.mailboxes[0]) as src:
        assert isinstance(src, ImapSource)
        asked: list[str] = []
        real_search = src.c.search

        def search(criteria: list[Any]) -> list[int]:
            asked.append(criteria[1])
            return real_search(criteria)

        monkeypatch.setattr(src.c, "search", search)
        assert [i.cursor for i in src.new_items("INBOX", 0)] == list(range(1, 31))
        assert len(asked) > 1 and asked[-1].endswith(":*")  # several spans, the last open-ended
        assert [i.cursor for i in src.new_items("INBOX", 12)] == list(range(13, 31))
        assert [i.cursor for i in src.new_items("INBOX", 29)] == [30]
        assert src.new_items("INBOX", 30) == []


def test_a_folders_new_uids_travel_whole_to_the_helper_process() -> None:
    """A big folder's list of new messages is pickled to the fetch helper: every UID, in order,
    up to the largest UID IMAP allows, and its slices are batches of the same kind."""
    import pickle

    from worker.mailbox.base import Item, UidItems

    items = pickle.loads(pickle.dumps(UidItems(range(1, 200_001))))
    assert len(items) == 200_000 and [i.cursor for i in items] == list(range(1, 200_001))
    assert items[0] == Item(1, 1) and items[-1] == Item(200_000, 200_000)
    batch = items[1000:6000]
    assert isinstance(batch, UidItems) and len(batch) == 5000
    assert [i.cursor for i in batch][:2] == [1001, 1002] and max(i.cursor for i in batch) == 6000
    again = pickle.loads(pickle.dumps([items[:3], items[3:5]]))
    assert again == [[Item(1, 1), Item(2, 2), Item(3, 3)], [Item(4, 4), Item(5, 5)]]
    assert UidItems([2**32 - 1])[0].key == 2**32 - 1  # the largest UID IMAP allows


def test_a_skipped_maildir_message_is_recorded_under_the_same_number_in_every_process() -> None:
    import subprocess
    import sys

    code = ("from worker.ingest.storing import skipped_uid; from worker.mailbox.base import Item; "
            "print(skipped_uid(Item('cur/1700000000.M1P2.host:2,S', 5)), skipped_uid(Item(42, 42)))")
    seen = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout for seed in ("1", "2", "3")}
    assert len(seen) == 1
    named, uid = map(int, seen.pop().split())
    assert uid == 42 and 0 <= named < 2**62


def test_the_helper_process_logs_as_the_worker_does(tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """A spawned process starts with logging unconfigured: its lines would be bare, and only
    warnings. It gets the worker's level and format (JSON lines in a container)."""
    import json
    import logging

    from worker import defaults, logs

    dovecot.deliver_files([inbound(i) for i in range(30)])
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", dovecot, batch_size=10))
    store, directory = prepare_store(cfg)
    monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", 1)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logs.current)
    try:
        logs.setup_logging("DEBUG", json_logs=True)
        assert run_scan(cfg, store, directory).stored == 30
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logs.current = saved[2]
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    started = [d for d in lines if d["logger"] == "worker.ingest.helper"]
    assert started and started[0]["level"] == "debug" and "fetch helper for mailbox" in started[0]["msg"]


def test_folders_with_non_ascii_names_are_read_in_either_mode(tmp_path: Path, dovecot: Dovecot, db_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Exchange names Sent after the user's language: "Éléments envoyés", "Gesendete Elemente".
    # IMAP spells such names in modified UTF-7; the config holds them as written.
    from worker import defaults

    sent = "Éléments envoyés"
    with imapclient.IMAPClient("127.0.0.1", port=dovecot.port, ssl=False) as c:
        c.login(dovecot.user, dovecot.password)
        c.create_folder(sent)
    dovecot.append([inbound(i) for i in range(6)])
    dovecot.append([build_message(sender="olivia@firm.example", to=["alice@acme.example"],
                                  subject=f"Re: Question {i}", date=T0 + timedelta(hours=1, minutes=i),
                                  message_id=f"<a{i}@firm.example>", in_reply_to=f"<q{i}@acme.example>")
                    for i in range(6)], folder=sent)
    for mode, threshold, url in (("thread", 10**9, db_url), ("process", 1, f"sqlite:///{tmp_path / 'p.db'}")):
        (tmp_path / mode).mkdir()
        cfg = load_config(write_config(tmp_path / mode, url, dovecot))
        cfg.settings.mailboxes[0].folders = ["INBOX", sent]
        cfg.settings.mailboxes[0].batch_size = 2  # several batches, so the helper process is used
        monkeypatch.setattr(defaults, "SCAN_PROCESS_MIN_MESSAGES", threshold)
        store, directory = prepare_store(cfg)
        rep = run_scan(cfg, store, directory)
        assert rep.ok, (mode, rep.errors)
        assert [(f.folder, f.stored) for f in rep.folders] == [("INBOX", 6), (sent, 6)], mode
        with store.session() as db:
            replied = db.execute(select(func.count()).select_from(Message).where(
                col(Message.direction) == "inbound", col(Message.reply_at).is_not(None))).scalar_one()
        assert replied == 6, mode
        again = run_scan(cfg, store, directory)
        assert [(f.folder, f.new) for f in again.folders] == [("INBOX", 0), (sent, 0)], mode


def test_a_reply_and_its_question_stored_at_once_from_two_mailboxes_share_a_thread(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker scans each mailbox on a thread of its own (and replicas scan different
    mailboxes): the firm's reply in one mailbox and the client's question in the other can be
    stored at the same moment. Here the reply's batch has read the threads it links to when
    the question's batch runs; the question must still end up in the reply's thread, answered."""
    from worker.store import threads

    question, reply = "<q-1@acme.example>", "<a-1@firm.example>"  # the reply's id sorts first
    roots = {}
    for name in ("shared", "olivia"):
        md = roots[name] = tmp_path / name
        for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
            (md / sub).mkdir(parents=True)
    (roots["shared"] / "new" / "1.host").write_bytes(build_message(
        sender="alice@acme.example", to=["shared@firm.example"], subject="Budget",
        date=datetime(2026, 11, 16, 9, 0, tzinfo=UTC), message_id=question))
    (roots["olivia"] / ".Sent" / "new" / "1.host").write_bytes(build_message(
        sender="olivia@firm.example", to=["alice@acme.example"], subject="Re: Budget",
        date=datetime(2026, 11, 16, 10, 0, tzinfo=UTC), message_id=reply, in_reply_to=question,
        references=[question]))
    path = write_config(tmp_path, db_url, maildir=roots["shared"],
                        extra=f'\n[[mailboxes]]\nname = "olivia"\nkind = "maildir"\npath = "{roots["olivia"]}"\n'
                              'folders = ["Sent"]\n')
    cfg = load_config(path)
    store, directory = prepare_store(cfg)

    replies_read, question_stored = threading.Event(), threading.Event()
    merge = threads._merge_many

    def reading_then_waiting(conn: Any, moves: dict[int, int], episodes: bool = True) -> None:
        # Called by plan_threads between reading thread_link and writing: hold the reply's
        # batch here until the question's batch is stored (or 3 s, if storing waits for us).
        if threading.current_thread().name == "olivia":
            replies_read.set()
            question_stored.wait(3)
        merge(conn, moves, episodes)

    monkeypatch.setattr(threads, "_merge_many", reading_then_waiting)
    reports: dict[str, Any] = {}

    def scan(name: str) -> None:
        if name == "shared":
            assert replies_read.wait(30)
        reports[name] = run_scan(cfg, store, directory, mailboxes=[name])
        if name == "shared":
            question_stored.set()

    workers = [threading.Thread(target=scan, args=(n,), name=n) for n in ("olivia", "shared")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(r.ok and r.stored == 1 for r in reports.values()), reports
    q, r = _one(store, question), _one(store, reply)
    assert q.thread_id == r.thread_id is not None
    assert q.reply_at == r.sent_at
    with store.session() as db:
        links: dict[str, int] = dict(db.execute(select(ThreadLink.mid, ThreadLink.thread_id)).all())  # type: ignore[call-overload]
    assert links == {question: q.thread_id, reply: q.thread_id}
