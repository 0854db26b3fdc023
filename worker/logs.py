"""Logging: readable lines on a terminal, one JSON object per line otherwise (containers)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


#: What every LogRecord has; anything else on a record came from `extra=` and is kept.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every structured field given
    with `extra=` (a mailbox, a folder, a count), so log pipelines can filter on them."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the moment of logging (it may be replaced)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # type: ignore[no-untyped-def]
        pass


#: The arguments setup_logging() was last called with, for helper processes to log alike.
current: tuple[str, bool] | None = None


_stderr_console: Console | None = None


def stderr_console() -> Console:
    """The one rich Console on stderr: text logs, errors and progress bars share it."""
    global _stderr_console
    if _stderr_console is None:
        from rich.console import Console

        _stderr_console = Console(stderr=True)
    return _stderr_console


def setup_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    global current
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    current = (level, json_logs)
    handler: logging.Handler
    if json_logs:
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
    else:
        from rich.logging import RichHandler

        # stderr, as the JSON lines: stdout is the command's output (`status --json | jq`). And
        # the console the CLI's progress bars use: a log line from another console would be
        # written across a live bar.
        handler = RichHandler(console=stderr_console(), show_path=False, rich_tracebacks=False, markup=False,
                              log_time_format="[%Y-%m-%d %H:%M:%S]")  # ISO dates, not rich's US ones
        handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("imapclient", "apscheduler", "alembic", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
