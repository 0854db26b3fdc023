"""Time and memory per hostile message: each corpus file parsed and classified repeatedly.

    python benchmarks/hostile.py [--rounds 200]

Prints, per corpus file, the mean and worst time per message and the peak memory allocated
while handling it (tracemalloc), so "bounded time and memory per message" is a figure.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.ingest.acknowledgement import is_acknowledgement  # noqa: E402
from worker.ingest.body import snippet_text  # noqa: E402
from worker.ingest.classify import Directory, automated_reason, classify  # noqa: E402
from worker.ingest.headers import parse_header_block  # noqa: E402


def handle(raw: bytes, d: Directory) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    pm = parse_header_block(head + b"\r\n\r\n", datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 20))
    classify(pm, d)
    automated_reason(pm)
    is_acknowledgement(pm.subject, snippet_text(body[:600], pm.auto_headers.get("content-type", "text/plain")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    a = ap.parse_args()
    d = Directory(firm_domains=frozenset({"firm.example"}))
    print(f"{'file':32} {'KiB':>6} {'mean us':>9} {'worst us':>9} {'peak KiB':>9}")
    worst_all = peak_all = 0.0
    for p in sorted((ROOT / "tests" / "corpus").glob("*.eml")):
        raw = p.read_bytes()
        times = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            handle(raw, d)
            times.append(time.perf_counter() - t)
        tracemalloc.start()
        handle(raw, d)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        worst_all, peak_all = max(worst_all, max(times)), max(peak_all, peak)
        print(f"{p.stem:32} {len(raw) / 1024:6.0f} {sum(times) / len(times) * 1e6:9.0f} {max(times) * 1e6:9.0f} "
              f"{peak / 1024:9.0f}")
    print(f"worst time per message {worst_all * 1e3:.1f} ms; peak memory per message {peak_all / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
