"""An alert email: the alerts told to one recipient at one check, one item per thread or
contact, most urgent first, each with what to do, under a subject that names the worst."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..config import Settings
from ..notify.render import Renderer
from ..store.models import Alert
from .tokens import make_token

LABELS = {
    "unanswered": "Waiting for a reply",
    "chased": "Client had to chase",
    "silent": "Nobody has written",
    "going_quiet": "Client going quiet",
    "slowing": "Replies slowing down",
    "unowned": "Nobody accountable",
    "due_soon": "Reply due soon",
}
ACTIONS = {
    "unanswered": "reply to {contact} today, or hand the thread to a colleague and say so",
    "chased": "reply today and acknowledge the wait: {contact} has followed up {chasers}",
    "silent": "send {contact} a short personal note or suggest a call",
    "going_quiet": "check in with {contact}: ask how things are going",
    "slowing": "look at the team's workload on {client}; replies are taking much longer than usual",
    "due_soon": "reply to {contact} before {due}, or hand the thread to a colleague and say so",
    "unowned:owner": "decide who owns {client}, and ask whoever keeps the Carewatch configuration to name "
                     "them as its owner",
    "unowned:principal": "ask {client} who is accountable for the relationship on their side, and pass the "
                         "name to whoever keeps the Carewatch configuration",
}
#: Most urgent first, in an email and in its subject: a client who had to chase, then one
#: waiting, then hygiene, then the slower signals.
URGENCY = ("chased", "unanswered", "due_soon", "unowned", "silent", "going_quiet", "slowing")


@dataclass
class PlannedEmail:
    recipients: list[str]
    subject: str
    message_id: str
    items: list[dict[str, Any]]
    text: str
    html: str
    #: Held for quiet hours: the email as it would go at the next opening (dry runs show it).
    held_until: datetime | None = None


class AlertEmails:
    """Writes the alert emails of one firm: its people's names, its time zone."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tz = ZoneInfo(settings.calendar.timezone)
        self.names = {o.email: o.name for o in settings.owners} | {p.email: p.name for p in settings.partners}

    def local(self, dt: datetime) -> str:
        return from_naive(dt).astimezone(self.tz).strftime("%a %d %b %Y %H:%M")

    def compose(self, renderer: Renderer, secret: bytes, recipient: str, entries: list[tuple[Alert, bool]],
                now: datetime, people: dict[str, tuple[str, str]] | None = None) -> tuple[PlannedEmail, str]:
        n = self.settings.notify
        # The id (and so the reference owners reply with) depends on what is told, not on the
        # minute the check ran: the same alerts at the same level, on the same business day, are
        # the same email, so a dry run at night shows the reference the morning's send will use.
        # A notice after a snooze or a reopening differs by those (snoozed_until, resolved_at).
        keys = "|".join(sorted(f"{a.key}#{a.level + (1 if esc else 0)}#{a.snoozed_until}#{a.resolved_at}"
                               for a, esc in entries))
        day = from_naive(now).astimezone(self.tz).date().isoformat()
        digest = hashlib.sha256(f"{recipient}|{day}|{keys}".encode()).hexdigest()[:24]
        domain = n.from_address.rpartition("@")[2] or "carewatch.local"
        message_id = f"<cw.{digest}@{domain}>"
        token = make_token(secret, message_id)
        items = []
        for a, esc, ids in _one_per_thread_and_contact(entries):
            facts = json.loads(a.facts or "{}")
            name, role = (people or {}).get(a.contact_email or "", (a.contact_email, None))
            contact_name = f"{name} <{a.contact_email}>" if a.contact_email and name != a.contact_email else name
            chasers = int(facts.get("chasers") or 0)
            action_key = f"unowned:{facts.get('missing', 'owner')}" if a.kind == "unowned" else a.kind
            items.append({
                "key": a.key, "kind": a.kind, "label": LABELS.get(a.kind, a.kind), "client": a.client_name,
                "contact": contact_name, "role": role, "detail": a.detail, "expected": a.expected,
                "subject": facts.get("subject"), "since_local": self.local(a.since), "escalated": esc,
                "owner_name": self.names.get(a.owner_email or "", a.owner_email), "chasers": chasers,
                "alert_ids": ids,
                "action": ACTIONS.get(action_key, "look into it").format(
                    contact=name or "the contact", client=a.client_name,
                    chasers="once" if chasers == 1 else f"{chasers} times",
                    due=self.local(datetime.fromisoformat(facts["due_at"].replace("Z", "+00:00")))
                    if facts.get("due_at") else "the end of the reply window"),
            })
        escalated = any(esc for _, esc in entries)
        first = items[0]
        more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
        what = first["label"].lower() + (f" ({first['chasers']}x)" if first["chasers"] > 1 else "")
        subject = f"{'Escalated: ' if escalated else ''}{first['client']}: {what}{more} [cw:{token}]"
        clients = len({it["client"] for it in items})
        ctx = {"subject": subject, "items": items, "escalated": escalated, "recipient": recipient, "clients": clients,
               "recipient_name": self.names.get(recipient, recipient), "token": token,
               "now_local": self.local(now), "timezone": self.settings.calendar.timezone}
        text, html = renderer.render("alert", ctx)
        return PlannedEmail([recipient], subject, message_id, items, text, html), token


def _urgency(entry: tuple[Alert, bool]) -> tuple[bool, int, datetime, int]:
    a, escalated = entry
    rank = URGENCY.index(a.kind) if a.kind in URGENCY else len(URGENCY)
    return (not escalated, rank, a.since, a.id or 0)


def _one_per_thread_and_contact(entries: list[tuple[Alert, bool]]) -> list[tuple[Alert, bool, list[int]]]:
    """The items of one email, most urgent first: one per thread (a thread that waits and was
    chased is told once, as chased, the number of chasers inside it) and one per contact for the
    contact-wide lapses (silent, going quiet). Each item carries the ids of every alert it
    tells (the ones folded into it too), for replies that name the item ("done 2")."""
    out: list[tuple[Alert, bool, list[int]]] = []
    where: dict[tuple[str, str], list[int]] = {}
    for a, esc in sorted(entries, key=_urgency):
        facts = json.loads(a.facts or "{}")
        if a.kind in ("chased", "unanswered", "due_soon"):
            about = ("thread", f"{a.contact_email}|{facts.get('message_id') or a.key}")
        elif a.kind in ("silent", "going_quiet"):
            about = ("contact", a.contact_email or a.key)
        else:
            about = ("alert", a.key)
        if about in where:
            where[about].append(a.id or 0)
            continue
        where[about] = [a.id or 0]
        out.append((a, esc, where[about]))
    return out


def from_naive(dt: datetime) -> datetime:
    """Stored (naive UTC) -> aware UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt
