"""The `carewatch` command line (typer: typed options, useful --help on every command)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from .config import ENV_CONFIG, Config, load_config, resolve_secret
from .errors import CarewatchError, ConfigError, ExitCode
from .logs import setup_logging

log = logging.getLogger(__name__)
app = typer.Typer(
    name="carewatch",
    help="Watches a firm's shared mailboxes and tells the accountable owner when client care lapses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class State:
    config_path: str | None = None
    _config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


state = State()


def handled(fn: F) -> F:
    """Turn Carewatch errors into a clear message and the named exit code (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CarewatchError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(int(exc.exit_code)) from None

    return wrapper  # type: ignore[return-value]


def parse_now(value: str | None) -> datetime:
    """--now accepts ISO 8601 (a trailing Z or an offset); naive values are taken as UTC."""
    if not value:
        return datetime.now(UTC).replace(tzinfo=None)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError([f"--now {value!r} is not an ISO 8601 time, e.g. 2026-11-20T10:00:00Z"]) from None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", envvar=ENV_CONFIG, help=f"Config file (TOML). Default: ${ENV_CONFIG}."),
]
NowOpt = Annotated[
    str | None,
    typer.Option("--now", help="Evaluate as of this moment (ISO 8601, e.g. 2026-11-20T10:00:00Z); "
                               "replays any past moment. Default: the current time."),
]


@app.callback()
def main_callback(
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", envvar="CAREWATCH_LOG_LEVEL",
                                           help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    json_logs: Annotated[bool | None, typer.Option("--json-logs/--text-logs",
                                                   help="Log format. Default: JSON unless on a terminal.")] = None,
) -> None:
    state.config_path = config
    state._config = None
    setup_logging(log_level, json_logs)


@app.command()
@handled
def validate(
    check_secrets: Annotated[bool, typer.Option("--check-secrets",
                                                help="Also check that every password/secret can be read.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero (7) when there are findings.")] = False,
) -> None:
    """Check the configuration: list every problem at once, then the findings about client care
    (a client without exactly one owner, a client without a principal)."""
    cfg = state.config()
    s = cfg.settings
    if check_secrets:
        problems = []
        for mb in s.mailboxes:
            if mb.kind == "imap" and mb.auth == "password":
                try:
                    resolve_secret(mb.password_env, mb.password_file, f"mailboxes[{mb.name}].password")
                except ConfigError as exc:
                    problems += exc.problems
        if s.notify.smtp and s.notify.smtp.username:
            try:
                resolve_secret(s.notify.smtp.password_env, s.notify.smtp.password_file, "notify.smtp.password")
            except ConfigError as exc:
                problems += exc.problems
        if problems:
            raise ConfigError(problems, str(cfg.path))
    contacts = sum(len(c.contacts) for c in s.clients)
    out.print(f"[green]ok[/]: {cfg.path}: {len(s.mailboxes)} mailbox(es), {len(s.clients)} client(s), "
              f"{contacts} contact(s), {len(s.owners)} owner(s), {len(s.partners)} partner(s)")
    if cfg.findings:
        out.print(f"[yellow]{len(cfg.findings)} finding(s)[/]:")
        for f in cfg.findings:
            out.print(f"  - {f}", highlight=False)
        if strict:
            raise typer.Exit(int(ExitCode.FINDINGS))


class RichFolderProgress:
    """A progress bar per folder, for terminals."""

    def __init__(self, console: Console) -> None:
        self.p = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), console=console, transient=False)
        self.task: Any = None

    def start(self, mailbox: str, folder: str, total: int) -> None:
        if total:
            self.p.start()
            self.task = self.p.add_task(f"{mailbox}/{folder}", total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.p.advance(self.task, n)

    def finish(self) -> None:
        if self.task is not None:
            self.p.stop()
            self.task = None


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
    from .app import prepare_store, run_scan

    cfg = state.config()
    store, directory = prepare_store(cfg)
    try:
        progress = RichFolderProgress(err) if err.is_terminal and not as_json else None
        report = run_scan(cfg, store, directory, progress=progress, mailboxes=mailbox)
    finally:
        store.dispose()
    if as_json:
        out.print_json(json.dumps({
            "ok": report.ok, "errors": report.errors,
            "folders": [vars(f) for f in report.folders],
        }))
    else:
        t = Table(title="scan")
        for col in ("mailbox", "folder", "new", "stored", "duplicates", "automated", "skipped", "seconds"):
            t.add_column(col, justify="right" if col not in ("mailbox", "folder") else "left")
        for f in report.folders:
            note = " (unchanged)" if f.unchanged else (" (UIDVALIDITY reset)" if f.uidvalidity_reset else "")
            t.add_row(f.mailbox, f.folder + note, str(f.new), str(f.stored), str(f.duplicates),
                      str(f.automated), str(f.skipped), f"{f.seconds:.2f}")
        out.print(t)
        for e in report.errors:
            err.print(f"[red]error:[/] {e}", highlight=False)
    if not report.ok:
        raise typer.Exit(int(ExitCode.MAILBOX))


def _age(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return "never"
    days = (now - dt).total_seconds() / 86400
    return f"{days * 24:.0f}h ago" if days < 1 else f"{days:.0f}d ago"


def render_status(picture: Any, console: Console) -> None:
    from .care.evaluate import fmt_minutes

    t = Table(title=f"Care at {picture.now:%Y-%m-%d %H:%M} UTC", show_lines=False, expand=False)
    for col in ("client", "contact", "role", "owner", "last in", "last out", "waiting", "median reply",
                "lapses"):
        t.add_column(col, overflow="fold")
    for c in picture.clients:
        first = True
        client_lapses = ", ".join(sorted({lp.kind for lp in c.lapses}))
        if not c.contacts:
            t.add_row(c.name, "-", "-", c.owner or "[red]none[/]", "", "", "", "", client_lapses)
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
            name = ct.name + (" [dim](discovered)[/]" if ct.discovered else "")
            t.add_row(f"{c.name}{' [dim](internal)[/]' if c.internal else ''}" if first else "",
                      name, ct.role, (c.owner or "[red]none[/]") if first else "",
                      _age(ct.last_inbound_at, picture.now), _age(ct.last_outbound_at, picture.now),
                      waiting, med, lapses)
            first = False
    console.print(t)
    n = len(picture.lapses)
    console.print(f"{len(picture.clients)} client(s), {n} lapse(s), "
                  f"{picture.messages_considered} message(s) considered")


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
    from .app import prepare_store, run_scan
    from .care.evaluate import evaluate

    cfg = state.config()
    at = parse_now(now)
    store, directory = prepare_store(cfg)
    try:
        if scan_first:
            run_scan(cfg, store, directory)
        picture = evaluate(store, cfg, at, client_filter=client)
    finally:
        store.dispose()
    if client and not picture.clients:
        raise ConfigError([f"--client {client!r}: no such client in the configuration"])
    if as_json:
        sys.stdout.write(json.dumps(picture.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        render_status(picture, out)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

__all__ = ["app", "main", "parse_now", "Path"]
