"""A server that trickles: a few bytes at a time, never silent long enough for a socket
timeout. A FETCH's answers have a deadline in proportion to what was asked; past it the
connection is dropped and the scan fails over (the worker retries with backoff), and a stop
request (Ctrl-C, SIGTERM) ends a scan within seconds whatever the server does."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from conftest import write_config
from servers import Dovecot, TcpProxy

from worker.config import load_config
from worker.ingest.run import prepare_store, run_scan
from worker.synth import build_message

T0 = datetime(2026, 11, 16, 9, 0)


def TrickleProxy(target_port: int, rate: int = 400, fast: int = 2000) -> TcpProxy:  # noqa: N802
    """A relay that passes what the server sends at `rate` bytes a second, after the first
    `fast` bytes (login and SELECT go at full speed)."""
    return TcpProxy(target_port, rate=rate, fast=fast)


def _config(tmp_path: Path, dovecot: Dovecot, port: int, db_url: str) -> Path:
    cfg = write_config(tmp_path, db_url, dovecot,
                       mailbox_extra="timeout_seconds = 6\n")
    cfg.write_text(cfg.read_text().replace(f"port = {dovecot.port}", f"port = {port}"))
    return cfg


def _questions(n: int) -> list[bytes]:
    return [build_message(sender="alice@acme.example", to=["shared@firm.example"], subject=f"Question {i}",
                          date=T0 + timedelta(minutes=i), message_id=f"<t{i}@acme.example>", body="x" * 2000)
            for i in range(n)]


def test_a_trickling_server_is_given_up_at_the_deadline(tmp_path: Path, dovecot: Dovecot, db_url: str) -> None:
    dovecot.deliver_files(_questions(60))
    proxy = TrickleProxy(dovecot.port)
    try:
        cfg = load_config(_config(tmp_path, dovecot, proxy.port, db_url))
        store, directory = prepare_store(cfg)
        t0 = time.monotonic()
        rep = run_scan(cfg, store, directory)
        took = time.monotonic() - t0
    finally:
        proxy.close()
    # 6 s + 60 messages x 0.05 s = 9 s for the answers (6 s also lets a login through on a busy
    # machine); without a deadline the trickle takes
    # minutes and the scan ends without an error.
    assert not rep.ok and any("too slowly" in e for e in rep.errors), rep.errors
    print(f"trickling server given up after {took:.1f}s")


def test_a_stop_request_ends_a_scan_within_seconds_whatever_the_server_does(tmp_path: Path, dovecot: Dovecot,
                                                                            db_url: str) -> None:
    dovecot.deliver_files(_questions(60))
    proxy = TrickleProxy(dovecot.port, rate=200)
    try:
        cfg = load_config(_config(tmp_path, dovecot, proxy.port, db_url))
        cfg.settings.mailboxes[0].timeout_seconds = 600  # a generous deadline: only the stop ends it
        store, directory = prepare_store(cfg)
        stop = threading.Event()
        from worker.ingest.scan import Ingestor

        done: list[tuple[float, list[str]]] = []

        def scan() -> None:
            rep = Ingestor(store, cfg, directory, stop=stop).scan()
            done.append((time.monotonic(), rep.errors))

        t = threading.Thread(target=scan, daemon=True)
        t.start()
        # Stop once the server trickles its FETCH answer (login and SELECT go at full speed):
        # a point reached by progress, not by a clock.
        deadline = time.monotonic() + 120
        while proxy.trickled < 400 and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        asked = time.monotonic()
        stop.set()
        t.join(120)  # the trickle alone would take minutes
    finally:
        proxy.close()
    assert done, "the scan did not stop"
    # Ended by the stop in the middle of the FETCH, not by the answer coming to its end.
    assert any("stopped while the server was still answering" in e for e in done[0][1]), done[0][1]
    print(f"stopped {done[0][0] - asked:.1f}s after the request")
