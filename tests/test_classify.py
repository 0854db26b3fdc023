"""Classification: automated-mail rules with realistic header sets, acknowledgements, bad mail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import write_config
from servers import Dovecot
from sqlalchemy import select

from worker.config import load_config
from worker.ingest.acknowledgement import is_acknowledgement
from worker.ingest.body import snippet_text
from worker.ingest.classify import automated_reason
from worker.ingest.fields import normalise_subject
from worker.ingest.headers import parse_header_block
from worker.ingest.run import prepare_store, run_scan
from worker.store.models import Message, SkippedMessage
from worker.synth import build_message

NOW = datetime(2026, 11, 20, 12, 0)
IDATE = datetime(2026, 11, 20, 11, 0, tzinfo=UTC)


def hdr(text: str) -> bytes:
    return text.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n"


# Real-world header sets (trimmed to what we fetch), one per family of automated mail.
AUTOMATED = {
    "exchange out-of-office": """
From: Alice Principal <alice@acme.example>
To: shared@firm.example
Subject: Automatic reply: Budget 2027
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <oof1@acme.example>
Auto-Submitted: auto-replied
X-MS-Exchange-Inbox-Rules-Loop: alice@acme.example
X-Auto-Response-Suppress: All
""",
    "exchange oof without auto-submitted": """
From: Alice Principal <alice@acme.example>
To: shared@firm.example
Subject: Automatic reply: Budget 2027
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <oof2@acme.example>
X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent
""",
    "gmail vacation responder": """
From: Bob User <bob@acme.example>
To: shared@firm.example
Subject: Out of office
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <CAGmail@mail.gmail.com>
Auto-Submitted: auto-replied
Precedence: bulk
""",
    "zimbra out-of-office": """
From: bob@acme.example
To: shared@firm.example
Subject: Abwesenheitsnotiz: Vertrag
Date: Fri, 20 Nov 2026 10:00:00 +0100
Message-ID: <zimbra-oof@acme.example>
X-Autoreply: yes
""",
    "french out-of-office by subject only": """
From: bob@acme.example
To: shared@firm.example
Subject: Réponse automatique : Vertrag
Date: Fri, 20 Nov 2026 10:00:00 +0100
Message-ID: <fr-oof@acme.example>
""",
    "postfix bounce": """
From: MAILER-DAEMON@mx.acme.example (Mail Delivery System)
To: shared@firm.example
Subject: Undelivered Mail Returned to Sender
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <bounce@mx.acme.example>
Auto-Submitted: auto-replied
Content-Type: multipart/report; report-type=delivery-status; boundary="x"
""",
    "exchange NDR with null return-path": """
From: Microsoft Outlook <postmaster@acme.example>
To: shared@firm.example
Subject: Undeliverable: Budget 2027
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <ndr@acme.example>
Return-Path: <>
Content-Type: multipart/report; report-type=delivery-status; boundary="y"
""",
    "mailing list": """
From: Acme Newsletter <news@acme.example>
To: shared@firm.example
Subject: November news from Acme
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <news@acme.example>
List-Id: Acme customers <customers.acme.example>
List-Unsubscribe: <mailto:unsubscribe@acme.example>
""",
    "bulk marketing with list-unsubscribe only": """
From: Acme Events <events@acme.example>
To: shared@firm.example
Subject: Join us
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <events@acme.example>
List-Unsubscribe: <https://acme.example/u>
""",
    "noreply system notification": """
From: Acme Portal <no-reply@acme.example>
To: shared@firm.example
Subject: Your invoice is ready
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <portal@acme.example>
""",
}

HUMAN = {
    "plain question": """
From: Alice Principal <alice@acme.example>
To: shared@firm.example
Subject: Budget 2027
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <human1@acme.example>
""",
    "auto-submitted no is human": """
From: Alice Principal <alice@acme.example>
To: shared@firm.example
Subject: Budget 2027
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <human2@acme.example>
Auto-Submitted: no
""",
    "outlook to a group (suppress is only a request)": """
