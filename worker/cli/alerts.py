"""`carewatch check` and `carewatch alerts`: lapses into alerts, and the lifecycle by hand."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..errors import UsageError
from .common import (
    NowOpt,
    _delivery_outcome,
    app,
    err,
    handled,
    opened_store,
    out,
    parse_now,
    state,
)
from .status import print_scan_notes

log = logging.getLogger(__name__)


@app.command()
@handled
def check(
    now: NowOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run",
                                          help="Show what would be sent; send and change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    scan_first: Annotated[bool, typer.Option("--scan", help="Scan the mailboxes first.")] = False,
) -> None:
    """Turn current lapses into alerts and deliver them: one email per owner per check with all
    their new or escalated lapses; never the same episode twice; quiet hours respected."""
    from ..alerts.check import AlertLifecycle
    from ..store.locks import waited_for

    at = parse_now(now)
    with opened_store(scan=scan_first) as (store, _):
        with contextlib.nullcontext() if dry_run else waited_for(store, "check"):
            report = AlertLifecycle(store, state.config()).check(at, dry_run=dry_run)
        print_scan_notes(store, at)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        return
    head = "[bold]dry run[/]: nothing sent, nothing changed. " if dry_run else ""
    expired = f", {len(report.expired)} expired unanswered" if report.expired else ""
    out.print(f"{head}{len(report.new)} new, {len(report.escalated)} escalated, {len(report.resolved)} resolved"
              f"{expired}, {len(report.snoozed)} snoozed alert(s); {len(report.emails)} email(s)")
    if report.held:
        out.print(f"quiet hours: {len(report.held)} alert(s) held until {report.hold_until:%Y-%m-%d %H:%M} UTC")
    for c in report.commands:
        out.print(f"reply: {c}", highlight=False, markup=False)
    for e in report.emails:
        when = f"\nHeld for quiet hours: goes at {e.held_until:%Y-%m-%d %H:%M} UTC" if e.held_until else ""
        out.print(f"\nTo: {', '.join(e.recipients)}\nSubject: {e.subject}{when}", highlight=False, markup=False)
        if dry_run:
            out.print(e.text, highlight=False, markup=False)
    if report.delivery:
        d = report.delivery
        out.print(f"delivery: {len(d.sent)} sent, {len(d.retrying)} to retry, {len(d.failed)} failed")
        for problem in d.errors:
            err.print(f"[yellow]delivery:[/] {escape(problem)}", highlight=False)
        _delivery_outcome(d)


alerts_app = typer.Typer(help="List, snooze and close alerts.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("list")
@handled
def alerts_list(
    show_all: Annotated[bool, typer.Option("--all", help="Include closed alerts: resolved, and expired (never "
                                                           "answered; see policy.waits_expire_after).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the alerts as a JSON list.")] = False,
) -> None:
    """The alerts and where each stands."""
    from sqlalchemy import select
    from sqlmodel import col

    from ..alerts.lifecycle import CLOSED
    from ..store.models import Alert

    with opened_store(prepare=False) as (store, _), store.session() as db:
        q = select(Alert).order_by(col(Alert.client_name), col(Alert.since))
        if not show_all:
            q = q.where(col(Alert.state).notin_(CLOSED))
        rows = db.execute(q).scalars().all()
    if as_json:
        sys.stdout.write(json.dumps([{k: (v.isoformat() if isinstance(v, datetime) else v)
                                      for k, v in a.model_dump().items()} for a in rows], indent=2) + "\n")
        return
    t = Table(title="alerts")
    for heading in ("id", "state", "kind", "client", "contact", "owner", "level", "since", "detail"):
        t.add_column(heading, overflow="fold")
    for a in rows:
        state_txt = a.state + (f" until {a.snoozed_until:%Y-%m-%d %H:%M}" if a.state == "snoozed" and a.snoozed_until
                               else "")
        t.add_row(*(Text(v) for v in (str(a.id), state_txt, a.kind, a.client_name, a.contact_email or "",
                                      a.owner_email or "none", str(a.level), f"{a.since:%Y-%m-%d}", a.detail)))
    out.print(t)


def _set_alert(alert_id: int, event: str, **kw: Any) -> None:
    from ..alerts.lifecycle import CLOSED, transition
    from ..store.models import Alert

    with opened_store(prepare=False) as (store, _), store.session() as db:
        a = db.get(Alert, alert_id)
        if a is None:
            raise UsageError(f"no alert with id {alert_id} (see `carewatch alerts list`)")
        if a.state in CLOSED:
            raise UsageError(f"alert {alert_id} is already {a.state}")
        transition(a, event, parse_now(None), **kw)
        db.add(a)
        db.commit()
        out.print(f"alert {alert_id} ({a.kind}, {a.client_name}): {a.state}", markup=False)


@alerts_app.command("snooze")
@handled
def alerts_snooze(
    alert_id: Annotated[int, typer.Argument(help="Alert id from `carewatch alerts list`.")],
    span: Annotated[str, typer.Option("--for", help="How long: e.g. 4h, 3d, 1w.")] = "1d",
) -> None:
    """Hear about an alert again later."""
    from datetime import timedelta

    from ..config import parse_duration_minutes

    try:
        minutes = parse_duration_minutes(span, business=False)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--for") from None
    longest = state.config().settings.notify.max_snooze
    if minutes > parse_duration_minutes(longest, business=False):
        raise typer.BadParameter(f"{span!r} is longer than notify.max_snooze ({longest})", param_hint="--for")
    _set_alert(alert_id, "snoozed", until=parse_now(None) + timedelta(minutes=minutes))


@alerts_app.command("ack")
@handled
def alerts_ack(alert_id: Annotated[int, typer.Argument(help="Alert id from `carewatch alerts list`.")]) -> None:
    """Close an alert: it has been dealt with; no more reminders or escalations for this episode."""
    _set_alert(alert_id, "done", by="cli")
