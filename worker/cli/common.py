"""What every command shares: the Typer app, the consoles, the config and store of one
run, errors turned into exit codes, --now, Ctrl-C."""

from __future__ import annotations

import enum
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..defaults import ENV_CONFIG
from ..errors import CarewatchError, ExitCode, UsageError
from ..logs import setup_logging, stderr_console

if TYPE_CHECKING:  # the config's models take a tenth of a second to build: not for --help
    from ..config import Config

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
            from ..config import load_config

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


def _delivery_outcome(rep: Any) -> None:
    """Exit 6 (delivery) when an email failed for good, or none could be sent now."""
    if not rep.ok:
        raise typer.Exit(int(ExitCode.DELIVERY))
