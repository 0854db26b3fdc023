"""`carewatch validate`: the config, its findings, and (--connect) every server."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from ..errors import ConfigError, ExitCode

if TYPE_CHECKING:  # the config's models take a tenth of a second to build: not for --help
    from ..config import Config

from .common import (
    app,
    err,
    handled,
    out,
    state,
)

log = logging.getLogger(__name__)


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
