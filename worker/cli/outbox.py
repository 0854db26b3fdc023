"""`carewatch outbox` and `carewatch digest`: every email sent, and the partners' digest."""

from __future__ import annotations

import enum
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..errors import UsageError
from .common import (
    NowOpt,
    _delivery_outcome,
    app,
    handled,
    opened_store,
    out,
    parse_now,
    state,
)

log = logging.getLogger(__name__)


class OutboxStatus(enum.StrEnum):
    """An outbox email's delivery state (a choice: a misspelt state would list nothing)."""

    pending = "pending"
    sent = "sent"
    failed = "failed"


outbox_app = typer.Typer(help="The outbox: every email Carewatch sends, and its delivery.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")


@outbox_app.command("list")
@handled
def outbox_list(
    status_filter: Annotated[OutboxStatus | None, typer.Option("--status", help="Only the emails in this state.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the emails as a JSON list.")] = False,
) -> None:
    """Emails in the outbox with their delivery state; failed ones are kept here, never dropped."""
    from sqlalchemy import select
    from sqlmodel import col

    from ..store.models import OutboxEmail

    with opened_store(prepare=False) as (store, _), store.session() as db:
        q = select(OutboxEmail).order_by(col(OutboxEmail.id))
        if status_filter:
            q = q.where(col(OutboxEmail.status) == status_filter.value)
        rows = db.execute(q).scalars().all()
    if as_json:
        sys.stdout.write(json.dumps([{"id": r.id, "message_id": r.message_id, "kind": r.kind, "to": r.recipients,
                                      "subject": r.subject, "status": r.status, "attempts": r.attempts,
                                      "created_at": r.created_at.isoformat(), "sent_at": r.sent_at.isoformat()
                                      if r.sent_at else None, "last_error": r.last_error} for r in rows],
                                    indent=2) + "\n")
        return
    t = Table(title="outbox")
    for heading in ("id", "status", "kind", "to", "subject", "attempts", "created", "last error"):
        t.add_column(heading, overflow="fold")
    for r in rows:
        colour = {"sent": "green", "failed": "red"}.get(r.status, "yellow")
        t.add_row(str(r.id), Text(r.status, style=colour), *(Text(v) for v in (
            r.kind, r.recipients, r.subject, str(r.attempts), f"{r.created_at:%Y-%m-%d %H:%M}", r.last_error or "")))
    out.print(t)


@outbox_app.command("deliver")
@handled
def outbox_deliver(now: NowOpt = None) -> None:
    """Deliver what is due now (the worker does this after every check)."""
    from ..notify.outbox import deliver
    from ..notify.transport import make_transport
    from ..store.locks import waited_for

    cfg = state.config()
    with opened_store(prepare=False) as (store, _), waited_for(store, "outbox"):
        rep = deliver(store, make_transport(cfg), cfg.settings.notify.from_address, parse_now(now),
                      cfg.settings.notify.give_up_delta)
    out.print(f"{len(rep.sent)} sent, {len(rep.retrying)} to retry, {len(rep.failed)} failed")
    _delivery_outcome(rep)


@outbox_app.command("retry")
@handled
def outbox_retry(
    outbox_id: Annotated[int | None, typer.Argument(help="An email's id from `carewatch outbox list`.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed email.")] = False,
    now: NowOpt = None,
) -> None:
    """Put failed emails back in the queue (after fixing what failed them): they are delivered
    at the next delivery, retried for notify.give_up_after again."""
    from ..notify.outbox import retry

    if (outbox_id is None) == (not failed):
        raise typer.BadParameter("give an email's id, or --failed for every failed email")
    with opened_store(prepare=False) as (store, _):
        n = retry(store, parse_now(now), outbox_id)
    if outbox_id is not None and n == 0:
        raise typer.BadParameter(f"no failed email has the id {outbox_id}")
    out.print(f"{n} email(s) back in the queue")


@app.command()
@handled
def digest(
    now: NowOpt = None,
    preview: Annotated[Path | None, typer.Option("--preview", help="Write each partner's digest as .html and "
                                                                   ".txt files into this folder.")] = None,
    send: Annotated[bool, typer.Option("--send", help="Queue the digests in the outbox and deliver them "
                                                      "(once per partner per week).")] = False,
) -> None:
    """The weekly partner digest: headline figures against last week, accounts at risk, every
    client's status with an 8-week trend, owner accountability and hygiene."""
    from ..digest.build import preview_digests, queue_digests
    from ..notify.outbox import deliver
    from ..notify.transport import make_transport
    from ..store.locks import waited_for

    if not preview and not send:
        raise UsageError("say what to do: --preview DIR to look at the digests, --send to send them")
    cfg = state.config()
    at = parse_now(now)
    with opened_store() as (store, _):
        if preview:
            for p in preview_digests(store, cfg, at, preview):
                out.print(f"{p}  {p.with_suffix('.txt')}", highlight=False, markup=False)
        if send:
            with waited_for(store, "digest"):
                queued = queue_digests(store, cfg, at)
            with waited_for(store, "outbox"):
                rep = deliver(store, make_transport(cfg), cfg.settings.notify.from_address, at,
                              cfg.settings.notify.give_up_delta)
            out.print(f"{len(queued)} digest(s) queued; delivery: {len(rep.sent)} sent, {len(rep.retrying)} to retry, "
                      f"{len(rep.failed)} failed")
            _delivery_outcome(rep)
