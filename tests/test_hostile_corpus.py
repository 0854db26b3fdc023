"""20,000 hostile messages (tests/corpus/fuzz.py: real shapes, mutated) through Dovecot: no
crash, every message stored or skipped with a reason, and none skipped that a person could
read (a message with a From or a Date is always stored, as well as it can be)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from conftest import write_config
from servers import Dovecot
from sqlalchemy import func, select

from worker.config import load_config
from worker.ingest.run import prepare_store, run_scan
from worker.store.models import Message, SkippedMessage

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from fuzz import hostile  # noqa: E402

N = 20_000


def readable(raw: bytes) -> bool:
    """Whether a person could tell who wrote it or when: a From or a Date field with a value."""
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    return any(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.startswith((b"from:", b"date:")) and b":" in line)


def test_twenty_thousand_hostile_messages_are_stored_or_skipped_with_a_reason(tmp_path: Path, dovecot: Dovecot,
                                                                               db_url: str) -> None:
    corpus = list(hostile(N, seed=28))
    unreadable = sum(1 for raw in corpus if not readable(raw))
    dovecot.deliver_files(corpus)
    cfg = load_config(write_config(tmp_path, db_url, dovecot, batch_size=2000))
    store, directory = prepare_store(cfg)
    t0 = time.monotonic()
    rep = run_scan(cfg, store, directory)
    took = time.monotonic() - t0
    assert rep.ok, rep.errors[:3]
    inbox = next(f for f in rep.folders if f.folder == "INBOX")
    assert inbox.new == N
    assert inbox.stored + inbox.duplicates + inbox.skipped == N
    with store.session() as db:
        skipped = db.execute(select(SkippedMessage)).scalars().all()
        stored = db.execute(select(func.count()).select_from(Message)).scalar_one()
    assert len(skipped) == inbox.skipped and all(s.reason for s in skipped)
    assert inbox.skipped <= unreadable  # nothing a person could read
    print(f"{N} hostile messages in {took:.1f}s: {stored} stored, {inbox.duplicates} copies of a stored one, "
          f"{inbox.skipped} skipped ({sorted({s.reason[:40] for s in skipped})}); {unreadable} had no From/Date")
    again = run_scan(cfg, store, directory)
    assert again.ok and sum(f.new for f in again.folders) == 0
