"""SQLModel tables. All datetimes are stored as naive UTC (SQLite keeps no zone)."""

from __future__ import annotations

from typing import Any

from pydantic import NaiveDatetime
from sqlalchemy import BigInteger, Column, Index, Table, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped
from sqlmodel import Field, SQLModel, col


def table_of(model: type[SQLModel]) -> Table:
    """A table model's Table, for Core statements. SQLModel sets `__table__` when the class is
    made, but its type stubs do not declare it."""
    return model.__table__  # type: ignore[attr-defined]


def columns(*attrs: Any) -> list[Mapped[Any]]:
    """Model attributes as the column expressions they are at class level, for `select(*...)`
    of many columns (sqlmodel's `col()`, one at a time, is for the rest)."""
    return [col(a) for a in attrs]


class Client(SQLModel, table=True):
    __tablename__ = "client"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=300)
    internal: bool = False
    #: Space-separated domains (external clients only).
    domains: str = ""
    owner_email: str | None = Field(default=None, max_length=320)
    backup_email: str | None = Field(default=None, max_length=320)
    #: False once the client was removed from the config (history is kept).
    active: bool = True


class Person(SQLModel, table=True):
    """An owner (account manager) or partner of the firm."""

    __tablename__ = "person"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(index=True, unique=True, max_length=320)
    name: str = Field(max_length=300)
    is_owner: bool = False
    is_partner: bool = False
    backup_email: str | None = Field(default=None, max_length=320)
    active: bool = True


class Contact(SQLModel, table=True):
    __tablename__ = "contact"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(index=True, unique=True, max_length=320)
    name: str = Field(default="", max_length=300)
    role: str = Field(default="user", max_length=50)
    client_id: int = Field(foreign_key="client.id", index=True)
    #: Seen writing from (or written to at) a client domain but not listed in the config.
    discovered: bool = False
    active: bool = True
    first_seen_at: NaiveDatetime | None = None


class FolderState(SQLModel, table=True):
    """Where the incremental scan of one folder stands."""

    __tablename__ = "folder_state"
    __table_args__ = (UniqueConstraint("mailbox", "folder"),)
    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=200)
    folder: str = Field(max_length=500)
    uidvalidity: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: Highest UID committed (IMAP) or file-time cursor in nanoseconds (Maildir).
    last_uid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    last_scan_at: NaiveDatetime | None = None
    last_ok_at: NaiveDatetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    messages_seen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    messages_skipped: int = 0


class Message(SQLModel, table=True):
    """One email, headers only: bodies are never stored."""

    __tablename__ = "message"
    __table_args__ = (
        Index("ix_message_client_sent", "client_id", "sent_at"),
        Index("ix_message_thread_dir_sent", "thread_id", "direction", "sent_at"),
        Index("ix_message_dir_reply", "direction", "reply_at"),
        # Only the replies known by their subject alone (a few in a hundred): a message stored
        # after such a reply finds, in one probe per subject, the replies it may be the parent of.
        Index("ix_message_subject_reply", "norm_subject", "client_id", "sent_at",
              sqlite_where=text("subject_reply"), postgresql_where=text("subject_reply")),
    )
    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True, max_length=1000)
    synthetic_id: bool = False
    #: The conversation, joined at ingest from References/In-Reply-To (and a subject fallback);
    #: threads merge when a late parent links them. See worker/store/threads.py.
    thread_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    #: Inbound only: when the first (non-automated) outbound message after it in its thread was
    #: sent, whenever that is; kept current at ingest (see store/threads.py). Evaluation at a
    #: moment `now` treats a later reply as none yet, so this does not depend on `now`.
    reply_at: NaiveDatetime | None = None
    in_reply_to: str | None = Field(default=None, max_length=1000)
    #: Space-separated Message-IDs, oldest first.
    references: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    norm_subject: str = Field(default="", max_length=300)
    #: A reply with neither In-Reply-To nor References ("Re: ..." only): threading joins it to
    #: the latest earlier message with its subject at its client, whichever is stored first.
    subject_reply: bool = False
    from_addr: str = Field(default="", max_length=320)
    from_name: str = Field(default="", max_length=300)
    #: Comma-separated addresses.
    to_addrs: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    cc_addrs: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    date_header: NaiveDatetime | None = None
    internal_date: NaiveDatetime | None = None
    #: The sending time used everywhere: Date when plausible, else INTERNALDATE.
    sent_at: NaiveDatetime
    direction: str = Field(max_length=10)
    automated: bool = False
    automated_reason: str | None = Field(default=None, max_length=100)
    acknowledgement: bool = False
    #: Why the body peek was or was not taken for an acknowledgement (`carewatch explain`).
    ack_reason: str | None = Field(default=None, max_length=200)
    firm_in_to: bool = False
    firm_in_cc: bool = False
    client_id: int | None = Field(default=None, foreign_key="client.id")
    #: Comma-separated contact ids (inbound: the sender; outbound: the recipients).
    contact_ids: str = Field(default="", max_length=2000)
    mailbox: str = Field(default="", max_length=200)
    folder: str = Field(default="", max_length=500)
    uid: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    ingested_at: NaiveDatetime
    problems: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ThreadLink(SQLModel, table=True):
    """Every Message-ID seen, as a message or as a reference, and the thread it belongs to: the
    union-find of threading, kept in the store so evaluation reads integers, not strings."""

    __tablename__ = "thread_link"
    mid: str = Field(primary_key=True, max_length=1000)
    thread_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class MessageContact(SQLModel, table=True):
    """Which contacts a message involves (inbound: the sender; outbound: each recipient)."""

    __tablename__ = "message_contact"
    __table_args__ = (
        UniqueConstraint("message_pk", "contact_id"),
        # Covers evaluation's per-contact reads: the last message each way (MAX(sent_at) is one
        # index seek per contact) and the days a contact wrote (going quiet), without a row read.
        Index("ix_message_contact_covering", "contact_id", "inbound", "automated", "sent_at", "day"),
    )
    id: int | None = Field(default=None, primary_key=True)
    message_pk: int = Field(foreign_key="message.id")
    contact_id: int
    inbound: bool
    automated: bool = False
    sent_at: NaiveDatetime
    #: UTC day number of sent_at (days since 1970-01-01): going quiet compares active days.
    day: int = 0


