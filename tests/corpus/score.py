"""Score the classifier against the hand-labelled corpus (tests/corpus/labelled/manifest.tsv):
shared by tests/test_labelled.py (which fails on any mistake that hides a client) and
benchmarks/classify.py (which prints the confusion matrices)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from worker import defaults
from worker.ingest.acknowledgement import acknowledgement
from worker.ingest.body import body_text
from worker.ingest.classify import automated_reason
from worker.ingest.headers import parse_header_block

LABELLED = Path(__file__).parent / "labelled"


@dataclass
class Scored:
    file: str
    kind: str  # the labelled automated kind, "" for a person
    ack_label: str  # "yes", "no" or ""
    reason: str | None  # the classifier's automated rule, None for a person
    ack: bool | None  # the classifier's acknowledgement verdict (short replies by people only)
    why: str = ""


@dataclass
class Score:
    rows: list[Scored] = field(default_factory=list)

    def auto_matrix(self) -> Counter[tuple[bool, bool]]:
        """(labelled automated, said automated) -> count."""
        return Counter((bool(r.kind), r.reason is not None) for r in self.rows)

    def ack_matrix(self) -> Counter[tuple[bool, bool]]:
        return Counter((r.ack_label == "yes", bool(r.ack)) for r in self.rows if r.ack_label)

    @staticmethod
    def precision_recall(m: Counter[tuple[bool, bool]]) -> tuple[float, float]:
        tp, fp, fn = m[(True, True)], m[(False, True)], m[(True, False)]
        return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0)


def score(peek: int = defaults.SNIPPET_BYTES) -> Score:
    now = datetime(2026, 11, 20, 12, 0)
    out = Score()
    for line in (LABELLED / "manifest.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, kind, ack_label = (line.split("\t") + ["", ""])[:3]
        raw = (LABELLED / name).read_bytes()
        head, _, body = raw.partition(b"\r\n\r\n")
        pm = parse_header_block(head + b"\r\n\r\n", datetime(2026, 11, 20, 11, 0, tzinfo=UTC), now)
        reason = automated_reason(pm)
        ack, why = None, ""
        if ack_label and reason is None:
            h = pm.auto_headers
            seen = body_text(body[:peek], h.get("content-type", "text/plain"), h.get("content-transfer-encoding", ""),
                             peek=peek)
            ack, why = acknowledgement(pm.subject, seen)
        out.rows.append(Scored(name, kind, ack_label, reason, ack, why))
    return out
