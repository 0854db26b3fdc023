"""The benchmarks still run and report every figure they promise (run by scripts/checks, not
by the test suite). Nothing here is timed:
their figures are for people, and a tiny demo firm keeps this quick."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import _missing  # noqa: E402
from servers import dovecot_available  # noqa: E402


def run_benchmark(*args: str) -> str:
    if not dovecot_available():
        _missing("Dovecot (apt-get install dovecot-imapd)")
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def figures(line: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*\.\d+", line)]


def test_stage_benchmark_replays_each_stage_per_folder() -> None:
    out = run_benchmark("benchmarks/stages.py", "--size", "1", "--repeat", "1")
    read = re.search(r"read ([\d,]+) messages from Dovecot", out)
    assert read, out
    total = int(read.group(1).replace(",", ""))
    header = next(line for line in out.splitlines() if line.startswith("stage"))
    per_folder = [int(n.replace(",", "")) for n in re.findall(r"\((\d[\d,]*)\)", header)]
    assert re.findall(r"(\w+) \(", header) == ["INBOX", "Sent"] and sum(per_folder) == total > 0
    rows = {line[:24].strip(): figures(line[24:]) for line in out.splitlines()[3:]}
    assert list(rows) == ["read", "parse", "transfer", "store", "plan threads", "insert", "finish threads",
                          "link contacts", "commit"]
    for name, values in rows.items():
        assert len(values) == 3, (name, values)  # INBOX, Sent, all
        assert all(v > 0 for v in values), (name, values)
    # The parts of storing happen inside it.
    for column in range(3):
        assert sum(rows[p][column] for p in list(rows)[4:]) <= rows["store"][column]


def test_ingest_benchmark_compares_the_scan_with_the_bare_fetch() -> None:
    out = run_benchmark("benchmarks/ingest.py", "--sizes", "1")
    lines = out.splitlines()
    row = lines[lines.index(next(line for line in lines if "scan msg/s" in line)) + 1].split()
    n, scan_s, _, bare_s, _, ratio = (float(x.replace(",", "")) for x in row[:6])
    assert n > 0 and scan_s > 0 and bare_s > 0
    # The ratio is the two times' (each printed to 0.01 s, so compared within that rounding).
    assert (scan_s - 0.005) / (bare_s + 0.005) - 0.005 <= ratio <= (scan_s + 0.005) / (bare_s - 0.005) + 0.005
    assert "compat32 parses" in out
    server = re.search(r"server alone: ([\d,]+) msg/s .* the scan reaches (\d+)% of it", out)
    assert server and int(server.group(1).replace(",", "")) > 0, out
    ceiling = re.search(r"scan CPU: (\d+) µs/msg in all, so (\d+) cores can do at most ([\d,]+) msg/s at that "
                        r"cost; the scan reached (\d+)% of it", out)
    assert ceiling, out
    per_msg, cores, most, reached = (int(g.replace(",", "")) for g in ceiling.groups())
    assert cores == os.cpu_count() and abs(most - cores * 1e6 / per_msg) <= most * 0.01 + 1
    # Busy cores cannot give more CPU time than there is (a little more than 100% would be
    # Dovecot's work in the moments after the scan, counted with it).
    assert 0 < reached <= 105, out
    cpu = next(line for line in lines if "CPU µs/msg" in line)
    for process in ("bare: Dovecot", "bare: imapclient", "server alone: Dovecot", "server alone: client",
                    "scan: Dovecot", "scan: main process"):
        assert re.search(rf"{process} \d+", cpu), cpu


def test_a_benchmark_that_fails_leaves_no_dovecot_and_no_mail_behind() -> None:
    """A failed run once left its Dovecot running and 1.6 GB of Maildir in /tmp (118k)."""
    if not dovecot_available():
        _missing("Dovecot (apt-get install dovecot-imapd)")
    tmp = Path(tempfile.mkdtemp(prefix="cwb", dir="/tmp"))  # (Dovecot's socket paths must stay short)
    tmp.chmod(0o755)  # (and its unprivileged processes must reach them)
    try:
        env = {**os.environ, "TMPDIR": str(tmp), "BENCH_STORE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        for args in (["benchmarks/ingest.py", "--child", "200"], ["benchmarks/stages.py", "--size", "200"]):
            r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                               env=env)
            assert r.returncode != 0 and "127.0.0.1:1" in r.stderr, r.stderr[-2000:]
            assert list(tmp.iterdir()) == [], args
            left = subprocess.run(["pgrep", "-f", f"dovecot -F -c {tmp}"], capture_output=True, text=True)
            assert left.stdout == "", args
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _json_lines(out: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_steady_benchmark_reports_every_figure_per_round_and_their_medians() -> None:
    rows = _json_lines(run_benchmark("benchmarks/steady.py", "--size", "1200", "--new", "40", "--rounds", "2"))
    first, rounds, median = rows[0], rows[1:-1], rows[-1]["median"]
    assert isinstance(first["size"], int) and first["size"] > 1000
    figures_ = ["bare_fetch_s", "scan_wall_s", "scan_in_process_s", "scan_command_s", "no_new_wall_s",
                "no_new_in_process_s", "no_new_command_s", "help_s", "scan_vs_bare"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert all(isinstance(r[k], float) and r[k] > 0 for k in figures_), r
        # The ratio is the in-process scan's over the bare fetch (each rounded when printed).
        assert abs(r["scan_vs_bare"] - r["scan_in_process_s"] / r["bare_fetch_s"]) <= 0.02 * r["scan_vs_bare"] + 0.05
    assert isinstance(median, dict) and set(median) == set(figures_)


def test_freshness_benchmark_times_the_alert_and_its_resolution_end_to_end() -> None:
    rows = _json_lines(run_benchmark("benchmarks/freshness.py", "--size", "1200", "--trials", "2",
                                     "--idle-seconds", "2"))
    ready, trials, summary = rows[0], rows[1:-1], rows[-1]
    assert isinstance(ready["told"], int) and ready["told"] > 0
    assert [t["trial"] for t in trials] == [1, 2]
    assert all(isinstance(t[k], float) and t[k] > 0 for t in trials
               for k in ("chaser_to_email_s", "reply_to_resolved_s"))
    for k in ("chaser_to_email_s", "reply_to_resolved_s"):
        assert summary[k]["worst"] == max(t[k] for t in trials)
    assert summary["idle_seconds"] == 2.0 and 0 <= summary["idle_cpu_share_of_one_core"] < 1
