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
from ..config import duration_words
from ..errors import DeliveryError
from ..retry import capped_backoff
from ..store import Store
from ..store.models import OutboxEmail, table_of
from .transport import Transport

log = logging.getLogger(__name__)


def enqueue(store: Store, db: Session, msg: EmailMessage, *, kind: str, now: datetime, token: str | None = None,
            alert_ids: list[int] | list[str] | None = None, not_before: datetime | None = None) -> bool:
    """Add an email to the outbox (in the caller's transaction). False if it is already there."""
    recipients = [a for _, a in getaddresses([str(msg["To"] or ""), str(msg["Cc"] or "")]) if a]
    row = {"message_id": str(msg["Message-ID"]), "kind": kind, "recipients": ",".join(recipients),
           "subject": str(msg["Subject"]), "raw": msg.as_bytes(policy=SMTP).decode("ascii", "replace"), "token": token,
           "alert_ids": ",".join(map(str, alert_ids or [])), "status": "pending", "attempts": 0,
           "created_at": now, "next_attempt_at": not_before or now}
    return store.insert_ignore(db, table_of(OutboxEmail), [row], ["message_id"]) == 1


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=capped_backoff(attempts, defaults.OUTBOX_RETRY_BASE_SECONDS,
                                            defaults.OUTBOX_RETRY_CAP_SECONDS))


@dataclass
class DeliveryReport:
    sent: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: A failure no retry will fix by itself (a refused login, a TLS failure, a refused sender):
    #: shown loudly until a delivery succeeds.
    alarm: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing failed for good, and nothing is waiting for a server that refused it now."""
        return not self.failed and not (self.retrying and not self.sent)


def deliver(store: Store, transport: Transport, mail_from: str, now: datetime,
            give_up_after: timedelta = timedelta(days=3), limit: int = 200) -> DeliveryReport:
    """Send what is due. Each email is first claimed (its next attempt moved a lease ahead, in
    one conditional UPDATE), so two processes delivering at once never send it both; it is
    marked sent right after the server accepted it. A crash in between sends it again once the
    lease has passed, with the same Message-ID (recognisably the same: SMTP cannot be
    exactly-once). A failed email is retried with capped backoff until `give_up_after` has
    passed since it was queued, and only then marked failed; an answer that refuses this email
    for good (5xx for its recipients or its content) fails it at once."""
    rep = DeliveryReport()
    lease = timedelta(seconds=defaults.OUTBOX_LEASE_SECONDS)
    with store.session() as db:
        due = db.execute(select(col(OutboxEmail.id)).where(
            col(OutboxEmail.status) == "pending", col(OutboxEmail.next_attempt_at) <= now
        ).order_by(col(OutboxEmail.id)).limit(limit)).scalars().all()
    try:
        for oid in due:
            with store.session() as db:
                claimed = db.execute(update(OutboxEmail).where(
                    col(OutboxEmail.id) == oid, col(OutboxEmail.status) == "pending",
                    col(OutboxEmail.next_attempt_at) <= now).values(next_attempt_at=now + lease))
                db.commit()
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # another process took it, or sent it
                row = db.get(OutboxEmail, oid)
                assert row is not None
                recipients = [r for r in row.recipients.split(",") if r]
                try:
                    refused = transport.send(row.raw.encode("utf-8"), mail_from, recipients, row.message_id)
                except DeliveryError as exc:
                    attempts = row.attempts + 1
                    gave_up = now - row.created_at >= give_up_after
                    failed = exc.permanent or gave_up
                    values = {"attempts": attempts, "last_error": str(exc)[:2000],
                              "status": "failed" if failed else "pending",
                              "next_attempt_at": now + backoff(attempts)}
                    db.execute(update(OutboxEmail).where(col(OutboxEmail.id) == oid).values(**values))
                    db.commit()
                    (rep.failed if failed else rep.retrying).append(row.message_id)
                    rep.errors.append(str(exc))
                    if exc.alarm:
                        rep.alarm = str(exc)
                    if failed:
                        why = ("refused for good" if exc.permanent
                               else f"retried for {duration_words(give_up_after.total_seconds() / 60)} since queued")
                        note = f"{exc}; {why}: kept as failed, see `carewatch outbox list`, `carewatch outbox retry`"
                    else:
                        note = f"{exc}; retried from {now + backoff(attempts):%Y-%m-%d %H:%M} UTC"
                    log.log(logging.ERROR if exc.alarm or failed else logging.WARNING,
                            "delivery of %s %s (attempt %d): %s", row.kind, row.message_id, attempts, note)
                    if not exc.permanent:
                        break  # the server is unwell, or refuses us: leave the rest for the next run
                    continue
                db.execute(update(OutboxEmail).where(col(OutboxEmail.id) == oid).values(
                    status="sent", sent_at=now, attempts=row.attempts + 1,
                    last_error=(f"refused: {refused}" if refused else None)))
                db.commit()
                rep.sent.append(row.message_id)
                if refused:
                    log.warning("%s: some recipients refused: %s", row.message_id, refused)
    finally:
        transport.close()
    return rep


def retry(store: Store, now: datetime, outbox_id: int | None = None) -> int:
    """Put failed emails back in the queue (one by id, or all failed ones): due now, with the
    time they may be retried counted from now. Returns how many."""
    with store.session() as db:
        where = [col(OutboxEmail.status) == "failed"]
        if outbox_id is not None:
            where.append(col(OutboxEmail.id) == outbox_id)
        n = db.execute(update(OutboxEmail).where(*where).values(
            status="pending", next_attempt_at=now, created_at=now)).rowcount  # type: ignore[attr-defined]
        db.commit()
    return int(n)
