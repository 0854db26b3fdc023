"""The `carewatch` command: every command module registers itself on the one Typer app."""

from __future__ import annotations

import inspect
import sys

import typer

from . import outbox, run, scan, status, validate  # noqa: F401  (they register their commands)
from .alerts import alerts_app
from .common import app, parse_now
from .outbox import outbox_app


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
