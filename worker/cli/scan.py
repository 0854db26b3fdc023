"""`carewatch scan`: read what is new, with a progress bar per folder on a terminal."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Column, Table

from ..errors import ExitCode, UsageError
from .common import (
    app,
    err,
    handled,
    opened_store,
    out,
    state,
    stopped_by_ctrl_c,
)

log = logging.getLogger(__name__)


class RichFolderProgress:
    """A progress bar per folder, for terminals. Each folder gets a display of its own: one
    display restarted for the next folder would draw the finished folders' bars again."""

    def __init__(self, console: Console, label_width: int = 0) -> None:
        self.console = console
        self.label_width = label_width  # the longest "mailbox/folder", so the bars line up
        self.p: RichProgress | None = None

    def start(self, mailbox: str, folder: str, total: int) -> None:
        if total:
            # A folder found by a pattern may be longer than every name in the config.
            self.label_width = max(self.label_width, len(f"{mailbox}/{folder}"))
            label = TextColumn("{task.description}", table_column=Column(min_width=self.label_width))
            self.p = RichProgress(label, BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=self.console, transient=False)
            self.p.add_task(escape(f"{mailbox}/{folder}"), total=total)  # folder names are not markup
            self.p.start()

    def advance(self, n: int) -> None:
        if self.p is not None:
            self.p.advance(self.p.task_ids[0], n)

    def finish(self) -> None:
        if self.p is not None:
            self.p.stop()
            self.p = None


@app.command()
@handled
def scan(
    mailbox: Annotated[list[str] | None, typer.Option("--mailbox", "-m",
                                                      help="Scan only this mailbox (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scan report as JSON.")] = False,
) -> None:
    """Read every configured mailbox folder incrementally and record each message's headers.

    Never changes the mailbox: folders are opened read-only and bodies are only peeked at.
    A second run reads only what is new."""
    import time

    from ..ingest.folders import folder_states, mailboxes_listed, matches_no_folder, unmatched_patterns
    from ..ingest.run import run_scan

    began = time.perf_counter()
    cfg = state.config()
    names = [mb.name for mb in cfg.settings.mailboxes]
    unknown = [m for m in mailbox or [] if m not in names]
    if unknown:  # else a typo scans nothing and says all is well
        raise UsageError("; ".join(f"--mailbox {m!r}: no such mailbox; the configured ones are "
                           f"{', '.join(map(repr, names)) or 'none'}" for m in unknown))
    with opened_store() as (store, directory), stopped_by_ctrl_c() as stop:
        width = max((len(f"{mb.name}/{f}") for mb in cfg.settings.mailboxes for f in mb.folders), default=0)
        progress = RichFolderProgress(err, width) if err.is_terminal and not as_json else None
        scan_began = time.perf_counter()
        report = run_scan(cfg, store, directory, stop=stop, progress=progress, mailboxes=mailbox)
        scan_seconds = time.perf_counter() - scan_began
        rows, listed = folder_states(store), mailboxes_listed(store)
        unmatched = {mb.name: found for mb in cfg.settings.mailboxes if not mailbox or mb.name in mailbox
                     if (found := unmatched_patterns(mb, rows, listed))}
    if as_json:
        out.print_json(json.dumps({
            "ok": report.ok, "errors": report.errors,
            "folders": [vars(f) for f in report.folders],
            "unmatched_patterns": unmatched,
            # The scan itself, and the whole command (the config and the store's set-up too);
            # what is left of the wall time is Python starting and importing.
            "seconds": {"scan": round(scan_seconds, 4), "command": round(time.perf_counter() - began, 4)},
        }))
    else:
        t = Table(title="scan")
        for col in ("mailbox", "folder", "new", "stored", "duplicates", "automated", "skipped", "seconds"):
            t.add_column(col, justify="right" if col not in ("mailbox", "folder") else "left")
        for f in report.folders:
            note = (" (interrupted)" if f.interrupted else " (unchanged)" if f.unchanged
                    else " (UIDVALIDITY reset)" if f.uidvalidity_reset else "")
            t.add_row(escape(f.mailbox), escape(f.folder) + note, str(f.new), str(f.stored), str(f.duplicates),
                      str(f.automated), str(f.skipped), f"{f.seconds:.2f}")
        out.print(t)
        for e in report.errors:
            err.print(f"[red]error:[/] {escape(e)}", highlight=False)
        for name, patterns in unmatched.items():
            err.print(f"note: mailbox {escape(repr(name))}: {escape(matches_no_folder(patterns))}", highlight=False)
    if stop.is_set():
        err.print("interrupted: what was read is stored; the next scan goes on from there", highlight=False)
        raise typer.Exit(130)
    if not report.ok:
        raise typer.Exit(int(ExitCode.MAILBOX))
