"""CPU time per message of each ingest stage, measured one stage at a time.

benchmarks/ingest.py times whole scans, where Dovecot, the fetch helper and the storing
process share the machine's cores and our VMs' speed swings by 2x between runs: a change of
10% in one stage does not show. This reads about N demo messages from a throwaway Dovecot
once, keeping what the server sent (header blocks, snippets) and the prepared batches, and
then replays each stage alone, --repeat times, by folder:

* read: reading the FETCH answers off the socket (the bytes Dovecot sent, replayed from
  memory in the same order of commands and answers), up to the messages handed to parsing;
* parse: what the fetch helper does with FETCH answers (parse, classify, snippets, rows);
  reading the answers off the socket is not included;
* transfer: pickling a prepared batch in the helper and unpickling it in the scan;
* store: storing the batches into a fresh store (SQLite, or BENCH_STORE_URL), with the part
  of it spent threading, inserting, linking contacts and committing.

It prints the median CPU µs per message of each, in this process only: Dovecot's share is
what ingest.py prints, and with PostgreSQL the server's work is not counted. Holds every
batch in memory, and the bytes Dovecot sent: about 5 KB and 0.9 KB a message (590 and
100 MB at 118k).

    python benchmarks/stages.py --size 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Hashable
from functools import partial
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from ingest import FOLDERS, PHASES, bench_config, demo_dovecot, time_phases  # noqa: E402

from worker.ingest import prepare as parsing  # noqa: E402
from worker.ingest.reports import FolderReport  # noqa: E402
from worker.ingest.run import prepare_store  # noqa: E402
from worker.ingest.scan import Ingestor, scan_batches  # noqa: E402
from worker.mailbox import open_source  # noqa: E402
from worker.mailbox.base import RawMessage  # noqa: E402
from worker.mailbox.imap import ImapSource  # noqa: E402


class Captured:
    """One folder as the server sent it: the header answers and snippets of each batch, and
    the prepared batches made from them."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.raws: list[list[RawMessage]] = []
        #: Each snippet fetch: the keys asked for, and the answers.
        self.snippets: list[tuple[list[Hashable], dict[Hashable, bytes]]] = []
        self.prepared: list[parsing.PreparedBatch] = []
        self.batches: list[Any] = []
        #: What the server sent on the wire, the tags of the commands, and the order in which
        #: FETCHes were started and completed: ("fetch" or "snippets", items, keywords) or
        #: ("done", which one).
        self.wire = b""
        self.tags: list[bytes] = []
        self.events: list[tuple[Any, ...]] = []

    @property
    def messages(self) -> int:
        return sum(len(r) for r in self.raws)


def capture(cfg: Any, directory: Any) -> list[Captured]:
    """Read every folder once, as a scan does, recording what the server answered."""
    with open_source(cfg.settings.mailboxes[0]) as source:
        assert isinstance(source, ImapSource)
        return [capture_folder(source, folder, directory) for folder in FOLDERS]


def capture_folder(source: ImapSource, folder: str, directory: Any) -> Captured:
    """One folder read as a scan reads it, with what the server answered."""
    cap = Captured(folder)
    source.folder_status(folder)
    cap.batches = scan_batches(source.new_items(folder, 0))
    fetch, fetch_snippets = source.start_fetch, source.start_fetch_snippets

    def recording(start: Callable[..., Callable[[], Any]], into: list[Any], kind: str,
                  keep: Callable[[Any, Any], Any] = lambda items, got: got) -> Callable[..., Any]:
        def started(name: str, items: Any, **kw: Any) -> Callable[[], Any]:
            complete = start(name, items, **kw)
            cap.events.append((kind, items, kw))
            which = len(cap.events) - 1

            def completed() -> Any:
                got = complete()
                cap.events.append(("done", which))
                into.append(keep(items, got))
                return got
            return completed
        return started

    source.start_fetch = recording(fetch, cap.raws, "fetch")  # type: ignore[method-assign]
    source.start_fetch_snippets = recording(  # type: ignore[method-assign]
        fetch_snippets, cap.snippets, "snippets", lambda items, got: ([i.key for i in items], got))
    imap = source.c._imap
    real_file, real_tag = imap.file, imap._new_tag
    wire = bytearray()

    def tagged() -> bytes:
        cap.tags.append(real_tag())
        return cap.tags[-1]

    imap.file = Tee(real_file, wire)
    imap._new_tag = tagged
    try:
        cap.prepared = list(parsing.prepared_batches(source, folder, cap.batches, directory, "bench"))
    finally:
        source.start_fetch, source.start_fetch_snippets = fetch, fetch_snippets  # type: ignore[method-assign]
        imap.file, imap._new_tag = real_file, real_tag
    cap.wire = bytes(wire)
    assert cap.messages == sum(len(p.rows) + len(p.skipped) for p in cap.prepared)
    return cap


class Tee:
    """A socket file that keeps a copy of what is read off it."""

    def __init__(self, f: Any, into: bytearray) -> None:
        self.f, self.into = f, into

    def readline(self, n: int = -1) -> bytes:
        b: bytes = self.f.readline(n)
        self.into += b
        return b

    def read(self, n: int = -1) -> bytes:
        b: bytes = self.f.read(n)
        self.into += b
        return b


