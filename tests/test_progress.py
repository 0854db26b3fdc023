"""What `carewatch scan` shows while it reads: a progress bar per folder on a terminal, plain
log lines anywhere else (containers, CI, a pipe)."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyte
import pytest

from worker import defaults
from worker.demo import generate
from worker.ingest.reports import LogProgress

COLUMNS, LINES = 100, 40


def _demo_config(root: Path) -> tuple[Path, dict[str, int]]:
    """The demo firm's Maildir with small batches (so a folder takes several steps) and a
    fresh store; returns the config and the number of messages per folder."""
    generate(root)
    cfg = root / "carewatch.toml"
    text = cfg.read_text()
    assert 'folders = ["INBOX", "Sent"]\n' in text
    text = text.replace('folders = ["INBOX", "Sent"]\n', 'folders = ["INBOX", "Sent"]\nbatch_size = 100\n')
    text = "\n".join(f'url = "sqlite:///{root / "fresh.db"}"' if line.startswith("url = ") else line
                     for line in text.splitlines()) + "\n"
    cfg.write_text(text)
    maildir = root / "Maildir"
    counts = {"INBOX": sum(1 for d in ("cur", "new") for _ in (maildir / d).iterdir()),
              "Sent": sum(1 for d in ("cur", "new") for _ in (maildir / ".Sent" / d).iterdir())}
    assert counts["INBOX"] > 300 and counts["Sent"] > 300  # several batches each
    return cfg, counts


def _run_on_a_terminal(args: list[str], timeout: float = 120,
                       stdout_to_pipe: bool = False) -> tuple[int, bytes, bytes]:
    """Run a command with a pseudo-terminal as its stdin and stderr, and as its stdout too
    unless `stdout_to_pipe` (`carewatch ... | jq` from a shell). Returns its exit code, what
    it wrote to the terminal and what it wrote to the pipe. Both are read as they come, so a
    chatty command never blocks on a full buffer."""
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS=str(COLUMNS), LINES=str(LINES), TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    p = subprocess.Popen(args, stdin=slave, stdout=subprocess.PIPE if stdout_to_pipe else slave, stderr=slave,
                         env=env, close_fds=True)
    os.close(slave)
    pipe = p.stdout.fileno() if p.stdout is not None else None
    received: dict[int, list[bytes]] = {master: []}
    if pipe is not None:
        received[pipe] = []
    still_open = set(received)
    deadline = time.monotonic() + timeout
    try:
        while still_open and time.monotonic() < deadline:
            ready, _, _ = select.select(list(still_open), [], [], 1)
            if not ready and p.poll() is not None:  # exited, and nothing left to read
                break
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    chunk = b""
                if chunk:
                    received[fd].append(chunk)
                else:
                    still_open.discard(fd)
        code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
        if p.stdout is not None:
            p.stdout.close()
        os.close(master)
    return code, b"".join(received[master]), b"".join(received[pipe]) if pipe is not None else b""


def _screen(output: bytes) -> list[str]:
    """What a terminal shows after the output: its lines, right-trimmed, blank ones dropped."""
    screen = pyte.Screen(COLUMNS, LINES)
    screen.set_mode(pyte.modes.LNM)  # the pty turns "\n" into "\r\n"; be safe either way
    stream = pyte.ByteStream(screen)
    stream.feed(output)
    return [line.rstrip() for line in screen.display if line.strip()]


def test_a_terminal_sees_one_live_bar_per_folder(tmp_path: Path) -> None:
    cfg, counts = _demo_config(tmp_path)
    code, output, _ = _run_on_a_terminal([sys.executable, "-m", "worker.cli", "--config", str(cfg), "scan"])
    assert code == 0, output.decode(errors="replace")
    lines = _screen(output)
    shown = "\n".join(lines)
    # Each folder's bar is on screen once, complete: a display restarted for the next folder
    # used to draw the finished folders again, one more copy per folder.
    for folder, n in counts.items():
        bars = [line for line in lines if line.startswith(f"clients/{folder} ")]
        assert len(bars) == 1, shown
        assert "━" in bars[0] and f"{n}/{n}" in bars[0], shown
    # The bars line up, whatever the folder names' lengths.
    assert len({line.index("━") for line in lines if line.startswith("clients/")}) == 1, shown
    # The bar was there before the folder was read, not drawn at the end: the first frame
    # shows nothing done. (Frames in between come ten times a second, so how many a folder of
    # this size gets depends on the machine's speed.)
    for n in counts.values():
        assert re.search(rb"(?<![0-9])0/%d(?![0-9])" % n, output), output
    # Then the report, as a table.
    assert any(line.startswith("│ clients │ INBOX") and f"│ {counts['INBOX']} │" in line for line in lines), shown
    # The terminal gets human lines, not JSON logs.
    assert not any(line.lstrip().startswith("{") for line in lines), shown


def test_anything_but_a_terminal_gets_plain_log_lines(tmp_path: Path) -> None:
    cfg, counts = _demo_config(tmp_path)
    r = subprocess.run([sys.executable, "-m", "worker.cli", "--config", str(cfg), "scan"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS=str(COLUMNS)))
    assert r.returncode == 0, r.stderr
    assert "━" not in r.stderr and "\x1b[" not in r.stderr  # no bar, no cursor movement
    messages = [json.loads(line)["msg"] for line in r.stderr.splitlines() if line.startswith("{")]
    for folder, n in counts.items():
        assert f"scanning clients/{folder}: {n} new message(s)" in messages, messages
    assert "INBOX" in r.stdout and str(counts["INBOX"]) in r.stdout  # the report still comes


def test_plain_progress_logs_about_every_tenth_of_a_big_folder(caplog: pytest.LogCaptureFixture) -> None:
    p = LogProgress()
    total = 20 * defaults.SCAN_BATCH_SIZE
    with caplog.at_level(logging.INFO, logger="worker.ingest"):
        p.start("clients", "INBOX", total)
        for _ in range(total // defaults.SCAN_BATCH_SIZE):
            p.advance(defaults.SCAN_BATCH_SIZE)
        p.finish()
    got = [r.getMessage() for r in caplog.records]
    tenth = total // 10
    assert got == [f"scanning clients/INBOX: {total} new message(s)"] + [
        f"scanning clients/INBOX: {k * tenth}/{total}" for k in range(1, 10)]
    # A small folder is one line: a step is never less than a batch.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.ingest"):
        p.start("clients", "Sent", 900)
        for _ in range(9):
            p.advance(100)
    assert [r.getMessage() for r in caplog.records] == ["scanning clients/Sent: 900 new message(s)"]


def test_text_logs_go_to_the_terminal_not_into_the_commands_output(tmp_path: Path) -> None:
    # `carewatch scan --json | jq` from a shell: stderr is the terminal, so logs are text; they
    # went to stdout and broke the JSON.
    cfg, counts = _demo_config(tmp_path)
    code, terminal, piped = _run_on_a_terminal([sys.executable, "-m", "worker.cli", "--config", str(cfg), "scan",
                                                "--json"], stdout_to_pipe=True)
    assert code == 0, terminal
    doc = json.loads(piped)  # nothing but the report
    assert sum(f["stored"] for f in doc["folders"]) == sum(counts.values())
    assert b"directory synced" in terminal and b"INFO" in terminal and not terminal.lstrip().startswith(b"{")


def test_ctrl_c_stores_the_batch_in_hand_then_stops_and_the_next_scan_goes_on(tmp_path: Path) -> None:
    import contextlib
    import sqlite3
    import threading

    cfg, counts = _demo_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("batch_size = 100\n", "batch_size = 5\n"))
    p = subprocess.Popen([sys.executable, "-m", "worker.cli", "--config", str(cfg), "scan", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(p.stderr or []), daemon=True)
    reader.start()

    def stored() -> int:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'fresh.db'}?mode=ro", uri=True)) as db:
                return int(db.execute("SELECT count(*) FROM message").fetchone()[0])
        except sqlite3.OperationalError:  # not created or not migrated yet
            return 0

    # Ctrl-C once a batch is committed: a known point, whatever the machine's speed.
    deadline = time.monotonic() + 120
    while stored() == 0 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGINT)
    out = p.stdout.read() if p.stdout else ""
    p.wait(120)
    reader.join(10)
    rest = "".join(err)
    assert p.returncode == 130, rest
    assert "stopping after the batch in hand" in rest and "interrupted: what was read is stored" in rest
    assert "Traceback" not in rest
    (inbox,) = json.loads(out)["folders"]  # Sent was not started
    assert inbox["folder"] == "INBOX" and inbox["interrupted"]
    assert 0 < inbox["stored"] < counts["INBOX"] and inbox["stored"] % 5 == 0  # whole batches only
    r = subprocess.run([sys.executable, "-m", "worker.cli", "--config", str(cfg), "scan", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    again = {f["folder"]: f for f in json.loads(r.stdout)["folders"]}
    assert again["INBOX"]["stored"] + inbox["stored"] == counts["INBOX"]
    # Nothing lost, nothing stored twice. (The demo's files are seconds old: the Maildir tie
    # rule may read the last one again, which dedupe drops.)
    assert again["INBOX"]["duplicates"] <= 1 and again["Sent"]["stored"] == counts["Sent"]


def test_folder_names_with_brackets_are_shown_as_written() -> None:
    # "[Gmail]/Sent Mail", or a folder a user named "[/archive]": rich would read the bar's label
    # as markup (a closing tag with no opening one raises MarkupError).
    import io

    from rich.console import Console

    from worker.cli.scan import RichFolderProgress

    buf = io.StringIO()
    bar = RichFolderProgress(Console(file=buf, force_terminal=True, width=100), label_width=20)
    for folder in ("[Gmail]/Sent Mail", "[/archive]", "[bold]x"):
        bar.start("clients", folder, 10)
        bar.advance(10)
        bar.finish()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    for folder in ("[Gmail]/Sent Mail", "[/archive]", "[bold]x"):
        assert f"clients/{folder}" in shown
