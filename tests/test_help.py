"""`--help` on every command says what it does and what each option means, in sentences that
flow to the terminal's width."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import typer.main
from typer.testing import CliRunner

from worker.cli.main import app

runner = CliRunner()


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under a group (Typer's own copy of click: duck-typed), with its path."""
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


def test_every_command_has_help_for_itself_and_each_option() -> None:
    root: Any = typer.main.get_command(app)
    commands = list(_commands(root))
    names = {" ".join(p) for p, _ in commands}
    assert {"validate", "scan", "status", "check", "digest", "run", "demo", "alerts list", "outbox deliver"} <= names
    for path, cmd in commands:
        assert (cmd.help or "").strip(), f"{' '.join(path)} has no help"
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]} has no help"
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert r.exit_code == 0, r.output
        assert f"Usage: carewatch {' '.join(path)}" in r.output


def test_help_paragraphs_flow_instead_of_breaking_where_the_source_wrapped() -> None:
    # On a terminal wide enough for any paragraph, each paragraph of a command's docstring is
    # one line of its --help, and each command's summary one line of the command list. Typer
    # keeps a docstring's own line breaks, which cut sentences in two.
    root: Any = typer.main.get_command(app)
    checked = 0
    for path, cmd in _commands(root):
        if hasattr(cmd, "commands"):
            continue
        callback = cmd.callback
        while hasattr(callback, "__wrapped__"):
            callback = callback.__wrapped__
        doc = inspect.getdoc(callback)
        assert doc
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        lines = [" ".join(line.strip(" │").split()) for line in r.output.splitlines()]
        for para in doc.split("\n\n"):
            flowing = " ".join(para.split())
            assert flowing in lines, f"{' '.join(path)}: {flowing!r} is not one line of:\n{r.output}"
            checked += 1
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "400"})
    summary = " ".join((inspect.getdoc(root.commands["status"].callback) or "").split("\n\n")[0].split())
    assert any(line.strip(" │").endswith(summary) for line in r.output.splitlines()), r.output
    assert checked >= 12
