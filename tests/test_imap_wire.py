"""The fast FETCH path (imaplib's internals, behind worker/mailbox/imap_wire.py) and imapclient's
own fetch store exactly the same thing: where the running Python or imapclient is not the one
the fast reader knows, the scan falls back and nothing changes but the speed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from servers import Dovecot
from sqlalchemy import select

from worker.config import load_config
from worker.demo import generate
from worker.ingest.run import prepare_store, run_scan
from worker.mailbox import imap as imap_module
from worker.mailbox import imap_wire
from worker.store.models import Message, SkippedMessage

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from fuzz import hostile  # noqa: E402

#: Columns that differ between two stores of the same mail by construction.
VOLATILE = {"id", "ingested_at"}


def stored(store: Any) -> tuple[list[dict[str, Any]], list[tuple[str, int, str]]]:
    with store.session() as db:
        rows = [{k: v for k, v in m.model_dump().items() if k not in VOLATILE}
                for m in db.execute(select(Message).order_by(Message.message_id)).scalars()]
        skipped = sorted((s.folder, s.uid, s.reason) for s in db.execute(select(SkippedMessage)).scalars())
    return rows, skipped


def test_the_fast_reader_and_imapclients_fetch_store_the_same(tmp_path: Path, dovecot: Dovecot,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    firm = generate(tmp_path / "demo")  # realistic mail: threads, replies, thanks, automated
    inbox = [p.read_bytes() for p in sorted((firm.maildir / "cur").iterdir())]
    sent = [p.read_bytes() for p in sorted((firm.maildir / ".Sent" / "cur").iterdir())]
    dovecot.deliver_files(inbox + list(hostile(400, seed=27)))  # and malformed mail
    dovecot.deliver_files(sent, folder="Sent")

    def scan(name: str) -> tuple[list[dict[str, Any]], list[tuple[str, int, str]]]:
        cfg = load_config(write_config(tmp_path / name, f"sqlite:///{tmp_path / name / 'cw.db'}", dovecot,
                                       batch_size=300))
        store, directory = prepare_store(cfg)
        rep = run_scan(cfg, store, directory)
        assert rep.ok, rep.errors
        return stored(store)

    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    fast = scan("fast")
    used: list[bool] = []
    real = imap_wire.wire_of

    def no_wire(client: Any) -> None:
        used.append(real(client) is not None)  # the fast path was there to take: refused
        return None

    monkeypatch.setattr(imap_module, "wire_of", no_wire)
    slow = scan("slow")
    assert used and all(used)
    assert len(fast[0]) > 1000
    assert fast == slow


def test_the_fast_reader_is_used_only_where_it_knows_imaplib(monkeypatch: pytest.MonkeyPatch) -> None:
    import imaplib
    from types import SimpleNamespace

    good = SimpleNamespace(_imap=SimpleNamespace(_new_tag=lambda: b"A1", send=lambda b: None, tagged_commands={},
                                                 file=SimpleNamespace(readline=lambda n: b"", read=lambda n: b"")))
    assert isinstance(imap_wire.wire_of(good), imap_wire.Wire)
    # An imaplib without a socket file (Python 3.14 deprecates IMAP4.file) or a tag table.
    assert imap_wire.wire_of(SimpleNamespace(_imap=SimpleNamespace(_new_tag=lambda: b"A1", send=print,
                                                                   tagged_commands={}))) is None
    assert imap_wire.wire_of(SimpleNamespace()) is None
    # A Python the reader was not written against.
    monkeypatch.setattr(imap_wire.sys, "version_info", (3, 14, 0))
    assert imap_wire.wire_of(good) is None
    assert hasattr(imaplib.IMAP4, "_new_tag")  # (the running one has what the fast path uses)