From: Alice Principal <alice@acme.example>
To: shared@firm.example
Subject: Budget 2027
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <human3@acme.example>
X-Auto-Response-Suppress: All
""",
}


@pytest.mark.parametrize("name", sorted(AUTOMATED))
def test_automated_mail_is_recognised(name: str) -> None:
    pm = parse_header_block(hdr(AUTOMATED[name]), IDATE, NOW)
    assert automated_reason(pm) is not None, name


@pytest.mark.parametrize("name", sorted(HUMAN))
def test_human_mail_is_not_taken_for_automated(name: str) -> None:
    pm = parse_header_block(hdr(HUMAN[name]), IDATE, NOW)
    assert automated_reason(pm) is None, name


#: Subjects with no automation header to go by: what the subject alone says.
SUBJECT_ONLY = {
    # A person asking, in words an out-of-office also uses: the client waits.
    "Absence: who covers my account while Jane is away?": None,
    "On leave from Monday, who should I contact?": None,
    "Holiday notice - please confirm the office closure dates?": None,
    "Out of office: can we move our call?": None,
    "Abwesenheit: Wer vertritt Frau Müller?": None,
    "Assenza: chi mi risponde?": None,
    "¿Ausencia: quién me atiende mañana": None,
    "不在通知：誰が担当ですか？": None,
    # The words only a machine writes count even when the echoed subject asks.
    "Automatic reply: Can you send the figures?": "out-of-office subject",
    "Out of Office AutoReply: Invoice 44?": "out-of-office subject",
    "Réponse automatique : Budget 2027 ?": "out-of-office subject",
    "自動返信：予算は？": "out-of-office subject",
    "Undeliverable: Can you send the figures?": "out-of-office subject",
    # Without a question, the notice words count as before.
    "Out of Office: Budget 2027": "out-of-office subject",
    "Absence du bureau : Budget 2027": "out-of-office subject",
    "OOO until 3 December": "out-of-office subject",
}


@pytest.mark.parametrize("subject", sorted(SUBJECT_ONLY))
def test_a_subject_alone_marks_an_auto_reply_only_where_a_person_would_not_write_it(subject: str) -> None:
    pm = parse_header_block(hdr(f"""
