"""How a digest reads: figures and changes in words, one unit per column, the week it covers,
and the template context and rendering."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..care.picture import fmt_minutes
from ..config import Config, duration_words, parse_duration_minutes
from ..notify.render import Renderer, plural

if TYPE_CHECKING:  # (build imports this module to render)
    from .build import Digest

SPARK = "▁▂▃▄▅▆▇█"


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


def _figures(d: Digest) -> list[dict[str, Any]]:
    """The headline figures, this week against the week before, with the change."""
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
    return figures


def context(d: Digest, config: Config) -> dict[str, Any]:
    tz = ZoneInfo(config.settings.calendar.timezone)
    figures = _figures(d)
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
