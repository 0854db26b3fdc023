"""The weekly partner digest: the portfolio's health at a glance, week over week.

Figures come from the same evaluation as `status` (at `now`, and at `now - 7 days` for the
previous week), so the digest and `status --json` always agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlmodel import col

from ..alerts.desk import CLOSED
from ..care.clock import to_ts
from ..care.evaluate import DAY, WEEK, CarePicture, ClientCare, evaluate, fmt_minutes, p90
from ..config import Config, PartnerConfig, duration_words, parse_duration_minutes
from ..notify.outbox import enqueue
from ..notify.render import Renderer, build_email, plural
from ..store import Store
from ..store.models import Alert, Contact, OutboxEmail, columns

log = logging.getLogger(__name__)

SEVERITY = {"chased": 4, "unanswered": 3, "silent": 2, "going_quiet": 2, "slowing": 2, "unowned": 1}
RED_KINDS = {"unanswered", "chased", "silent"}
TREND_WEEKS = 8
SPARK = "▁▂▃▄▅▆▇█"


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
    open_alerts: dict[str, int] = {}
    escalated: dict[str, int] = {}
    for name, st, _owner in alert_rows:
        open_alerts[name] = open_alerts.get(name, 0) + 1
        if st == "escalated":
            escalated[name] = escalated.get(name, 0) + 1

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
    at_risk = sorted((r for r in rows if r.score > 0), key=lambda r: (-r.score, r.risk_since or now, r.name.lower()))[
        :8
    ]

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
    client_names = {c.id: c.name for c in picture.clients}
    in_scope_clients = [c for c in picture.clients if c.name in scope]
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
        never_answered=list(never_answered.values()),
        extra={"undelivered_total": failed_count, "never_answered_before": len(before)},
    )


# --- rendering ------------------------------------------------------------------------------------
def _delta(now: float | None, before: float | None, lower_is_better: bool = True, unit: str = "",
           places: int = 0) -> dict[str, Any]:
    if now is None or before is None:
        return {"text": "", "good": None}
    d = now - before
    if abs(d) < 0.5 * 10**-places:
        return {"text": "no change", "good": None}
    good = (d < 0) if lower_is_better else (d > 0)
    return {"text": f"{'+' if d > 0 else '−'}{abs(d):.{places}f}{unit}", "good": good, "raw": d}


def _h(minutes: float | None) -> float | None:
    return None if minutes is None else minutes / 60


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def spark_text(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "·" * len(values)
    hi = max(known) or 1
    return "".join("·" if v is None else SPARK[min(7, int(v / hi * 7.999))] for v in values)


def spark_bars(values: list[float | None], height: int = 18) -> list[dict[str, Any]]:
    known = [v for v in values if v is not None]
    hi = max(known) if known else 1
    return [
        {
            "h": 1 if v is None else max(2, round((v / hi if hi else 0) * height)),
            "pad": height - (1 if v is None else max(2, round((v / hi if hi else 0) * height))),
            "missing": v is None,
            "label": "no replies" if v is None else fmt_minutes(v),
        }
        for v in values
    ]


def column_unit(minutes: list[float | None]) -> str:
    """One unit for a column of reply times, so that values compare at a glance: hours when
    any value is 90 minutes or more (as fmt_minutes switches), else minutes."""
    return "h" if any(m is not None and m >= 90 for m in minutes) else "min"


def in_unit(m: float | None, unit: str) -> str:
    """A reply time as a bare number in the column's unit ("1.5", "45"); "–" for none."""
    if m is None:
        return "–"
    return f"{m / 60:.1f}" if unit == "h" else f"{m:.0f}"


def week_days(now: datetime, tz: ZoneInfo) -> tuple[date, date]:
    """The first and last of the seven days a digest covers. A digest sent on Monday morning
    covers the week that ended on Sunday: the last day is the one that ended most recently."""
    last = (now.replace(tzinfo=UTC).astimezone(tz) - timedelta(hours=12)).date()
    return last - timedelta(days=6), last


def week_span(first: date, last: date) -> str:
    """Seven days as people write them: "9–15 Nov 2026", "26 Oct – 1 Nov 2026",
    "29 Dec 2026 – 4 Jan 2027"."""
    if first.year != last.year:
        return f"{first.day} {first:%b %Y} – {last.day} {last:%b %Y}"
    if first.month != last.month:
        return f"{first.day} {first:%b} – {last.day} {last:%b %Y}"
    return f"{first.day}–{last.day} {last:%b %Y}"


def principal_words(days: float | None) -> str:
    """When the firm last wrote to a client's principal, in whole days completed."""
    if days is None:
        return "principal: never written to"
    n = int(days)
    return "principal: written to today" if n == 0 else f"principal: {plural(n, 'day')} since we wrote"