From: Alice Principal <alice@acme.example>
To: shared@firm.example
Subject: {subject}
Date: Fri, 20 Nov 2026 10:00:00 +0000
Message-ID: <s@acme.example>
"""), IDATE, NOW)
    assert automated_reason(pm) == SUBJECT_ONLY[subject], subject


@pytest.mark.parametrize(
    "subject,body,ack",
    [
        ("Re: Budget", "Thanks!", True),
        ("Re: Budget", "Hi Olivia,\n\nGot it, thank you.\n\nBest,\nAlice\n\nOn Mon, Olivia wrote:\n> the budget", True),
        ("Re: Budget", "Perfect, many thanks\n\n-----Original Message-----\nFrom: x", True),
        ("Thanks!", "", True),
        ("Re: Budget", "Many thanks!\r\n\r\nEmma\r\n", True),
        ("Re: Budget", "Hi Olivia,\n\nCould you send the figures?\n\nMany thanks\nEmma", False),
        ("Re: Budget", "Thanks, but could you also send the 2025 figures?", False),
        (
            "Re: Budget",
            "Thanks. I have looked at the numbers and I think we need to discuss the "
            "allocation for the second half of the year before the board meeting.",
            False,
        ),
        ("Re: Budget", "When can we meet", False),
        ("Budget", "", False),
    ],
)
def test_acknowledgements_are_short_thanks_that_ask_nothing(subject: str, body: str, ack: bool) -> None:
    assert is_acknowledgement(subject, body) is ack


def test_snippet_text_finds_the_first_text_part_in_multipart_and_encoded_bodies() -> None:
    raw = build_message(
        sender="a@acme.example", to=["x@firm.example"], subject="s", date=NOW, body="Thanks so much!", html=True
    )
    ctype = "multipart/alternative; " + raw.split(b"multipart/alternative; ")[1].split(b"\r\n")[0].decode()
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert snippet_text(body, ctype).strip().startswith("Thanks so much!")
    qp = b"Danke sch=C3=B6n f=C3=BCr die Info"
    assert "schön" in snippet_text(qp, "text/plain; charset=utf-8", "quoted-printable")
    b64 = b"VGhhbmtzIGEgbG90IQ==\r\nVGhp"  # a partial tail, as a byte-range fetch cuts it
    assert snippet_text(b64, "text/plain", "base64") == "Thanks a lot!"


def test_subjects_normalise_across_languages_and_tags() -> None:
    for s in (
        "Re: Budget 2027",
        "RE[2]: Budget 2027",
        "AW: WG: Budget 2027",
        "SV: Budget 2027",
        "[EXT] Re: Budget 2027",
        "Fwd: Re:  budget 2027",
        "Re: [External] budget 2027",
    ):
        assert normalise_subject(s) == "budget 2027", s


MALFORMED = [
    # (description, raw headers, what must hold)
    (
        "garbage date",
        b"From: a@acme.example\r\nTo: s@firm.example\r\nSubject: x\r\nDate: 31 Feb 2026 99:99\r\n"
        b"Message-ID: <bad-date@acme>\r\n\r\n",
    ),
    (
        "date without zone",
        b"From: a@acme.example\r\nSubject: x\r\nDate: Fri, 20 Nov 2026 10:00:00 CEST\r\n"
        b"Message-ID: <nozone@acme>\r\n\r\n",
    ),
    (
        "unknown charset",
        b"From: =?x-unknown-cs?Q?Al=E9?= <a@acme.example>\r\nSubject: =?utf-8?B?!!!notbase64?=\r\n"
        b"Message-ID: <cs@acme>\r\n\r\n",
    ),
    (
        "8-bit latin-1 header",
        b"From: Andr\xe9 <andre@acme.example>\r\nSubject: Caf\xe9 cr\xe8me\r\nMessage-ID: <latin1@acme>\r\n\r\n",
    ),
    (
        "garbage addresses",
        b"From: <<<@@@>>>\r\nTo: ,,,;;; undisclosed-recipients:;\r\nSubject: x\r\nMessage-ID: <addr@acme>\r\n\r\n",
    ),
    ("no message-id", b"From: a@acme.example\r\nSubject: no id\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n\r\n"),
    (
        "far future date",
        b"From: a@acme.example\r\nSubject: x\r\nDate: Fri, 20 Nov 2099 10:00:00 +0000\r\n"
        b"Message-ID: <future@acme>\r\n\r\n",
    ),
    ("NUL bytes", b"From: a@acme.example\r\nSubject: nul\x00here\r\nMessage-ID: <nul@acme>\r\n\r\n"),
]


@pytest.mark.parametrize("desc,raw", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_headers_are_stored_as_well_as_possible(desc: str, raw: bytes) -> None:
    pm = parse_header_block(raw, IDATE, NOW)
    assert pm.message_id.startswith("<") and pm.message_id.endswith(">")
    assert pm.sent_at <= NOW + timedelta(days=1)
    assert "\x00" not in pm.subject
    if desc in ("garbage date", "date without zone", "far future date"):
        assert pm.sent_at == IDATE.replace(tzinfo=None)
    if desc == "8-bit latin-1 header":
        assert pm.subject == "Café crème" and pm.from_name == "André"
    if desc == "no message-id":
        again = parse_header_block(raw, IDATE, NOW)
        assert pm.synthetic_id and again.message_id == pm.message_id


DATES = [
    ("Mon, 2 Nov 2026 09:00:00 +0100", datetime(2026, 11, 2, 8, 0)),
    ("Mon, 02 Nov 2026 09:00:00 +0100 (CET)", datetime(2026, 11, 2, 8, 0)),
    ("2 nov 2026 09:00 -0530", datetime(2026, 11, 2, 14, 30)),  # no weekday, no seconds, lower case
    ("  Sun, 29 Mar 2026 01:30:00 +0000  ", datetime(2026, 3, 29, 1, 30)),
    ("Mon, 2 Nov 2026 09:00:00 -0000", None),  # "-0000": the zone is unknown (RFC 5322)
    ("Mon, 2 Nov 2026 09:00:00 CEST", None),  # a zone name nobody can resolve
    ("Mon, 2 Nov 2026 09:00:00 GMT", datetime(2026, 11, 2, 9, 0)),  # stdlib knows the old names
    ("Mon, 2 Nov 26 09:00:00 +0000", datetime(2026, 11, 2, 9, 0)),  # two-digit year
    ("Tue, 31 Feb 2026 09:00:00 +0000", None),  # no such day
    ("Mon, 2 Foo 2026 09:00:00 +0000", None),
    ("yesterday", None),
]


@pytest.mark.parametrize("value,expected", DATES, ids=[d[0].strip() for d in DATES])
def test_date_headers_parse_to_utc_the_same_on_the_fast_path_and_the_stdlib(value: str,
                                                                             expected: datetime | None) -> None:
    from email.utils import parsedate_to_datetime

    from worker.ingest.fields import parse_date

    assert parse_date(value) == expected
    try:  # whatever our own regex accepts must agree with the stdlib's reading
        std = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        std = None
    if std is not None and std.tzinfo is not None:
        assert parse_date(value) == std.astimezone(UTC).replace(tzinfo=None)


def test_acknowledgements_and_automated_mail_through_dovecot(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    t = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
    dovecot.append(
        [
            build_message(
                sender="alice@acme.example",
                to=["shared@firm.example"],
                subject="Re: Budget",
                date=t,
                body="Hi,\n\nThanks, got it!\n\nAlice",
                message_id="<ack@acme>",
            ),
            build_message(
                sender="alice@acme.example",
                to=["shared@firm.example"],
                subject="Re: Budget",
                date=t,
                body="Thanks! Quick one: can we move the meeting?",
                message_id="<q@acme>",
                html=True,
            ),
            build_message(
                sender="bob@acme.example",
                to=["shared@firm.example"],
                subject="Automatic reply: Budget",
                date=t,
                message_id="<oof@acme>",
                extra_headers={"Auto-Submitted": "auto-replied"},
            ),
        ]
    )
    # A message that cannot be parsed at all (an empty header block) is skipped and counted.
    dovecot.append([b"\r\n\r\nno headers at all"])
    cfg = load_config(write_config(tmp_path, db_url, dovecot))
    store, directory = prepare_store(cfg)
    rep = run_scan(cfg, store, directory)
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert inbox.stored == 3 and inbox.skipped == 1 and inbox.automated == 1
    with store.session() as db:
        rows = {m.message_id: m for m in db.execute(select(Message)).scalars()}
        skipped = db.execute(select(SkippedMessage)).scalars().all()
    assert rows["<ack@acme>"].acknowledgement and not rows["<q@acme>"].acknowledgement
    assert rows["<oof@acme>"].automated and rows["<oof@acme>"].automated_reason.startswith("Auto-Submitted")
    assert len(skipped) == 1 and "empty header block" in skipped[0].reason


BLOCKS = [
    ("plain", b"From: a@acme.example\r\nTo: s@firm.example\r\nSubject: Hello\r\n\r\n"),
    ("bare LF", b"From: a@acme.example\nSubject: Hello\n\n"),
    ("folded", b"Subject: a long\r\n  subject\r\n\tthat folds\r\nTo: x@firm.example,\r\n y@firm.example\r\n\r\n"),
    ("space before colon", b"Subject : spaced\r\nFrom:\ta@acme.example\r\n\r\n"),
    ("repeated field", b"To: a@firm.example\r\nTo: b@firm.example\r\nReceived: x\r\n\r\n"),
    ("empty value", b"Subject:\r\nFrom: a@acme.example\r\n\r\n"),
    ("leading blank lines", b"\r\n\r\nFrom: a@acme.example\r\n\r\n"),
    ("body after the block", b"From: a@acme.example\r\n\r\nNot: a header\r\n"),
    ("a line without a colon", b"From: a@acme.example\r\ngarbage line\r\nSubject: x\r\n\r\n"),
    ("a name with a space", b"Bad Name: x\r\nSubject: y\r\n\r\n"),
    ("a colon first", b": no name\r\nSubject: y\r\n\r\n"),
    ("a continuation first", b"  orphan\r\nSubject: y\r\n\r\n"),
    ("a stray CR line", b"From: a@acme.example\r\n\r\r\nSubject: hidden\r\n\r\n"),
]


@pytest.mark.parametrize("desc,raw", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_header_blocks_split_the_same_on_the_fast_path_and_line_by_line(desc: str, raw: bytes) -> None:
    """The one-regex split must give exactly what the careful line-by-line split gives (which
    it falls back to), and agree with the stdlib on well-formed blocks."""
    from email import message_from_bytes, policy

    from worker.ingest.headers import _split_headers_by_line, split_headers

    fast_problems: list[str] = []
    slow_problems: list[str] = []
    text = raw.decode("ascii", "surrogateescape").replace("\r\n", "\n").lstrip("\n")
    fast = split_headers(raw, fast_problems)
    assert fast == _split_headers_by_line(text, slow_problems)
    assert fast_problems == slow_problems
    if desc in ("a line without a colon", "a name with a space", "a colon first"):
        assert fast_problems == ["1 malformed header line(s) ignored"]
        assert fast["subject"] == ["x" if desc == "a line without a colon" else "y"]
    elif desc == "a continuation first":  # continues nothing: dropped
        assert fast == {"subject": ["y"]} and not fast_problems
    elif desc == "space before colon":  # the stdlib would name the field "Subject "
        assert fast == {"subject": ["spaced"], "from": ["a@acme.example"]} and not fast_problems
    else:
        assert not fast_problems
        std = message_from_bytes(raw.lstrip(b"\r\n"), policy=policy.compat32)
        for name, values in fast.items():
            got = [" ".join(v.split()) for v in std.get_all(name, [])]
            assert got == [" ".join(v.split()) for v in values], name


def test_stored_mail_is_judged_again_when_the_sender_and_subject_rules_change(tmp_path: Path) -> None:
    """Mail stored under older rules: what the stored sender and subject allow is judged again at
    the next start, once; a person's question taken for an auto-reply waits again."""
    import sqlite3

    from conftest import maildir_config

    from worker.ingest.classify import AUTOMATION_RULES_VERSION

    person = build_message(sender=("Gina", "gina@globex.example"), to=["shared@firm.example"],
                           subject="Out of office cover over Christmas", date=NOW, message_id="<g@globex.example>")
    asking = build_message(sender=("Gina", "gina@globex.example"), to=["shared@firm.example"],
                           subject="Absence: who covers for Jane?", date=NOW, message_id="<q@globex.example>")
    news = build_message(sender=("Acme", "enews@acme.example"), to=["shared@firm.example"],
                         subject="November news", date=NOW, message_id="<n@acme.example>")
    listed = build_message(sender=("Acme", "alice@acme.example"), to=["shared@firm.example"], subject="Notes",
                           date=NOW, message_id="<l@acme.example>", extra_headers={"List-Id": "<x.acme.example>"})
    cfg = maildir_config(tmp_path, [person, asking, news, listed])
    cfg_obj = load_config(cfg)
    store, directory = prepare_store(cfg_obj)
    run_scan(cfg_obj, store, directory)
    store.dispose()
    db_path = tmp_path / "cw.db"
    with sqlite3.connect(db_path) as db:  # as an older version of the rules left them
        db.execute("UPDATE message SET automated = 1, automated_reason = 'out-of-office subject' "
                   "WHERE message_id IN ('<g@globex.example>', '<q@globex.example>')")
        db.execute("UPDATE message SET automated = 0, automated_reason = NULL WHERE message_id = '<n@acme.example>'")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'automation_rules'")
    store, _ = prepare_store(cfg_obj)
    store.dispose()
    with sqlite3.connect(db_path) as db:
        got = dict(db.execute("SELECT message_id, automated_reason FROM message").fetchall())
        version = db.execute("SELECT value FROM meta WHERE key = 'automation_rules'").fetchone()[0]
    assert got == {"<g@globex.example>": None, "<q@globex.example>": None, "<n@acme.example>": "automated sender",
                   "<l@acme.example>": "list-id"}
    assert version == AUTOMATION_RULES_VERSION
