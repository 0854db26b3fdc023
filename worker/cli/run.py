"""`carewatch run` and `carewatch demo`: the worker, and the demo firm."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import UsageError
from .common import (
    NowOpt,
    app,
    handled,
    opened_store,
    out,
    parse_now,
    state,
)
from .status import render_status

log = logging.getLogger(__name__)


@app.command()
@handled
def run(
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Port for /healthz and /metrics "
                                                      "(default: service.metrics_port; -1 turns them off).")] = None,
) -> None:
    """The long-running worker: scans every mailbox on its interval (and on IMAP IDLE), raises and
    delivers alerts after each scan, sends the weekly digest. SIGTERM stops it cleanly."""
    from ..service.worker import Worker

    cfg = state.config()
    code = Worker(cfg, metrics_port=metrics_port).run()
    raise typer.Exit(code)


@app.command()
@handled
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put the demo firm (created; replaced if "
                                                          "it holds an earlier demo).")] = Path("carewatch-demo"),
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same firm and mail.")] = 7,
    now: NowOpt = None,
    run: Annotated[bool, typer.Option("--run", help="Then run the worker on it (its mail up to this moment "
                                                    "unless --now), serving /healthz and /metrics, until Ctrl-C.")]
    = False,
) -> None:
    """Generate a realistic firm (a dozen clients, months of mail in a local Maildir) and run the
    real pipeline on it: scan, status, check (alerts as .eml/.html files) and the partner digest.
    No server, account or configuration needed."""
    import shutil
    import time

    from ..alerts.check import AlertLifecycle
    from ..care.evaluate import evaluate
    from ..demo import DEFAULT_NOW, demo_now, generate
    from ..digest.build import preview_digests
    from ..ingest.run import run_scan

    marker = directory / ".carewatch-demo"
    if directory.exists() and any(directory.iterdir()):
        if not marker.exists():
            raise UsageError(f"--dir {directory} exists and is not an earlier demo; choose an empty or new folder")
        shutil.rmtree(directory)
    t0 = time.perf_counter()
    if run and not now:  # the worker runs on the clock: the firm's mail leads up to this hour
        now = f"{datetime.now(UTC):%Y-%m-%dT%H:00:00}Z"
    at = parse_now(now) if now else demo_now(None)
    firm = generate(directory.resolve(), seed=seed, now=at.replace(tzinfo=UTC) if now else DEFAULT_NOW)
    marker.touch()
    out.print(f"[bold]Carewatch demo[/]: {len(firm.clients)} clients, {firm.messages} messages in "
              f"{escape(str(firm.maildir))}")
    from ..config import load_config

    cfg = load_config(firm.config)
    state._config = cfg
    with opened_store() as (store, directory_):
        report = run_scan(cfg, store, directory_)
        out.print(f"scan: {report.stored} messages stored "
                  f"({sum(f.automated for f in report.folders)} automated) from INBOX and Sent")
        picture = evaluate(store, cfg, at)
        render_status(picture, out)
        # The picture just shown is the one the alerts come from: no second evaluation.
        check_report = AlertLifecycle(store, cfg).check(at, picture=picture)
        digest_paths = preview_digests(store, cfg, at, directory.resolve() / "digest")
    out.print(f"\n[bold]Alerts[/]: {len(check_report.new)} new lapse(s) told to their owners in "
              f"{len(check_report.emails)} email(s):")
    outbox_dir = cfg.settings.notify.dir
    for e in check_report.emails:
        stem = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in e.message_id.strip("<>"))
        out.print(f"  {', '.join(e.recipients)}: {e.subject}", highlight=False, markup=False)
        out.print(f"    {outbox_dir / (stem + '.eml')}\n    {outbox_dir / (stem + '.html')}", highlight=False,
                  markup=False)
    if check_report.held:
        out.print(f"  ({len(check_report.held)} held for quiet hours until {check_report.hold_until} UTC)")
    if digest_paths:
        out.print("\n[bold]Partner digest[/] (open in a browser):")
        for p in digest_paths:
            out.print(f"  {p}", highlight=False, markup=False)
    me = _invoked_as()
    out.print(f"\nConfig: {firm.config}\nTry:\n"
              f"  {me} --config {firm.config} status --client \"Cobalt Systems\" --now {at.isoformat()}Z\n"
              f"  {me} --config {firm.config} alerts list\n"
              f"  {me} --config {firm.config} digest --preview digest-preview --now {at.isoformat()}Z\n"
              f"  {me} demo --run          # the worker on a demo firm of today, with /healthz"
              f"\nDone in {time.perf_counter() - t0:.1f}s.", highlight=False,
              markup=False, soft_wrap=True)  # each command stays one line, to copy and paste
    if run:
        from ..service.worker import Worker

        port = cfg.settings.service.metrics_port
        out.print(f"\nThe worker on the demo firm: http://127.0.0.1:{port}/healthz and /metrics; "
                  "Ctrl-C stops it.", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(Worker(cfg).run())


def _invoked_as() -> str:
    """How to type this program again: `carewatch` when that is what the shell finds, else the
    path it was started by (`.venv/bin/carewatch` when the venv is not activated)."""
    import shlex
    import shutil

    argv0 = sys.argv[0]
    found = shutil.which("carewatch")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "carewatch"
    if os.path.basename(argv0) == "carewatch" and os.path.exists(argv0):
        return shlex.quote(os.path.relpath(argv0) if not argv0.startswith("/") else argv0)
    return f"{shlex.quote(sys.executable)} -m worker.cli"
