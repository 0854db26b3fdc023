"""The outbox: written in the same transaction as the alert state, delivered afterwards,
retried with capped exponential backoff, permanent failures kept and visible."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses

from sqlalchemy import select, update
from sqlmodel import Session, col

from .. import defaults
from ..errors import DeliveryError
from ..store import Store
from ..store.models import OutboxEmail, table_of
from .transport import Transport

log = logging.getLogger(__name__)


def enqueue(store: Store, db: Session, msg: EmailMessage, *, kind: str, now: datetime, token: str | None = None,
            alert_ids: list[int] | None = None, not_before: datetime | None = None) -> bool:
    """Add an email to the outbox (in the caller's transaction). False if it is already there."""
    recipients = [a for _, a in getaddresses([str(msg["To"] or ""), str(msg["Cc"] or "")]) if a]
    row = {"message_id": str(msg["Message-ID"]), "kind": kind, "recipients": ",".join(recipients),
           "subject": str(msg["Subject"]), "raw": msg.as_bytes(policy=SMTP).decode("ascii", "replace"), "token": token,
           "alert_ids": ",".join(map(str, alert_ids or [])), "status": "pending", "attempts": 0,
           "created_at": now, "next_attempt_at": not_before or now}
    return store.insert_ignore(db, table_of(OutboxEmail), [row], ["message_id"]) == 1


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(defaults.OUTBOX_RETRY_CAP_SECONDS,
                                 defaults.OUTBOX_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1)))


@dataclass
class DeliveryReport:
    sent: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def deliver(store: Store, transport: Transport, mail_from: str, now: datetime,
            max_attempts: int = defaults.OUTBOX_MAX_ATTEMPTS, limit: int = 200) -> DeliveryReport:
    """Send what is due. Each email is marked sent right after the server accepted it; a
    crash in between sends it again with the same Message-ID (recognisably the same)."""
    rep = DeliveryReport()
    with store.session() as db:
        due = db.execute(select(col(OutboxEmail.id)).where(
            col(OutboxEmail.status) == "pending", col(OutboxEmail.next_attempt_at) <= now
        ).order_by(col(OutboxEmail.id)).limit(limit)).scalars().all()
    try:
        for oid in due:
            with store.session() as db:
                row = db.get(OutboxEmail, oid)
                if row is None or row.status != "pending":
                    continue  # another worker took it
                recipients = [r for r in row.recipients.split(",") if r]
                try:
                    refused = transport.send(row.raw.encode("utf-8"), mail_from, recipients, row.message_id)
                except DeliveryError as exc:
                    attempts = row.attempts + 1
                    permanent = exc.permanent or attempts >= max_attempts
                    values = {"attempts": attempts, "last_error": str(exc)[:2000],
                              "status": "failed" if permanent else "pending",
                              "next_attempt_at": now + backoff(attempts)}
                    db.execute(update(OutboxEmail).where(OutboxEmail.id == oid).values(**values))
                    db.commit()
                    (rep.failed if permanent else rep.retrying).append(row.message_id)
                    rep.errors.append(str(exc))
                    note = f"{exc}; kept as failed, see `carewatch outbox list`" if permanent else str(exc)
                    log.warning("delivery of %s %s (attempt %d): %s", row.kind, row.message_id, attempts, note)
                    if not exc.permanent:
                        break  # the server is unwell: leave the rest for the next run
                    continue
                db.execute(update(OutboxEmail).where(OutboxEmail.id == oid).values(
                    status="sent", sent_at=now, attempts=row.attempts + 1,
                    last_error=(f"refused: {refused}" if refused else None)))
                db.commit()
                rep.sent.append(row.message_id)
                if refused:
                    log.warning("%s: some recipients refused: %s", row.message_id, refused)
    finally:
        transport.close()
    return rep