class Episode(SQLModel, table=True):
    """One answered wait: the inbound messages of a thread that the same reply answered.

    Kept at ingest beside reply_at (store/threads.py) so that evaluation reads response times
    from this narrow table instead of grouping messages. Only answered episodes are kept, and
    their membership does not depend on the moment of evaluation (every member was sent before
    the reply). `scope` is which inbound messages count as addressed to the firm: "to" (the firm
    in To) or "any" (To or Cc), the two readings of the policy's count_cc."""

    __tablename__ = "episode"
    # Covering: evaluation reads the episodes answered in a time range from the index alone.
    __table_args__ = (Index("ix_episode_scope_reply", "scope", "reply_ts", "started_ts", "client_id", "contact_id",
                            "size"),)
    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=3)
    thread_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    #: The message that began the wait (its first inbound message).
    first_pk: int
    client_id: int
    contact_id: int
    #: POSIX seconds: when the wait began and when the reply was sent.
    started_ts: float
    reply_ts: float
    #: Inbound messages in the episode: more than one means the contact had to chase.
    size: int


class SkippedMessage(SQLModel, table=True):
    """A message that could not be read at all: kept with its reason so nothing goes unseen."""

    __tablename__ = "skipped_message"
    __table_args__ = (UniqueConstraint("mailbox", "folder", "uidvalidity", "uid"),)
    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=200)
    folder: str = Field(max_length=500)
    uidvalidity: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    uid: int = Field(sa_column=Column(BigInteger, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    seen_at: NaiveDatetime


class Meta(SQLModel, table=True):
    """Small key/value facts about the store (e.g. the fingerprint of the synced directory)."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=100)
    value: str = Field(sa_column=Column(Text, nullable=False))


class Alert(SQLModel, table=True):
    """One lapse episode told to its owner: open -> notified -> escalated -> resolved (or snoozed,
    acknowledged). The key comes from the lapse, so the same episode is never told twice."""

    __tablename__ = "alert"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=1200)
    kind: str = Field(max_length=20, index=True)
    client_id: int | None = Field(default=None, foreign_key="client.id")
    client_name: str = Field(max_length=300)
    contact_email: str | None = Field(default=None, max_length=320)
    owner_email: str | None = Field(default=None, max_length=320)
    backup_email: str | None = Field(default=None, max_length=320)
    #: open | notified | escalated | snoozed | acknowledged | resolved | expired (see alerts.CLOSED)
    state: str = Field(default="open", max_length=20, index=True)
    #: 0 = told the owner; 1.. = escalation levels reached.
    level: int = 0
    since: NaiveDatetime
    detail: str = Field(sa_column=Column(Text, nullable=False))
    expected: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    facts: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    created_at: NaiveDatetime
    notified_at: NaiveDatetime | None = None
    escalated_at: NaiveDatetime | None = None
    snoozed_until: NaiveDatetime | None = None
    acknowledged_at: NaiveDatetime | None = None
    acknowledged_by: str | None = Field(default=None, max_length=320)
    resolved_at: NaiveDatetime | None = None
    updated_at: NaiveDatetime


class OutboxEmail(SQLModel, table=True):
    """Every email is written here first, then delivered and marked sent: nothing is lost."""

    __tablename__ = "outbox"
    id: int | None = Field(default=None, primary_key=True)
    #: Stable across retries and crash replays, so a resend is recognisably the same email.
    message_id: str = Field(unique=True, max_length=300)
    kind: str = Field(max_length=20, index=True)
    recipients: str = Field(sa_column=Column(Text, nullable=False))
    subject: str = Field(sa_column=Column(Text, nullable=False))
    #: The complete RFC 5322 message, as sent.
    raw: str = Field(sa_column=Column(Text, nullable=False))
    #: Signs snooze/ack replies to this email; alert ids it carries, comma-separated.
    token: str | None = Field(default=None, max_length=64, index=True)
    alert_ids: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    #: pending | sent | failed
    status: str = Field(default="pending", max_length=10, index=True)
    attempts: int = 0
    created_at: NaiveDatetime
    next_attempt_at: NaiveDatetime
    sent_at: NaiveDatetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class AlertCommand(SQLModel, table=True):
    """A reply to an alert email ("snooze 3d", "done") found by a scan, applied by the next check."""

    __tablename__ = "alert_command"
    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True, max_length=1000)
    from_addr: str = Field(max_length=320)
    token: str | None = Field(default=None, max_length=64)
    in_reply_to: str | None = Field(default=None, max_length=1000)
    command: str = Field(max_length=20)
    argument: str | None = Field(default=None, max_length=100)
    received_at: NaiveDatetime
    #: pending | applied | refused
    status: str = Field(default="pending", max_length=10)
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