def read_stage(cap: Captured, cfg: Any) -> None:
    """The FETCHes of one folder again, in the order the scan made and completed them, their
    answers read from the recorded bytes by a source that is not connected to anything."""
    from servers import replayed_imap

    replay, wire = replayed_imap(cap.wire, cap.tags, cap.folder)
    pending: dict[int, Callable[[], Any]] = {}
    for k, event in enumerate(cap.events):
        if event[0] == "fetch":
            pending[k] = replay.start_fetch(cap.folder, event[1], **event[2])
        elif event[0] == "snippets":
            pending[k] = replay.start_fetch_snippets(cap.folder, event[1])
        else:
            pending.pop(event[1])()
    assert not pending and wire.read() == b"", "the replay read other answers than the scan did"


def cpu(fn: Callable[[], None]) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def parse_stage(cap: Captured, directory: Any) -> None:
    recorded = iter(cap.snippets)

    def replayed(want: list[Any]) -> Callable[[], dict[Hashable, bytes]]:
        asked, got = next(recorded)
        assert [i.key for i in want] == asked, "the replay asks for other snippets than the scan did"
        return lambda: got

    with parsing.collected_per_batch() as collect:
        for raws in cap.raws:
            parsing._finish(*parsing.parse_and_ask(raws, directory, replayed), "bench", cap.folder)
            collect()
    assert next(recorded, None) is None, "the scan asked for snippets the replay did not"


def transfer_stage(cap: Captured) -> None:
    for prepared in cap.prepared:
        pickle.loads(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))


def store_stage(caps: list[Captured], cfg: Any, runs: dict[str, list[dict[str, float]]]) -> None:
    """Store every folder's batches into a fresh store, in scan order; per folder, the CPU
    time of the whole and of its parts (from PHASES)."""
    store, directory = prepare_store(cfg)
    ingestor = Ingestor(store, cfg, directory)
    try:
        for cap in caps:
            # Storing changes the rows (thread ids, contacts found): each run gets fresh copies.
            prepared = pickle.loads(pickle.dumps(cap.prepared, protocol=pickle.HIGHEST_PROTOCOL))
            PHASES.clear()
            rep = FolderReport("bench", cap.folder)

            def run(cap: Captured = cap, prepared: list[parsing.PreparedBatch] = prepared,
                    rep: FolderReport = rep) -> None:
                with parsing.collected_per_batch() as collect:
                    for p, batch in zip(prepared, cap.batches, strict=True):
                        ingestor.writer.write(p, "bench", cap.folder, 1, max(it.cursor for it in batch), rep)
                        collect()

            total = cpu(run)
            runs[cap.folder].append({"store": total, **{f"  {k}": v for k, v in PHASES.items()}})
    finally:
        store.dispose()


def emptied(url: str) -> None:
    """BENCH_STORE_URL: a PostgreSQL database of its own, emptied before each run."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000, help="about how many messages (default 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each stage; the median is shown (default 3)")
    a = ap.parse_args()

    root, d, firm = demo_dovecot(a.size)
    try:
        report(a, root, d, firm)
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)  # (also when a run fails: 1.6 GB at 118k)


def report(a: argparse.Namespace, root: Path, d: Any, firm: Any) -> None:
    """Capture the demo mail once, replay each stage --repeat times, print the table."""
    try:
        store_url = os.environ.get("BENCH_STORE_URL")
        cfg = bench_config(firm, d, store_url or f"sqlite:///{root / 'capture.db'}")
        capture_store, directory = prepare_store(cfg)  # the directory a scan would classify with
        capture_store.dispose()
        t = time.perf_counter()
        caps = capture(cfg, directory)
        print(f"read {sum(c.messages for c in caps):,} messages from Dovecot in {time.perf_counter() - t:.1f} s")
    finally:
        d.stop()
    time_phases(time.process_time)
    runs: dict[str, list[dict[str, float]]] = {c.folder: [] for c in caps}
    for k in range(a.repeat):
        per_run = {c.folder: {"read": cpu(partial(read_stage, c, cfg)),
                              "parse": cpu(partial(parse_stage, c, directory)),
                              "transfer": cpu(partial(transfer_stage, c))} for c in caps}
        if store_url:
            emptied(store_url)
        store_stage(caps, bench_config(firm, d, store_url or f"sqlite:///{root / f'store{k}.db'}"), runs)
        for c in caps:
            runs[c.folder][-1].update(per_run[c.folder])
        gc.collect()

    print(f"CPU µs per message, median of {a.repeat} (store: {store_url or 'SQLite'}; "
          "parse without reading FETCH answers; Dovecot not included)")
    # Storing's parts in the order a batch goes through them, then any others.
    order = ["read", "parse", "transfer", "store", "  plan threads", "  insert", "  finish threads", "  link contacts",
             "  commit"]
    seen = dict.fromkeys(k for c in caps for r in runs[c.folder] for k in r if k != "  store batches")
    names = [k for k in order if k in seen] + [k for k in seen if k not in order]
    print(f"{'stage':<24}" + "".join(f"{c.folder + f' ({c.messages:,})':>20}" for c in caps) + f"{'all':>10}")
    total = sum(c.messages for c in caps)
    for name in names:
        cells, overall = [], 0.0
        for c in caps:
            seconds = statistics.median(r.get(name, 0.0) for r in runs[c.folder])
            overall += seconds
            cells.append(f"{seconds / c.messages * 1e6:>20.1f}")
        print(f"{name:<24}" + "".join(cells) + f"{overall / total * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
