"""The `carewatch` command line (typer: typed options, useful --help on every command)."""

from __future__ import annotations

import contextlib
import enum
import errno
import inspect
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Column, Table
from rich.text import Text

from ..defaults import ENV_CONFIG
from ..errors import CarewatchError, ConfigError, ExitCode, UsageError
from ..logs import setup_logging, stderr_console

if TYPE_CHECKING:  # the config's models take a tenth of a second to build: not for --help
    from ..config.settings import Config

log = logging.getLogger(__name__)
app = typer.Typer(
    name="carewatch",
    help="Watches a firm's shared mailboxes and tells the accountable owner when client care lapses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
class _Stdout(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`carewatch status | head`): exit as a shell pipeline expects
        (141, SIGPIPE), not 1 (rich's default), which would read as a failure."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141)


out = _Stdout()
err = stderr_console()  # shared with text logs, so a log line never crosses a live progress bar

F = TypeVar("F", bound=Callable[..., Any])


class State:
    config_path: str | None = None
    _config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            from ..config.settings import load_config

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
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(int(exc.exit_code)) from None
        except BrokenPipeError:
            # The reader went away (`carewatch status --json | head`): nothing left to say.
            out.on_broken_pipe()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
                where = f" {exc.filename}" if exc.filename else " the output"
                err.print(f"[bold red]error:[/] cannot write{escape(where)}: {exc.strerror}; nothing in the store "
                          "was changed by writing it", markup=True, highlight=False, soft_wrap=True)
            elif exc.filename:  # a folder or file given to write to: missing, read-only, not a folder...
                err.print(f"[bold red]error:[/] cannot create or write {escape(str(exc.filename))}: "
                          f"{exc.strerror}", markup=True, highlight=False, soft_wrap=True)
            else:
                raise
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def opened_store(prepare: bool = True, scan: bool = False) -> Iterator[tuple[Any, Any]]:
    """The store for one command, disposed whatever happens. `prepare` also migrates and syncs
    the directory from the config (commands that classify or evaluate need it); `scan` scans the
    mailboxes first. Yields (store, directory); directory is None without `prepare`."""
    from ..ingest.run import configured_store, prepare_store, run_scan

    cfg = state.config()
    if prepare:
        store, directory = prepare_store(cfg)
    else:
        store, directory = configured_store(cfg), None
    try:
        if scan:
            assert directory is not None, "scanning needs the directory: opened_store(prepare=True)"
            run_scan(cfg, store, directory)
        yield store, directory
    finally:
        store.dispose()


def parse_now(value: str | None) -> datetime:
    """--now accepts ISO 8601 (a trailing Z or an offset); naive values are taken as UTC."""
    if not value:
        return datetime.now(UTC).replace(tzinfo=None)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now {value!r} is not an ISO 8601 time, e.g. 2026-11-20T10:00:00Z") from None
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


class LogLevel(enum.StrEnum):
    """A choice, so that a wrong CAREWATCH_LOG_LEVEL is a clear refusal, not a traceback."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


@app.callback()
def main_callback(
    config: ConfigOpt = None,
    log_level: Annotated[LogLevel, typer.Option("--log-level", envvar="CAREWATCH_LOG_LEVEL", case_sensitive=False,
                                                help="How much to log.")] = LogLevel.INFO,
    json_logs: Annotated[bool | None, typer.Option("--json-logs/--text-logs",
                                                   help="Log format. Default: JSON unless on a terminal.")] = None,
) -> None:
    state.config_path = config
    state._config = None
    setup_logging(log_level.value, json_logs)


@app.command()
@handled
def validate(
    check_secrets: Annotated[bool, typer.Option(
        "--check-secrets", help="Also check that every password and secret can be read: mailbox and SMTP "
                                "passwords, the XOAUTH2 client secret or service account key.")] = False,
    connect: Annotated[bool, typer.Option(
        "--connect",
        help="Also try what the worker will do, changing nothing: log in to each mailbox and open its "
             "folders, open the store, and ask the SMTP server whether it takes mail from the sender to "
             "every owner and partner (nothing is sent). Implies --check-secrets. Exit 4, 5 or 6 when "
             "a mailbox, the store or delivery fails.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero (7) when there are findings.")] = False,
) -> None:
    """Check the configuration: list every problem at once, then the findings about client care
    (a client without exactly one owner, a client without a principal).

    With --connect, then try each mailbox, the store and delivery, and say what a first start
    would meet: a refused login, a folder the server names otherwise (with the names it has),
    a relay that refuses an owner's address."""
    cfg = state.config()
    s = cfg.settings
    if check_secrets or connect:
        problems = []
        for mb in s.mailboxes:
            try:
                if mb.kind == "imap" and mb.auth == "password":
                    mb.read_password()
                elif mb.kind == "imap" and mb.auth == "xoauth2":
                    from ..oauth import check_oauth_secrets

                    check_oauth_secrets(mb)
            except ConfigError as exc:
                problems += exc.problems
        if s.notify.smtp and s.notify.smtp.username:
            try:
                s.notify.smtp.read_password()
            except ConfigError as exc:
                problems += exc.problems
        try:
            s.store.connect_url()
        except ConfigError as exc:
            problems += exc.problems
        if problems:
            raise ConfigError(problems, str(cfg.path))
    contacts = sum(len(c.contacts) for c in s.clients)
    out.print(f"[green]ok[/]: {escape(str(cfg.path))}: {len(s.mailboxes)} mailbox(es), {len(s.clients)} client(s), "
              f"{contacts} contact(s), {len(s.owners)} owner(s), {len(s.partners)} partner(s)")
    if cfg.findings:
        out.print(f"[yellow]{len(cfg.findings)} finding(s)[/]:")
        for f in cfg.findings:
            out.print(f"  - {f}", highlight=False, markup=False)
    if connect:
        failed = _print_connections(cfg)
        if failed:
            raise typer.Exit(int(failed))
    if cfg.findings and strict:
        raise typer.Exit(int(ExitCode.FINDINGS))


def _print_connections(cfg: Config) -> ExitCode | None:
    """Run the --connect checks, printing each as it finishes; the first failure's exit code."""
    from ..config.connect import Check, check_delivery, check_mailbox, check_store

    out.print("Connections (nothing is read, changed or sent):")
    steps: list[Callable[[], Check]] = [partial(check_mailbox, mb) for mb in cfg.settings.mailboxes]
    steps += [partial(check_store, cfg), partial(check_delivery, cfg)]
    failed: ExitCode | None = None
    for step in steps:
        with err.status("connecting…") if err.is_terminal else contextlib.nullcontext():
            check = step()
        mark = "[green]ok[/]    " if check.ok else "[bold red]failed[/]"
        out.print(f"  {mark} {escape(check.subject)}", highlight=False)
        for line in [Text(line) for line in check.lines] + [Text.assemble(("note", "yellow"), ": ", n)
                                                           for n in check.notes]:
            out.print(Padding(line, (0, 0, 0, 9), expand=False), highlight=False)
        if not check.ok and failed is None:
            failed = check.exit_code
    return failed


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


@contextmanager
def stopped_by_ctrl_c() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event: the scan stores the batch in hand and stops. A second
    one stops at once (the open batch's transaction is rolled back; nothing half-written)."""
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err.print("stopping after the batch in hand (Ctrl-C again to stop at once)", highlight=False)

    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread
        yield stop
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


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

    from ..ingest.run import run_scan
    from ..ingest.scan import folder_states, mailboxes_listed, matches_no_folder, unmatched_patterns

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


def _age(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return "never"
    days = (now - dt).total_seconds() / 86400
    return f"{days * 24:.0f}h ago" if days < 1 else f"{days:.0f}d ago"


def render_status(picture: Any, console: Console) -> None:
    from ..care.evaluate import fmt_minutes

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


def _print_scan_notes(store: Any, at: datetime) -> None:
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
        _print_scan_notes(store, at)
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
    from ..alerts.desk import AlertDesk
    from ..store.locks import waited_for

    at = parse_now(now)
    with opened_store(scan=scan_first) as (store, _):
        with contextlib.nullcontext() if dry_run else waited_for(store, "check"):
            report = AlertDesk(store, state.config()).check(at, dry_run=dry_run)
        _print_scan_notes(store, at)
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


def _delivery_outcome(rep: Any) -> None:
    """Exit 6 (delivery) when an email failed for good, or none could be sent now."""
    if not rep.ok:
        raise typer.Exit(int(ExitCode.DELIVERY))


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

    from ..alerts.desk import CLOSED
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
    from ..alerts.desk import CLOSED, transition
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

    from ..config.settings import parse_duration_minutes

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

    from ..alerts.desk import AlertDesk
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
    from ..config.settings import load_config

    cfg = load_config(firm.config)
    state._config = cfg
    with opened_store() as (store, directory_):
        report = run_scan(cfg, store, directory_)
        out.print(f"scan: {report.stored} messages stored "
                  f"({sum(f.automated for f in report.folders)} automated) from INBOX and Sent")
        picture = evaluate(store, cfg, at)
        render_status(picture, out)
        # The picture just shown is the one the alerts come from: no second evaluation.
        check_report = AlertDesk(store, cfg).check(at, picture=picture)
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


def _flowing_help(*apps: typer.Typer) -> None:
    """Docstrings are wrapped to fit the source, not the terminal, and Typer's rich help keeps
    every line break as it is: `--help` and the command list would break sentences mid-line.
    Each paragraph becomes one line, which the help then wraps to the terminal's width."""
    for a in apps:
        for info in a.registered_commands:
            doc = info.help or inspect.getdoc(info.callback)
            if doc:
                info.help = "\n\n".join(" ".join(line.strip() for line in para.splitlines())
                                         for para in doc.split("\n\n"))


_flowing_help(app, alerts_app, outbox_app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

__all__ = ["app", "main", "parse_now"]
