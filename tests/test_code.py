"""The code itself: ruff and mypy pass on the whole tree, as pyproject.toml configures them.
Both are in the `test` extra, so the README's test command (and CI) runs them; a slip in
typing shows up as a failing test, not as one more line in a report nobody reads."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        if IN_CI:
            pytest.fail(f"{tool} is required in CI (it is in the test extra)")
        pytest.skip(f"{tool} not installed")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_nothing() -> None:
    r = _run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_finds_nothing_in_the_worker_tests_and_benchmarks(tmp_path: Path) -> None:
    # A cache of its own: a stale one from another checkout can hide or invent errors.
    r = _run("mypy", "--cache-dir", str(tmp_path / "mypy"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues found" in r.stdout