def context(d: Digest, config: Config) -> dict[str, Any]:
    tz = ZoneInfo(config.settings.calendar.timezone)
    tw, lw = d.this_week, d.last_week

    def same_unit(now: float | None, before: float | None) -> dict[str, str]:
        """This week's and the week before's reply times in one unit, side by side."""
        unit = column_unit([now, before])
        return {k: "–" if m is None else f"{in_unit(m, unit)} {unit}" for k, m in (("value", now), ("before", before))}

    def share(x: float | None) -> str:
        return "–" if x is None else f"{x * 100:.0f}%"

    figures = [
        {
            "label": "Median first response",
            **same_unit(tw.median_response_minutes, lw.median_response_minutes),
            "delta": _delta(_h(tw.median_response_minutes), _h(lw.median_response_minutes), unit=" h", places=1),
        },
        {
            "label": "p90 first response",
            **same_unit(tw.p90_response_minutes, lw.p90_response_minutes),
            "delta": _delta(_h(tw.p90_response_minutes), _h(lw.p90_response_minutes), unit=" h", places=1),
        },
        {
            "label": "Answered within policy",
            "value": share(tw.within_policy_share),
            "before": share(lw.within_policy_share),
            "delta": _delta(
                None if tw.within_policy_share is None else tw.within_policy_share * 100,
                None if lw.within_policy_share is None else lw.within_policy_share * 100,
                lower_is_better=False,
                unit=" pts",
            ),
        },
        {
            "label": "Open waits",
            "value": str(tw.open_waits),
            "before": str(lw.open_waits),
            "delta": _delta(tw.open_waits, lw.open_waits),
        },
        {
            "label": "Chasers",
            "value": str(tw.chasers),
            "before": str(lw.chasers),
            "delta": _delta(tw.chasers, lw.chasers),
        },
        {
            "label": "Silent principals",
            "value": str(tw.silent_principals),
            "before": str(lw.silent_principals),
            "delta": _delta(tw.silent_principals, lw.silent_principals),
        },
        {
            "label": "Clients going quiet",
            "value": str(tw.going_quiet_clients),
            "before": str(lw.going_quiet_clients),
            "delta": _delta(tw.going_quiet_clients, lw.going_quiet_clients),
        },
        {
            # Open waits fall when threads stop waiting unanswered: this says what that fall hides.
            "label": "Never answered",
            "value": str(len(d.never_answered)),
            "before": str(d.extra.get("never_answered_before", 0)),
            "delta": _delta(len(d.never_answered), d.extra.get("never_answered_before", 0)),
        },
    ]
    rag_count = {k: sum(1 for r in d.clients if r.rag == k) for k in ("red", "amber", "green")}
    total = max(1, len(d.clients))
    first, last = week_days(d.now, tz)
    reply_unit = column_unit([r.median_response_minutes for r in d.clients])
    owner_unit = column_unit([o.median_response_minutes for o in d.owners])
    clients = [
        {
            "name": r.name,
            "internal": r.internal,
            "rag": r.rag,
            "owner": r.owner_name,
            "median": in_unit(r.median_response_minutes, reply_unit),
            "bars": spark_bars(r.trend),
            "spark": spark_text(r.trend),
            # Whole days completed, as the emails and the reasons count them.
            "principal_days": "–" if r.days_since_principal is None else f"{int(r.days_since_principal)}",
            "principal": principal_words(r.days_since_principal),
            "open_alerts": r.open_alerts,
            # Why it is amber or red, in a few words: every colour has its reason.
            "why": _sentence(r.reasons[0]) if r.rag != "green" and r.reasons else "",
        }
        for r in d.clients
    ]
    return {
        "subject": f"Client care this week: {rag_count['red']} red, {rag_count['amber']} amber, "
        f"{rag_count['green']} green",
        "partner_name": d.partner.name,
        "week": week_span(first, last),
        # For templates of one's own that name the first and last day themselves.
        "week_from": f"{first.day} {first:%b}",
        "week_to": f"{last.day} {last:%b %Y}",
        "reply_unit": reply_unit,
        "owner_unit": owner_unit,
        "timezone": config.settings.calendar.timezone,
        "figures": figures,
        "rag": rag_count,
        "rag_pct": {k: round(v * 100 / total) for k, v in rag_count.items()},
        "at_risk": [
            {
                "name": r.name,
                "owner": r.owner_name,
                "reasons": [_sentence(x) for x in r.reasons[:3]],
                "more": max(0, len(r.reasons) - 3),
                "days": None if r.risk_since is None else max(0, (d.now - r.risk_since).days),
                "rag": r.rag,
            }
            for r in d.at_risk
        ],
        "clients": clients,
        "owners": [
            {
                "name": o.name,
                "clients": len(o.clients),
                "client_names": ", ".join(o.clients),
                "open": o.open_alerts,
                "escalated": o.escalated_alerts,
                "median": in_unit(o.median_response_minutes, owner_unit),
            }
            for o in d.owners
        ],
        "unowned": d.unowned,
        "no_principal": d.no_principal,
        "discovered": d.discovered,
        "undelivered": d.undelivered,
        "undelivered_total": d.extra.get("undelivered_total", 0),
        "never_answered": [
            {"client": n.client, "contact": n.contact, "subject": n.subject, "owner": n.owner_name,
             "since": n.since.replace(tzinfo=ZoneInfo("UTC")).astimezone(tz).strftime("%d %b %Y")}
            for n in d.never_answered
        ],
        "waits_expire_after": duration_words(
            parse_duration_minutes(config.settings.policy.waits_expire_after, business=False)),
    }


def render_digest(d: Digest, config: Config, renderer: Renderer | None = None) -> tuple[str, str, str]:
    """(subject, text, html)."""
    ctx = context(d, config)
    text, html = (renderer or Renderer(config)).render("digest", ctx)
    return ctx["subject"], text, html


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
