"""Alerts: turn lapses into a lifecycle (open -> notified -> escalated -> resolved, or snoozed /
acknowledged), group them into one email per recipient per check, and write those emails to
the outbox in the same transaction as the state change, so a crash can never tell anyone twice
or lose an alert."""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from ..care.clock import BusinessCalendar, from_ts, to_ts
from ..care.evaluate import evaluate
from ..care.picture import CarePicture
from ..config import Config, parse_duration_minutes
from ..notify.outbox import DeliveryReport, enqueue
from ..notify.outbox import deliver as deliver_outbox
from ..notify.render import Renderer, build_email
from ..notify.transport import Transport, make_transport
from ..store import Store
from ..store.locks import assert_locks_held, waited_for
from ..store.models import Alert, AlertCommand, OutboxEmail
from .emails import AlertEmails, PlannedEmail, from_naive
from .lifecycle import ACTIVE, CLOSED, last_notice, transition
from .tokens import TOKEN_VALID_DAYS, ensure_token_secret, make_token, token_secret

log = logging.getLogger(__name__)

# --- the check -----------------------------------------------------------------------------------
@dataclass
class CheckReport:
    now: datetime
    new: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    reopened: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    snoozed: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    emails: list[PlannedEmail] = field(default_factory=list)
    delivery: DeliveryReport | None = None
    hold_until: datetime | None = None
    #: The next moment this check's outcome can change by time alone (a wait crossing its
    #: window, a snooze ending, an escalation falling due, quiet hours ending): the worker
    #: checks again then, and after new mail, rather than evaluating everything after every
    #: scan. None: nothing is due by time.
    next_check: datetime | None = None

    def due_by(self, when: datetime | None) -> None:
        """Note a moment the outcome changes by time alone."""
        if when is not None and when > self.now and (self.next_check is None or when < self.next_check):
            self.next_check = when

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now.isoformat() + "Z", "new": self.new, "escalated": self.escalated,
                "resolved": self.resolved, "expired": self.expired, "reopened": self.reopened, "held": self.held,
                "snoozed": self.snoozed, "commands": self.commands,
                "hold_until": self.hold_until.isoformat() + "Z" if self.hold_until else None,
                "emails": [{"to": e.recipients, "subject": e.subject, "message_id": e.message_id,
                            "items": [i["key"] for i in e.items],
                            "held_until": e.held_until.isoformat() + "Z" if e.held_until else None}
                           for e in self.emails],
                "delivery": None if self.delivery is None else {
                    "sent": self.delivery.sent, "retrying": self.delivery.retrying, "failed": self.delivery.failed}}


