"""The demo: the README's first command, on embedded defaults."""

from __future__ import annotations

import email
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email import policy
from pathlib import Path

from typer.testing import CliRunner

from worker.cli.main import app
from worker.demo import generate

runner = CliRunner()


def test_the_demo_runs_the_whole_pipeline_and_shows_every_situation(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--dir", str(d)], env={"COLUMNS": "220"})
    assert r.exit_code == 0, r.output
    assert "12 client(s)" in r.output and "Alerts:" in r.output
    emls = sorted((d / "outbox").glob("*.eml"))
    assert emls and len(emls) == len(list((d / "outbox").glob("*.html")))
    # Every situation the demo promises is in the care picture.
    r = runner.invoke(app, ["--config", str(d / "carewatch.toml"), "status", "--json", "--now", "2026-11-16T11:00:00Z"])
    doc = json.loads(r.stdout)
    kinds = {
        lp["kind"] for c in doc["clients"] for lp in c["lapses"] + [x for ct in c["contacts"] for x in ct["lapses"]]
    }
    assert {"unanswered", "chased", "silent", "going_quiet", "slowing", "unowned"} <= kinds
    internal = [c for c in doc["clients"] if c["internal"]]
    assert len(internal) == 1
    assert any(ct["discovered"] for c in doc["clients"] for ct in c["contacts"])
    msg = email.message_from_bytes(emls[0].read_bytes(), policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-generated"


def test_the_demo_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=3)
    b = generate(tmp_path / "b", seed=3)
    files_a = sorted(p.read_bytes() for p in (tmp_path / "a" / "Maildir").rglob("*.demo:2,S"))
    files_b = sorted(p.read_bytes() for p in (tmp_path / "b" / "Maildir").rglob("*.demo:2,S"))
    assert a.messages == b.messages and files_a == files_b
    generate(tmp_path / "c", seed=4)
    assert sorted(p.read_bytes() for p in (tmp_path / "c" / "Maildir").rglob("*.demo:2,S")) != files_a


def test_the_demo_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    r = runner.invoke(app, ["demo", "--dir", str(tmp_path)])
    assert r.exit_code == 2 and "not an earlier demo" in r.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _carewatch() -> str:
    """The console script of the environment running the tests, by path (not on PATH)."""
    return str(Path(sys.executable).parent / "carewatch")


def test_the_demos_suggested_commands_work_when_pasted(tmp_path: Path) -> None:
    # Run as the README's command does: by the venv's script, with the venv not activated.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    r = subprocess.run([_carewatch(), "demo", "--dir", "demo"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    tried = r.stdout.split("Try:\n", 1)[1].split("Done in", 1)[0].splitlines()
    commands = [line.split("#", 1)[0].strip() for line in tried if line.strip()]
    assert len(commands) == 4 and commands[-1].endswith("demo --run")
    for command in commands[:-1]:  # the last one runs until stopped: the test below
        assert shlex.split(command)[0] == _carewatch()  # the path works where `carewatch` alone does not
        p = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{command}\n{p.stdout}\n{p.stderr}"
    assert "1 client(s)" in subprocess.run(commands[0], shell=True, cwd=tmp_path, env=env, capture_output=True,
                                           text=True, timeout=120).stdout  # --client took
    assert list((tmp_path / "digest-preview").glob("*.html"))


def test_demo_run_starts_the_worker_on_the_demo_with_health(tmp_path: Path) -> None:
    from servers import free_port

    port = free_port()
    env = {**os.environ, "CAREWATCH__SERVICE__METRICS_PORT": str(port)}
    proc = subprocess.Popen([_carewatch(), "demo", "--run", "--dir", str(tmp_path / "demo")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body, deadline = None, time.monotonic() + 90
        while body is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                    body = json.loads(resp.read())
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        assert body is not None, proc.communicate()[1] if proc.poll() is not None else "no /healthz 200"
        assert body["store"] == "ok" and body["mailboxes"]["clients"]["ok"] is True
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 0, errs
        assert f"http://127.0.0.1:{port}/healthz" in out and "carewatch stopped cleanly" in errs
    finally:
        if proc.poll() is None:
            proc.kill()
