"""Hostile mail: a corpus of real-world oddities and property-based fuzzing. Nothing raises
out of ingest, everything is stored as well as it can be or skipped with a reason and a count,
and what is stored stays bounded."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from conftest import write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Dovecot
from sqlalchemy import func, select
from sqlmodel import col
from typer.testing import CliRunner

from worker import defaults
from worker.cli.main import app
from worker.config import load_config
from worker.ingest.acknowledgement import is_acknowledgement
from worker.ingest.body import snippet_text
from worker.ingest.classify import Directory, automated_reason, classify
from worker.ingest.fields import normalise_subject
from worker.ingest.headers import ParsedMessage, parse_header_block
from worker.ingest.run import prepare_store, run_scan
from worker.store.models import Message, SkippedMessage

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.eml"))
NOW = datetime(2026, 11, 20, 12, 0)
IDATE = datetime(2026, 11, 16, 10, 0, tzinfo=UTC)
runner = CliRunner()


def _check_bounded(store) -> None:  # type: ignore[no-untyped-def]
    with store.session() as db:
        for m in db.execute(select(Message)).scalars():
            assert len(m.subject) <= 500 and len(m.message_id) <= 1000
            assert len(m.to_addrs.split(",")) <= defaults.MAX_RECIPIENTS
            assert len(m.references) <= 20000 and "\x00" not in m.subject
            assert m.sent_at <= NOW.replace(year=2027)


def _all_text_is_storable(pm: ParsedMessage) -> None:
    """No surrogate escape (raw 8-bit bytes) in any field: a database refuses them."""
    for value in [pm.message_id, pm.subject, pm.from_addr, pm.from_name, pm.in_reply_to or "", *pm.references,
                  *pm.to, *pm.cc, *pm.auto_headers.values(), *pm.problems]:
        value.encode("utf-8")


EIGHT_BIT = [
    b"Message-ID: <fz\xff\xfe123@acme.example>\r\nFrom: alice@acme.example\r\nTo: shared@firm.example\r\n"
    b"Subject: Budget\r\nDate: Mon, 16 Nov 2026 09:00:00 +0000\r\n\r\nHello\r\n",
    b"Message-ID: <latin1@acme.example>\r\nFrom: J\xe9r\xf4me <jerome@acme.example>\r\nTo: shared@firm.example\r\n"
    b"Subject: R\xe9sum\xe9 \xe0 signer\r\nDate: Mon, 16 Nov 2026 09:01:00 +0000\r\n\r\nBonjour\r\n",
    b"Message-ID: <utf8@acme.example>\r\nFrom: =?utf-8?q?J=C3=BCrgen?= <j\xc3\xbcrgen@acme.example>\r\n"
    b"To: shared@firm.example\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= \xe9t\xe9 \xff\r\n"
    b"Date: Mon, 16 Nov 2026 09:02:00 +0000\r\n\r\nHallo\r\n",
    b"Message-ID: <refs@acme.example>\r\nIn-Reply-To: <\xfe\xff@firm.example>\r\nReferences: <a\x80@x> <b@x>\r\n"
    b"From: alice@acme.example\r\nTo: shared@firm.example\r\nSubject: Re: Budget\r\n"
    b"Date: Mon, 16 Nov 2026 09:03:00 +0000\r\nList-Id: <\xe9quipe.acme.example>\r\n\r\nHi\r\n",
]


def test_raw_8bit_bytes_in_any_header_are_stored_not_skipped(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    """8-bit bytes in a Message-ID, an address, a subject or References: every message is
    stored, as UTF-8 where the bytes are UTF-8 and as Latin-1 where not; a rescan finds them."""
    dovecot.deliver_files(EIGHT_BIT)
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    rep = run_scan(cfg, store, directory)
    assert rep.ok, rep.errors
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert inbox.stored == len(EIGHT_BIT) and inbox.skipped == 0
    with store.session() as db:
        got = {m.message_id: m for m in db.execute(select(Message)).scalars()}
    assert got["<fzÿþ123@acme.example>"].from_addr == "alice@acme.example"
    assert got["<latin1@acme.example>"].subject == "Résumé à signer"
    assert got["<latin1@acme.example>"].from_name == "Jérôme"
    assert got["<utf8@acme.example>"].subject == "Grüße été ÿ" and got["<utf8@acme.example>"].from_name == "Jürgen"
    assert got["<refs@acme.example>"].automated
    again = run_scan(cfg, store, directory)
    assert next(f for f in again.folders if f.folder == "INBOX").new == 0


def test_the_corpus_through_dovecot_is_stored_or_skipped_never_crashes(tmp_path: Path, dovecot: Dovecot,
                                                                        db_url: str) -> None:
    dovecot.deliver_files([p.read_bytes() for p in CORPUS])
    cfg = load_config(write_config(tmp_path, db_url, dovecot, batch_size=7))
    store, directory = prepare_store(cfg)
    rep = run_scan(cfg, store, directory)
    assert rep.ok, rep.errors
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert inbox.new == len(CORPUS)
    # Every message is either stored, a duplicate of one stored, or skipped with a reason.
    assert inbox.stored + inbox.duplicates + inbox.skipped == len(CORPUS)
    with store.session() as db:
        skipped = db.execute(select(SkippedMessage)).scalars().all()
        ids = set(db.execute(select(col(Message.message_id))).scalars())
    assert all(s.reason for s in skipped) and len(skipped) == inbox.skipped
    assert {"<dup@acme.example>", "<one@acme>", "<enc@acme>", "<huge@acme>", "<many@acme>", "<nul@acme>",
            "<fold@acme>", "<self@acme>", "<cyc-a@acme>", "<cyc-b@acme>"} <= ids
    _check_bounded(store)
    # Evaluation over the hostile store works too (loops and self-references included).
    r = runner.invoke(app, ["--config", str(tmp_path / "carewatch.toml"), "status", "--json", "--now",
                            "2026-11-20T12:00:00Z"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["messages_considered"] >= 5
    # And a second scan neither duplicates nor re-skips.
    again = run_scan(cfg, store, directory)
    assert all(f.stored == 0 and f.skipped == 0 for f in again.folders)


def test_the_corpus_through_maildir(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (md / sub).mkdir(parents=True)
    for p in CORPUS:
        (md / "cur" / (p.stem + ":2,")).write_bytes(p.read_bytes())
    cfg = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'cw.db'}", maildir=md))
    store, directory = prepare_store(cfg)
    rep = run_scan(cfg, store, directory)
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert rep.ok and inbox.stored + inbox.duplicates + inbox.skipped == len(CORPUS)
    _check_bounded(store)
    # The same corpus gives the same stored set through either source.
    with store.session() as db:
        assert db.execute(select(func.count()).select_from(Message)).scalar_one() == inbox.stored


header_names = st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
                                "Auto-Submitted", "Precedence", "List-Id", "Content-Type", "Return-Path", "X-Autoreply",
                                "Sender", "X-Carewatch-Kind", "Garbage Name", ""])
header_values = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.builds(lambda a, b: f"=?{a}?{b}?=", st.sampled_from(["utf-8", "x-bogus", "iso-8859-1", ""]),
              st.text(max_size=40)),
    st.lists(st.emails(), max_size=20).map(", ".join),
    st.lists(st.text(alphabet="<>@ ,;:\"()\\abc", max_size=10), max_size=30).map(" ".join),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(header_names, header_values), max_size=25), st.booleans())
def test_fuzzed_headers_never_raise_and_stay_bounded(fields: list[tuple[str, str]], crlf: bool) -> None:
    sep = "\r\n" if crlf else "\n"
    raw = (sep.join(f"{k}: {v}" for k, v in fields) + sep + sep).encode("utf-8", "surrogateescape")
    pm = parse_header_block(raw, IDATE, NOW)
    _all_text_is_storable(pm)
    assert pm.message_id.startswith("<") and len(pm.subject) <= 500
    assert len(pm.to) <= defaults.MAX_RECIPIENTS and pm.sent_at is not None
    d = Directory(firm_domains=frozenset({"firm.example"}))
    classify(pm, d)
    automated_reason(pm)
    normalise_subject(pm.subject)


@settings(deadline=None)
@given(st.binary(max_size=4000))
def test_fuzzed_bytes_never_raise(raw: bytes) -> None:
    pm = parse_header_block(raw, IDATE, NOW)
    _all_text_is_storable(pm)
    assert pm.message_id
    snippet_text(raw, "multipart/alternative; boundary=\"x\"", "base64")
    snippet_text(raw, "text/plain; charset=x-nope", "quoted-printable")


@settings(deadline=None)
@given(st.text(max_size=200), st.text(max_size=600), st.sampled_from(["?", "please", "Could you", "but", "bitte"]),
       st.booleans())
def test_a_question_or_request_typed_anywhere_is_never_taken_for_thanks(subject: str, body: str, marker: str,
                                                                        complete: bool) -> None:
    """Whatever else a message holds (fuzzed text, quotes, signatures), a line the sender typed
    with a question or a request makes it a message that waits."""
    assert not is_acknowledgement(subject, f"Thanks!\n{marker}\n{body}", complete)
    assert not is_acknowledgement(subject, f"Thanks!\n> quoted\n{marker}\n> quoted\n{body}", complete)


def test_names_and_subjects_from_mail_reach_the_terminal_as_text_not_markup(tmp_path: Path) -> None:
    # A discovered contact's display name comes from a From header. Rich reads "[...]" as
    # markup: "[/x]" made `carewatch status` crash (MarkupError) and "[bold]" vanished.
    from worker.demo import DEFAULT_NOW, generate

    firm = generate(tmp_path / "demo")
    client = next(c for c in firm.clients if c.situation == "healthy")
    name = "Eve [/x] [bold]Mallory[/bold]"
    raw = (f'From: "{name}" <eve.mallory@{client.domain}>\r\nTo: clients@harbourline.example\r\n'
           f"Subject: [URGENT] [/i] invoice\r\nDate: Fri, 13 Nov 2026 10:00:00 +0000\r\n"
           f"Message-ID: <eve-1@{client.domain}>\r\n\r\nPlease call me.\r\n").encode()
    (firm.maildir / "new" / "1763028000.eve.demo").write_bytes(raw)
    cfg = str(firm.config)
    r = runner.invoke(app, ["--config", cfg, "scan"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--config", cfg, "status", "--client", client.name, "--now",
                            DEFAULT_NOW.isoformat()], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert name in r.output and "(discovered)" in r.output
    assert "[dim]" not in r.output  # Carewatch's own markup still renders
    # Her unanswered mail becomes an alert, whose detail names her: listed as written too.
    r = runner.invoke(app, ["--config", cfg, "check", "--now", DEFAULT_NOW.isoformat()], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--config", cfg, "alerts", "list"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert "Eve [/x] [bold]Mallory[/bold]" in " ".join(r.output.split()), r.output
