"""Exit codes as the README states them, for each command: 2 for a command line that asks for
something that cannot be (a value in the wrong form, a mailbox, client or alert that does not
exist), 3 for a configuration that is wrong, 141 when the reader of a table goes away."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.cli.main import app
from worker.demo import generate

runner = CliRunner()
NOW = "2026-11-16T11:00:00Z"


@pytest.fixture(scope="module")
def firm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = generate(tmp_path_factory.mktemp("exit") / "demo")
    r = runner.invoke(app, ["--config", str(f.config), "check", "--now", NOW])
    assert r.exit_code == 0, r.output
    return f.config


USAGE = [
    ("status", "--now", "yesterday"),
    ("check", "--now", "next week"),
    ("digest", "--preview", "p", "--now", "monday"),
    ("explain", "<a@b>", "--now", "noon"),
    ("scan", "--mailbox", "nope"),
    ("status", "--client", "Nope"),
    ("alerts", "snooze", "2", "--for", "3x"),
    ("alerts", "snooze", "2", "--for", "99w"),  # longer than notify.max_snooze
    ("alerts", "snooze", "999"),
    ("alerts", "ack", "999"),
    ("alerts", "snooze", "two"),
    ("outbox", "list", "--status", "lost"),
    ("outbox", "retry", "999"),
    ("outbox", "retry"),
    ("digest",),
    ("explain", "<never-stored@example>"),
    ("status", "--bogus"),
]


@pytest.mark.parametrize("args", USAGE, ids=[" ".join(a) for a in USAGE])
def test_a_command_line_that_cannot_be_done_exits_2(firm: Path, args: tuple[str, ...]) -> None:
    r = runner.invoke(app, ["--config", str(firm), *args], env={"COLUMNS": "200"})
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output


def test_the_demo_refusing_a_folder_it_did_not_make_exits_2(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    assert runner.invoke(app, ["demo", "--dir", str(tmp_path), "--now", "soon"]).exit_code == 2


@pytest.mark.parametrize("command", [["validate"], ["scan"], ["status"], ["check"], ["alerts", "list"],
                                     ["outbox", "list"], ["digest", "--preview", "p"], ["run"]])
def test_a_broken_config_exits_3_for_every_command(tmp_path: Path, command: list[str]) -> None:
    cfg = tmp_path / "carewatch.toml"
    cfg.write_text('[firm]\ndomains = ["firm example"]\n')
    r = runner.invoke(app, ["--config", str(cfg), *command])
    assert r.exit_code == 3, r.output
    assert "firm.domains" in r.output


@pytest.mark.parametrize("command", [["status", "--now", NOW], ["status", "--now", NOW, "--json"],
                                     ["alerts", "list", "--all"], ["outbox", "list"]])
def test_output_piped_into_head_exits_141(firm: Path, command: list[str]) -> None:
    # A real pipe whose reader has gone before anything is written (`| head -1` on output
    # longer than the pipe holds; a shorter one is written whole and exits 0, as `seq` does).
    cli = [sys.executable, "-m", "worker.cli", "--config", str(firm), *command]
    script = f"{shlex.join(cli)} | true; exit ${{PIPESTATUS[0]}}"
    env = {**os.environ, "COLUMNS": "100"}
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 141, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