class AlertLifecycle:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.settings = config.settings
        self.calendar = BusinessCalendar.from_config(config.settings.calendar)
        self.escalate_after = parse_duration_minutes(config.settings.policy.escalate_after, business=True)
        self.levels = config.settings.policy.escalation_levels
        self.emails = AlertEmails(self.settings)
        self.owner_backup = {o.email: o.backup for o in self.settings.owners}
        self.partners = [p.email for p in self.settings.partners]
        self.max_snooze_minutes = parse_duration_minutes(self.settings.notify.max_snooze, business=False)

    # --- people ----------------------------------------------------------------------------------
    def backup_for(self, alert: Alert) -> list[str]:
        """Who an alert escalates to: the client's backup, the owner's backup, or the partners."""
        b = alert.backup_email or self.settings.find_person(self.owner_backup.get(alert.owner_email or ""))
        return [b] if b else list(self.partners)

    def first_recipients(self, alert: Alert) -> list[str]:
        if alert.owner_email:
            return [alert.owner_email]
        return self.backup_for(alert)  # an unowned client: someone senior must hear of it

    # --- commands (snooze / done by reply) -------------------------------------------------------
    def apply_commands(self, db: Session, now: datetime, report: CheckReport) -> None:
        pending = db.execute(select(AlertCommand).where(col(AlertCommand.status) == "pending")
                             .order_by(col(AlertCommand.received_at), col(AlertCommand.id))).scalars().all()
        if not pending:
            return
        secret = token_secret(self.store, db, self.settings.notify.token_secret_env)
        for cmd in pending:
            result, ok = self._apply_one(db, cmd, secret, now)
            cmd.status = "applied" if ok else "refused"
            cmd.result = result
            db.add(cmd)
            report.commands.append(f"{cmd.command} from {cmd.from_addr}: {result}")
            (log.info if ok else log.warning)("reply %s from %s: %s", cmd.message_id, cmd.from_addr, result)

    def _apply_one(self, db: Session, cmd: AlertCommand, secret: bytes, now: datetime) -> tuple[str, bool]:
        email = None
        if cmd.token:
            email = db.execute(select(OutboxEmail).where(col(OutboxEmail.token) == cmd.token)).scalars().first()
        if email is None and cmd.in_reply_to:
            email = db.execute(select(OutboxEmail).where(col(OutboxEmail.message_id) == cmd.in_reply_to)
                               ).scalars().first()
        if email is None or email.token is None:
            return "refused: no alert email carries this reference", False
        # The token must be the one we signed for that very email (altered tokens fail here).
        if not cmd.token or not hmac.compare_digest(cmd.token, make_token(secret, email.message_id)):
            return "refused: the reference does not match the email it answers", False
        if cmd.in_reply_to != email.message_id:
            # A reply quotes the email it answers: a reference copied into a new message (from an
            # owner's earlier reply, say) is not enough.
            return "refused: the reply does not answer the alert email (no In-Reply-To or References to it)", False
        if cmd.received_at < email.created_at or cmd.received_at > email.created_at + timedelta(days=TOKEN_VALID_DAYS):
            return "refused: the reference has expired", False
        groups = [[int(x) for x in g.split("+") if x] for g in email.alert_ids.split(",") if g]
        # argument: "3d" (snooze span), optionally "#N" for one item of the email.
        span, _, item_s = (cmd.argument or "").partition("#")
        if item_s:
            item = int(item_s)
            if not 1 <= item <= len(groups):
                return f"refused: the email has no item {item}", False
            groups = [groups[item - 1]]
        alerts = [a for a in (db.get(Alert, i) for g in groups for i in g) if a is not None]
        if any((last_notice(a) or email.created_at) > email.created_at for a in alerts):
            # Its alerts were told again since (escalated, reopened): that newer email's reference
            # is the one that acts on them.
            return "refused: a newer alert email about these alerts replaces this one", False
        sender = cmd.from_addr.lower()
        allowed = [a for a in alerts if sender in {a.owner_email, *self.backup_for(a)}]
        if not allowed:
            return "refused: only the alert's owner or backup may snooze or close it", False
        done = []
        for a in allowed:
            if a.state in CLOSED:
                continue
            if cmd.command == "snooze":
                minutes = min(parse_duration_minutes(span or "1d", business=False), self.max_snooze_minutes)
                transition(a, "snoozed", now, until=cmd.received_at + timedelta(minutes=minutes))
            else:
                transition(a, "done", now, by=sender, at=cmd.received_at)  # when said, not when read
            db.add(a)
            done.append(a.key)
        verb = "snoozed" if cmd.command == "snooze" else "closed"
        return f"{verb} {len(done)} alert(s)", True

    # --- lifecycle ---------------------------------------------------------------------------------
    def sync(self, db: Session, picture: CarePicture, now: datetime, report: CheckReport) -> None:
        lapses = {lp.key: lp for lp in picture.lapses + picture.warnings}
        clients = {c.name: c for c in picture.clients}
        existing = {a.key: a for a in db.execute(select(Alert).where(col(Alert.key).in_(list(lapses)))).scalars()} \
            if lapses else {}
        for key, lp in lapses.items():
            a = existing.get(key)
            c = clients.get(lp.client)
            if a is None:
                a = Alert(key=key, kind=lp.kind, client_id=c.id if c else None, client_name=lp.client,
                          contact_email=lp.contact_email, owner_email=c.owner if c else None,
                          backup_email=c.backup if c else None, state="open", level=0, since=lp.since,
                          detail=lp.detail, expected=lp.expected, facts=json.dumps(lp.facts, sort_keys=True),
                          created_at=now, updated_at=now)
            else:
                if a.state in CLOSED:  # the lapse is back (a new chaser, a changed policy)
                    transition(a, "reopen", now)
                    report.reopened.append(key)
                elif a.state == "snoozed" and a.snoozed_until and a.snoozed_until <= now:
                    transition(a, "wake", now)  # the owner asked to hear about it again now
                # The picture moves on (waits grow longer): keep the latest words.
                a.detail, a.expected, a.facts = lp.detail, lp.expected, json.dumps(lp.facts, sort_keys=True)
                if c is not None:
                    a.owner_email, a.backup_email = c.owner, c.backup
                a.updated_at = now
            db.add(a)
        db.flush()
        for a in db.execute(select(Alert).where(col(Alert.state).in_(ACTIVE))).scalars():
            if a.key not in lapses:
                # An alert its owner closed ("done") was handled, by phone perhaps: resolved.
                ended = "expired" if a.key in picture.expired and a.state != "acknowledged" else "resolved"
                transition(a, "end", now, ended=ended)
                db.add(a)
                (report.expired if ended == "expired" else report.resolved).append(a.key)

    def due(self, db: Session, now: datetime, report: CheckReport) -> dict[str, list[tuple[Alert, bool]]]:
        """Recipient -> [(alert, escalated?)] that should be told now."""
        out: dict[str, list[tuple[Alert, bool]]] = {}
        now_ts = to_ts(now)
        escalates_if_told_now = from_ts(self.calendar.add_minutes(now_ts, self.escalate_after))
        for a in db.execute(select(Alert).where(col(Alert.state).in_(("open", "notified", "escalated", "snoozed")))
                            .order_by(col(Alert.client_name), col(Alert.since), col(Alert.id))).scalars():
            if a.state == "snoozed":
                report.snoozed.append(a.key)
                report.due_by(a.snoozed_until)
                continue
            if a.state == "open":
                for r in self.first_recipients(a):
                    out.setdefault(r, []).append((a, False))
                if a.kind != "due_soon" and a.level < self.levels:  # told now: escalates from now on
                    report.due_by(escalates_if_told_now)
                continue
            if a.kind == "due_soon":
                continue  # a warning, told once: the lapse it warns of escalates if it comes
            # The latest notice of any kind: never an escalation sooner than escalate_after
            # after the owner was told (again).
            last = last_notice(a) or a.created_at
            if a.level >= self.levels:
                continue
            if self.calendar.minutes_between(to_ts(last), now_ts) >= self.escalate_after:
                for r in dict.fromkeys(self.first_recipients(a) + self.backup_for(a)):
                    out.setdefault(r, []).append((a, True))
            else:
                report.due_by(from_ts(self.calendar.add_minutes(to_ts(last), self.escalate_after)))
        return out

    def check(self, now: datetime, dry_run: bool = False, transport: Transport | None = None,
              picture: CarePicture | None = None, deliver: bool = True) -> CheckReport:
        """Apply replies, sync alerts with the lapses at `now`, queue the emails and (unless
        `deliver` is False: the worker delivers under its own lock) deliver them."""
        report = CheckReport(now=now)
        renderer = Renderer(self.config)
        if not self.settings.notify.token_secret_env:
            ensure_token_secret(self.store)
        with self.store.session() as db:
            self.apply_commands(db, now, report)
            db.flush()
            picture = picture or evaluate(self.store, self.config, now)
            report.due_by(picture.next_change)
            self.sync(db, picture, now, report)
            db.flush()
            due = self.due(db, now, report)
            n = self.settings.notify
            is_open = self.calendar.is_open(to_ts(now))
            secret = token_secret(self.store, db, self.settings.notify.token_secret_env)
            people = {ct.email: (ct.name, ct.role) for c in picture.clients for ct in c.contacts}
            for recipient, entries in sorted(due.items()):
                if n.quiet_hours and not is_open:
                    urgent: list[tuple[Alert, bool]] = [
                        (a, e) for a, e in entries if e and n.escalations_ignore_quiet_hours]
                    held = [(a, e) for a, e in entries if (a, e) not in urgent]
                    report.held += [a.key for a, _ in held]
                    if dry_run and held:
                        # A dry run at night shows what the morning will send, and when.
                        opening = from_ts(self.calendar.next_open(to_ts(now)))
                        later, _ = self.emails.compose(renderer, secret, recipient, held, opening, people)
                        later.held_until = opening
                        report.emails.append(later)
                    entries = urgent
                    if not entries:
                        continue
                planned, token = self.emails.compose(renderer, secret, recipient, entries, now, people)
                report.emails.append(planned)
                msg = build_email(from_addr=n.from_address, from_name=n.from_name, to=planned.recipients,
                                  subject=planned.subject, text=planned.text, html=planned.html,
                                  message_id=planned.message_id, reply_to=n.reply_to, date=from_naive(now),
                                  headers={"X-Carewatch-Kind": "alert", "X-Carewatch-Token": token})
                # Item by item, as the email numbers them: "12+15" is one item telling two
                # alerts (a thread that waits and was chased).
                enqueue(self.store, db, msg, kind="alert", now=now, token=token,
                        alert_ids=["+".join(map(str, it["alert_ids"])) for it in planned.items])
                for a, esc in entries:
                    if esc:
                        if a.key not in report.escalated:
                            report.escalated.append(a.key)
                    elif a.key not in report.new:
                        report.new.append(a.key)
            # State changes once per alert, after all emails are planned: an escalation goes to
            # the owner and the backup but raises the level once.
            told: dict[int, tuple[Alert, bool]] = {}
            for _recipient, entries in due.items():
                for a, esc in entries:
                    if a.key not in report.held and a.id is not None:
                        told[a.id] = (a, esc)
            for a, esc in told.values():
                transition(a, "escalated" if esc else "told", now)
                db.add(a)
            if report.held:
                report.hold_until = from_ts(self.calendar.next_open(to_ts(now)))
                report.due_by(report.hold_until)
            if dry_run:
                db.rollback()
                return report
            assert_locks_held()  # a replica may have taken over if our lock's connection dropped
            db.commit()
        if deliver:
            with waited_for(self.store, "outbox"):
                report.delivery = deliver_outbox(self.store, transport or make_transport(self.config),
                                                 self.settings.notify.from_address, now,
                                                 self.settings.notify.give_up_delta)
        return report


