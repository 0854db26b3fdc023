"""`carewatch explain MESSAGE-ID`: why a stored message does (or does not) make anyone wait.

Owners and ops ask "why did I (not) get this alert?". This answers from the store alone: the
message's direction, client and contact, whether it is automated and by which rule, whether it
is an acknowledgement and why, its thread and how it was joined, and the wait or the response
it starts or ends, in business minutes on the client's calendar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from ..config import Config
from ..errors import CarewatchError, ExitCode
from ..store.db import Store
from ..store.models import Client, Contact, Message
from .clock import to_ts
from .policy import Policies


class MessageNotFoundError(CarewatchError):
    """Raised when no stored message has the Message-ID asked about."""

    exit_code = ExitCode.USAGE


@dataclass
class Explanation:
    message_id: str
    subject: str
    sender: str
    sent_at: str
    mailbox: str
    folder: str
    direction: str
    client: str | None
    contacts: list[str]
    automated: bool
    automated_rule: str | None
    acknowledgement: bool
    acknowledgement_why: str | None
    thread: int | None
    thread_joined_by: str
    thread_messages: int
    #: What the message means for care, in one sentence.
    effect: str
    #: Business minutes: the wait it started (answered or not yet), or the reply it was.
    business_minutes: float | None = None
    answers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normal_id(message_id: str) -> str:
    m = message_id.strip()
    return m if m.startswith("<") else f"<{m}>"


def explain(store: Store, config: Config, message_id: str, now: datetime) -> Explanation:
    book = Policies(config)
    with store.session() as db:
        m = db.execute(select(Message).where(col(Message.message_id) == _normal_id(message_id))).scalar_one_or_none()
        if m is None:
            raise MessageNotFoundError(f"no stored message has the Message-ID {_normal_id(message_id)}")
        client = db.get(Client, m.client_id) if m.client_id is not None else None
        ids = [int(x) for x in m.contact_ids.split(",") if x]
        contacts = [f"{c.name or c.email} <{c.email}> ({c.role})"
                    for c in db.execute(select(Contact).where(col(Contact.id).in_(ids))).scalars()] if ids else []
        thread = db.execute(select(Message).where(col(Message.thread_id) == m.thread_id)
                            .order_by(col(Message.sent_at))).scalars().all() if m.thread_id is not None else [m]
    if m.in_reply_to or m.references:
        joined = "its In-Reply-To / References headers"
    elif m.subject_reply:
        joined = "its subject alone (a reply without In-Reply-To or References)"
    else:
        joined = "nothing: it starts its thread"
    minutes_between = book.calendar(client.name if client else None).minutes_between
    effect, minutes, answers = _effect(m, thread, now, minutes_between)
    return Explanation(
        message_id=m.message_id, subject=m.subject, sender=f"{m.from_name} <{m.from_addr}>".strip(),
        sent_at=m.sent_at.isoformat() + "Z", mailbox=m.mailbox, folder=m.folder, direction=m.direction,
        client=client.name if client else None, contacts=contacts, automated=m.automated,
        automated_rule=m.automated_reason, acknowledgement=m.acknowledgement, acknowledgement_why=m.ack_reason,
        thread=m.thread_id, thread_joined_by=joined, thread_messages=len(thread), effect=effect,
        business_minutes=None if minutes is None else round(minutes, 1), answers=answers)


def _effect(m: Message, thread: Sequence[Message], now: datetime,
            minutes_between: Any) -> tuple[str, float | None, list[str]]:
    if m.sent_at > now:
        return f"sent after {now.isoformat()}Z: it does not count yet", None, []
    if m.direction == "inbound":
        if m.automated:
            return "automated mail: it never needs a reply", None, []
        if m.acknowledgement:
            return "an acknowledgement: it needs no reply", None, []
        if m.reply_at is not None and m.reply_at <= now:
            minutes = minutes_between(to_ts(m.sent_at), to_ts(m.reply_at))
            return (f"answered {m.reply_at.isoformat()}Z, after {minutes:.0f} business minute(s)"), minutes, []
        minutes = minutes_between(to_ts(m.sent_at), to_ts(now))
        return f"waiting for a reply: {minutes:.0f} business minute(s) at {now.isoformat()}Z", minutes, []
    if m.direction == "outbound":
        if m.automated:
            return "automated mail from the firm: it never counts as a reply", None, []
        answered = [t for t in thread if t.direction == "inbound" and t.reply_at == m.sent_at]
        if not answered:
            return "a message from the firm that answers no waiting message: it counts as word to its contacts", \
                None, []
        first = min(answered, key=lambda t: t.sent_at)
        minutes = minutes_between(to_ts(first.sent_at), to_ts(m.sent_at))
        return (f"the reply to {len(answered)} message(s) from the client, {minutes:.0f} business minute(s) "
                f"after the first"), minutes, [t.message_id for t in answered]
    if m.direction == "internal":
        return "mail within the firm, about no client: it does not count", None, []
    return "mail from and to no one Carewatch knows: it does not count", None, []
