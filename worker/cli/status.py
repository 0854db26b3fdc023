"""`carewatch status` and `carewatch explain`: the care picture, and why one message waits."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .common import (
    NowOpt,
    app,
    err,
    handled,
    opened_store,
    out,
    parse_now,
    state,
)

log = logging.getLogger(__name__)


def _age(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return "never"
    days = (now - dt).total_seconds() / 86400
    return f"{days * 24:.0f}h ago" if days < 1 else f"{days:.0f}d ago"


def render_status(picture: Any, console: Console) -> None:
    from ..care.picture import fmt_minutes

    t = Table(title=f"Care at {picture.now:%Y-%m-%d %H:%M} UTC", show_lines=False, expand=False)
    for col in ("client", "contact", "role", "owner", "last in", "last out", "waiting", "median reply",
                "lapses"):
        t.add_column(col, overflow="fold")
    for c in picture.clients:
        first = True
        client_lapses = ", ".join(sorted({lp.kind for lp in c.lapses}))
        if not c.contacts:
            t.add_row(escape(c.name), "-", "-", escape(c.owner) if c.owner else "[red]none[/]", "", "", "", "",
                      client_lapses)
        for ct in c.contacts:
            waiting = ""
            if ct.waiting:
                oldest = max(w.business_minutes for w in ct.waiting)
                waiting = f"{len(ct.waiting)} ({fmt_minutes(oldest)})"
            med = (fmt_minutes(ct.stats.median_business_minutes)
                   if ct.stats and ct.stats.median_business_minutes is not None else "")
            kinds = sorted({lp.kind for lp in ct.lapses} | ({k for k in client_lapses.split(", ") if k}
                                                              if first else set()))
            lapses = ", ".join(f"[red]{k}[/]" for k in kinds)
            # Names come from mail headers (discovered contacts): text, never markup.
            name = escape(ct.name) + (" [dim](discovered)[/]" if ct.discovered else "")
            t.add_row(f"{escape(c.name)}{' [dim](internal)[/]' if c.internal else ''}" if first else "",
                      name, escape(ct.role), (escape(c.owner) if c.owner else "[red]none[/]") if first else "",
                      _age(ct.last_inbound_at, picture.now), _age(ct.last_outbound_at, picture.now),
                      waiting, med, lapses)
            first = False
    console.print(t)
    n = len(picture.lapses)
    console.print(f"{len(picture.clients)} client(s), {n} lapse(s), "
                  f"{picture.messages_considered} message(s) considered")


def print_scan_notes(store: Any, at: datetime) -> None:
    """On stderr, so that --json output stays one document."""
    from ..ingest.run import scan_notes

    for note in scan_notes(state.config(), store, at):
        err.print(f"[yellow]note[/]: {escape(note)}", highlight=False, soft_wrap=True)


@app.command()
@handled
def status(
    now: NowOpt = None,
    client: Annotated[str | None, typer.Option("--client", help="Only this client (by name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the machine-readable document "
                                                          "(see README: status --json).")] = False,
    scan_first: Annotated[bool, typer.Option("--scan", help="Scan the mailboxes first.")] = False,
) -> None:
    """The care picture per client and named contact at a moment: last word each way, who is
    waiting and for how long (business time), response times, and the current lapses."""
    from ..care.evaluate import evaluate

    at = parse_now(now)
    with opened_store(scan=scan_first) as (store, _):
        picture = evaluate(store, state.config(), at, client_filter=client)
        print_scan_notes(store, at)
    if client and not picture.clients:
        raise UsageError(f"--client {client!r}: no such client in the configuration")
    if as_json:
        # orjson, one client at a time: the stdlib's encoder falls back to pure Python with
        # indent, which took longer than the evaluation itself for a million-message store.
        sys.stdout.flush()
        picture.write_json(sys.stdout.buffer)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()
    else:
        render_status(picture, out)


@app.command()
@handled
def explain(
    message_id: Annotated[str, typer.Argument(help="The Message-ID of a stored message, with or without <>.")],
    now: NowOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
) -> None:
    """Why one stored message does or does not make anyone wait: its direction, client and
    contact, whether it is automated (by which rule) or an acknowledgement (and why), its
    thread and how it was joined, and the wait or reply it starts or ends in business minutes."""
    from ..care.explain import explain as explain_message

    with opened_store() as (store, _):
        e = explain_message(store, state.config(), message_id, parse_now(now))
    if as_json:
        sys.stdout.write(json.dumps(e.as_dict(), indent=2, ensure_ascii=False) + "\n")
        return
    rows = [("message", e.message_id), ("subject", e.subject), ("from", e.sender), ("sent", e.sent_at),
            ("seen in", f"{e.mailbox}/{e.folder}"), ("direction", e.direction), ("client", e.client or "none"),
            ("contacts", ", ".join(e.contacts) or "none"),
            ("automated", f"yes, by the rule {e.automated_rule!r}" if e.automated else "no"),
            ("acknowledgement", ("yes" if e.acknowledgement else "no")
             + (f": {e.acknowledgement_why}" if e.acknowledgement_why else "")),
            ("thread", f"{e.thread} ({e.thread_messages} message(s)), joined by {e.thread_joined_by}"),
            ("effect", e.effect)]
    for k, v in rows:
        out.print(f"[bold]{k:>16}[/]  {escape(v)}", highlight=False, soft_wrap=True)
