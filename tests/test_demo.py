"""The demo: the README's first command, on embedded defaults."""

from __future__ import annotations

import email
import json
from email import policy
from pathlib import Path

from typer.testing import CliRunner

from worker.cli import app
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
    assert r.exit_code == 3 and "not an earlier demo" in r.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"
