"""A server that trickles: a few bytes at a time, never silent long enough for a socket
timeout. A FETCH's answers have a deadline in proportion to what was asked; past it the
connection is dropped and the scan fails over (the worker retries with backoff), and a stop
request (Ctrl-C, SIGTERM) ends a scan within seconds whatever the server does."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from conftest import write_config
from servers import Dovecot, free_port

from worker.app import prepare_store, run_scan
from worker.config import load_config
from worker.synth import build_message

T0 = datetime(2026, 11, 16, 9, 0)


class TrickleProxy:
    """A TCP relay to `target` that passes what the server sends at `rate` bytes a second,
    after the first `fast` bytes (login and SELECT go at full speed)."""

    def __init__(self, target_port: int, rate: int = 400, fast: int = 2000) -> None:
        self.target, self.rate, self.fast = ("127.0.0.1", target_port), rate, fast
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.rate), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        sent = 0
        deadline = time.monotonic() + 120  # bounded: the test ends long before
        try:
            while (data := src.recv(65536)) and time.monotonic() < deadline:
                for k in range(0, len(data), 20):
                    dst.sendall(data[k:k + 20])
                    sent += 20
                    if rate is not None and sent > self.fast:
                        time.sleep(20 / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _config(tmp_path: Path, dovecot: Dovecot, port: int, db_url: str) -> Path:
    cfg = write_config(tmp_path, db_url, dovecot,
                       mailbox_extra="timeout_seconds = 2\n")
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
    # 2 s + 60 messages x 0.05 s = 5 s for the answers (plus login and SELECT at the trickle).
    assert not rep.ok and any("too slowly" in e for e in rep.errors), rep.errors
    print(f"trickling server given up after {took:.1f}s")
    assert took < 60


def test_a_stop_request_ends_a_scan_within_seconds_whatever_the_server_does(tmp_path: Path, dovecot: Dovecot,
                                                                            db_url: str) -> None:
    dovecot.deliver_files(_questions(60))
    proxy = TrickleProxy(dovecot.port, rate=200)
    try:
        cfg = load_config(_config(tmp_path, dovecot, proxy.port, db_url))
        cfg.settings.mailboxes[0].timeout_seconds = 600  # a generous deadline: only the stop ends it
        store, directory = prepare_store(cfg)
        stop = threading.Event()
        from worker.ingest import Ingestor

        done: list[float] = []

        def scan() -> None:
            Ingestor(store, cfg, directory, stop=stop).scan()
            done.append(time.monotonic())

        t = threading.Thread(target=scan, daemon=True)
        t.start()
        time.sleep(3)  # well into the trickle
        asked = time.monotonic()
        stop.set()
        t.join(30)
    finally:
        proxy.close()
    assert done, "the scan did not stop within 30 s"
    print(f"stopped {done[0] - asked:.1f}s after the request")
    assert done[0] - asked < 10
