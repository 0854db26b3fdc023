"""The weekly partner digest: the portfolio's health at a glance, week over week.

Figures come from the same evaluation as `status` (at `now`, and at `now - 7 days` for the
previous week), so the digest and `status --json` always agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from ..alerts.lifecycle import CLOSED
from ..care.clock import to_ts
from ..care.evaluate import evaluate
from ..care.picture import DAY, WEEK, CarePicture, ClientCare, fmt_minutes, p90
from ..config import Config, PartnerConfig
from ..notify.outbox import enqueue
from ..notify.render import Renderer, build_email
from ..store import Store
from ..store.models import Alert, Contact, OutboxEmail, columns
from .present import render_digest

log = logging.getLogger(__name__)

SEVERITY = {"chased": 4, "unanswered": 3, "silent": 2, "going_quiet": 2, "slowing": 2, "unowned": 1}
RED_KINDS = {"unanswered", "chased", "silent"}
TREND_WEEKS = 8


@dataclass
class Headline:
    median_response_minutes: float | None
    p90_response_minutes: float | None
    responses: int
    within_policy_share: float | None
    open_waits: int
    chasers: int
    silent_principals: int
    going_quiet_clients: int


@dataclass
class ClientRow:
    name: str
    internal: bool
    rag: str
    owner: str | None
    owner_name: str
    median_response_minutes: float | None
    trend: list[float | None]
    days_since_principal: float | None
    open_alerts: int
    open_waits: int
    reasons: list[str]
    score: int
    risk_since: datetime | None


@dataclass
class OwnerRow:
    email: str
    name: str
    clients: list[str]
    open_alerts: int
    escalated_alerts: int
    median_response_minutes: float | None


@dataclass
class NeverAnswered:
    """A thread Carewatch stopped waiting on this week without the firm ever replying
    (policy.waits_expire_after): its alert ended "expired"."""

    client: str
    contact: str
    subject: str
    since: datetime
    owner_name: str


@dataclass
class Digest:
    partner: PartnerConfig
    now: datetime
    week_start: datetime
    this_week: Headline
    last_week: Headline
    at_risk: list[ClientRow]
    clients: list[ClientRow]
    owners: list[OwnerRow]
    unowned: list[str]
    no_principal: list[str]
    discovered: list[tuple[str, str, str]]  # (client, email, name)
    undelivered: list[tuple[str, str]]  # (recipient, subject)
    never_answered: list[NeverAnswered] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def headline(picture: CarePicture, clients: set[str]) -> Headline:
    """The week ending at picture.now, over the clients in scope."""
    now_ts = to_ts(picture.now)
    chosen = [c for c in picture.clients if c.name in clients]
    week = [r for c in chosen for r in c.responses if now_ts - WEEK < r.replied_at <= now_ts]
    over_policy = [lp for c in chosen for lp in c.all_lapses if lp.kind == "unanswered"]
    biz = [r.business_minutes for r in week]
    answered_in_time = sum(1 for r in week if r.within_policy)
    denominator = len(week) + len(over_policy)
    chasers = sum(1 for r in week if r.chased) + sum(1 for c in chosen for lp in c.all_lapses if lp.kind == "chased")
    return Headline(
        median_response_minutes=median(biz) if biz else None,
        p90_response_minutes=p90(biz) if biz else None,
        responses=len(week),
        within_policy_share=answered_in_time / denominator if denominator else None,
        open_waits=sum(c.open_waits for c in chosen),
        chasers=chasers,
        silent_principals=sum(
            1 for c in chosen for ct in c.contacts for lp in ct.lapses if lp.kind == "silent" and ct.role == "principal"
        ),
        going_quiet_clients=sum(1 for c in chosen if any(lp.kind == "going_quiet" for lp in c.all_lapses)),
    )


def rag_of(c: ClientCare) -> str:
    kinds = {lp.kind for lp in c.all_lapses}
    if kinds & RED_KINDS:
        return "red"
    if kinds or c.open_waits:
        return "amber"
    return "green"


def weekly_medians(c: ClientCare, now: datetime, weeks: int = TREND_WEEKS) -> list[float | None]:
    now_ts = to_ts(now)
    out: list[float | None] = []
    for k in range(weeks, 0, -1):
        lo, hi = now_ts - k * WEEK, now_ts - (k - 1) * WEEK
        vals = [r.business_minutes for r in c.responses if lo < r.replied_at <= hi]
        out.append(median(vals) if vals else None)
    return out


def in_scope(config: Config, partner: PartnerConfig) -> set[str]:
    if partner.scope == "all":
        return {c.name for c in config.clients}
    owners = set()
    for ref in partner.scope:
        r = ref.strip().lower()
        for o in config.settings.owners:
            if r in (o.email, o.name.lower()):
                owners.add(o.email)
    names = {o.name.lower(): o.email for o in config.settings.owners}
    return {
        c.name
        for c in config.clients
        if c.owner and (c.owner.lower() in owners or names.get(c.owner.lower()) in owners)
    }


def build_digest(
    store: Store,
    config: Config,
    partner: PartnerConfig,
    now: datetime,
    picture: CarePicture | None = None,
    previous: CarePicture | None = None,
) -> Digest:
    if picture is None or previous is None:
        picture, previous = two_weeks(store, config, now)
    scope = in_scope(config, partner)
    names = {o.email: o.name for o in config.settings.owners}
    week_start = now - timedelta(days=7)
    alert_rows, expired, discovered, failed, failed_count = _from_store(store, now, week_start)
    open_alerts: dict[str, int] = {}
    escalated: dict[str, int] = {}
    for name, st, _owner in alert_rows:
        open_alerts[name] = open_alerts.get(name, 0) + 1
        if st == "escalated":
            escalated[name] = escalated.get(name, 0) + 1

    rows = _client_rows(picture, scope, names, open_alerts, now)
    at_risk = sorted((r for r in rows if r.score > 0), key=lambda r: (-r.score, r.risk_since or now, r.name.lower()))[
        :8
    ]
    owners = _owner_rows(config, picture, scope, open_alerts, escalated, now)
    client_names = {c.id: c.name for c in picture.clients}
    in_scope_clients = [c for c in picture.clients if c.name in scope]
    never_answered, before = _never_answered(expired, scope, in_scope_clients, names, week_start)
    return Digest(
        partner=partner,
        now=now,
        week_start=week_start,
        this_week=headline(picture, scope),
        last_week=headline(previous, scope),
        at_risk=at_risk,
        clients=rows,
        owners=owners,
        unowned=sorted(c.name for c in in_scope_clients if not c.owner),
        no_principal=sorted(c.name for c in in_scope_clients if c.principal is None),
        discovered=sorted((client_names[cid], e, n) for e, n, cid in discovered if client_names.get(cid) in scope),
        undelivered=[(r, s) for r, s in failed],
        never_answered=never_answered,
        extra={"undelivered_total": failed_count, "never_answered_before": len(before)},
    )


def _from_store(store: Store, now: datetime, week_start: datetime) -> tuple[Any, Any, Any, Any, int]:
    """Open alerts, alerts that expired in the last two weeks, discovered contacts, failed emails."""
    with store.session() as db:
        alert_rows = db.execute(
            select(*columns(Alert.client_name, Alert.state, Alert.owner_email)).where(col(Alert.state).notin_(CLOSED))
        ).all()
        expired = db.execute(
            select(*columns(Alert.client_name, Alert.contact_email, Alert.owner_email, Alert.since, Alert.facts,
                            Alert.resolved_at))
            .where(col(Alert.state) == "expired", col(Alert.resolved_at) > week_start - timedelta(days=7),
                   col(Alert.resolved_at) <= now)
            .order_by(col(Alert.client_name), col(Alert.since))
        ).all()
        discovered = db.execute(
            select(*columns(Contact.email, Contact.name, Contact.client_id))
            .where(col(Contact.discovered), col(Contact.active))
        ).all()
        failed = db.execute(
            select(*columns(OutboxEmail.recipients, OutboxEmail.subject))
            .where(col(OutboxEmail.status) == "failed")
            .order_by(col(OutboxEmail.id).desc())
            .limit(20)
        ).all()
        failed_count = db.execute(
            select(func.count()).select_from(OutboxEmail).where(col(OutboxEmail.status) == "failed")
        ).scalar_one()
    return alert_rows, expired, discovered, failed, failed_count


def _client_rows(picture: CarePicture, scope: set[str], names: dict[str, str], open_alerts: dict[str, int],
                 now: datetime) -> list[ClientRow]:
    """One row per client in scope, with its RAG and the reasons for it, by name."""
    rows: list[ClientRow] = []
    for c in picture.clients:
        if c.name not in scope:
            continue
        lapses = c.all_lapses
        reasons = [lp.detail for lp in sorted(lapses, key=lambda lp: (-SEVERITY.get(lp.kind, 0), lp.since))]
        if not reasons and c.open_waits:
            # Amber without a lapse: say so, rather than show a colour with no reason.
            longest = max(w.business_minutes for ct in c.contacts for w in ct.waiting)
            reasons = [f"{c.open_waits} message{'' if c.open_waits == 1 else 's'} waiting for a reply, still within "
                       f"policy (the longest for {fmt_minutes(longest)} of business time)"]
        p = c.principal
        rows.append(
            ClientRow(
                name=c.name,
                internal=c.internal,
                rag=rag_of(c),
                owner=c.owner,
                owner_name=names.get(c.owner or "", c.owner or "no owner"),
                median_response_minutes=c.stats.median_business_minutes if c.stats else None,
                trend=weekly_medians(c, now),
                days_since_principal=(
                    round((now - p.last_outbound_at).total_seconds() / DAY, 1) if p and p.last_outbound_at else None
                ),
                open_alerts=open_alerts.get(c.name, 0),
                open_waits=c.open_waits,
                reasons=reasons,
                score=sum(SEVERITY.get(lp.kind, 0) for lp in lapses),
                risk_since=min((lp.since for lp in lapses), default=None),
            )
        )
    rows.sort(key=lambda r: r.name.lower())
    return rows


def _owner_rows(config: Config, picture: CarePicture, scope: set[str], open_alerts: dict[str, int],
                escalated: dict[str, int], now: datetime) -> list[OwnerRow]:
    """One row per owner holding clients in scope."""
    owners: list[OwnerRow] = []
    for o in config.settings.owners:
        held = [c for c in picture.clients if c.name in scope and c.owner == o.email]
        if not held:
            continue
        window = [
            r.business_minutes
            for c in held
            for r in c.responses
            if to_ts(now) - (c.stats.window_days if c.stats else 30) * DAY < r.replied_at <= to_ts(now)
        ]
        owners.append(
            OwnerRow(
                o.email,
                o.name,
                sorted(c.name for c in held),
                sum(open_alerts.get(c.name, 0) for c in held),
                sum(escalated.get(c.name, 0) for c in held),
                median(window) if window else None,
            )
        )
    return owners


def _never_answered(expired: Any, scope: set[str], in_scope_clients: list[ClientCare], names: dict[str, str],
                    week_start: datetime) -> tuple[list[NeverAnswered], set[tuple[str, str]]]:
    """The threads that stopped waiting unanswered this week (one line a thread), and the keys
    of the week before's, for the headline's comparison."""
    contact_names = {ct.email: ct.name for c in in_scope_clients for ct in c.contacts}
    never_answered: dict[tuple[str, str], NeverAnswered] = {}
    before: set[tuple[str, str]] = set()  # the week before's, for the headline's comparison
    for client, contact, owner, since, facts, ended in expired:
        if client not in scope:
            continue
        thread = json.loads(facts or "{}")
        # A chased thread has two alerts (unanswered and chased): one line for the thread.
        key = (client, thread.get("message_id") or since.isoformat())
        if ended <= week_start:
            before.add(key)
            continue
        never_answered.setdefault(key, NeverAnswered(
            client, contact_names.get(contact or "", contact or ""), thread.get("subject") or "",
            since, names.get(owner or "", owner or "no owner")))
    return list(never_answered.values()), before


def digest_message_id(config: Config, partner: PartnerConfig, now: datetime) -> str:
    """One digest per partner per ISO week: the id is the same for every replica and retry."""
    year, week, _ = now.isocalendar()
    h = hashlib.sha256(f"{partner.email}|{year}-W{week:02d}".encode()).hexdigest()[:20]
    domain = config.settings.notify.from_address.rpartition("@")[2] or "carewatch.local"
    return f"<digest.{year}w{week:02d}.{h}@{domain}>"


def two_weeks(store: Store, config: Config, now: datetime) -> tuple[CarePicture, CarePicture]:
    """The picture at `now` (with enough history for the 8-week trend) and a week earlier."""
    return (evaluate(store, config, now, history_days=TREND_WEEKS * 7 + 7),
            evaluate(store, config, now - timedelta(days=7), history_days=14))


def preview_digests(store: Store, config: Config, now: datetime, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    picture, previous = two_weeks(store, config, now)
    renderer = Renderer(config)
    paths = []
    for p in config.settings.partners:
        d = build_digest(store, config, p, now, picture, previous)
        _subject, text, html = render_digest(d, config, renderer)
        stem = p.email.split("@")[0]
        (directory / f"{stem}.html").write_text(html, encoding="utf-8")
        (directory / f"{stem}.txt").write_text(text, encoding="utf-8")
        paths.append(directory / f"{stem}.html")
    return paths


def queue_digests(store: Store, config: Config, now: datetime) -> list[str]:
    """Queue this week's digest for every partner (once: the Message-ID is per week)."""
    picture, previous = two_weeks(store, config, now)
    renderer = Renderer(config)
    n = config.settings.notify
    queued = []
    with store.session() as db:
        for p in config.settings.partners:
            d = build_digest(store, config, p, now, picture, previous)
            subject, text, html = render_digest(d, config, renderer)
            mid = digest_message_id(config, p, now)
            msg = build_email(
                from_addr=n.from_address,
                from_name=n.from_name,
                to=[p.email],
                subject=subject,
                text=text,
                html=html,
                message_id=mid,
                date=now.replace(tzinfo=UTC),
                headers={"X-Carewatch-Kind": "digest"},
            )
            if enqueue(store, db, msg, kind="digest", now=now):
                queued.append(mid)
        db.commit()
    return queued
