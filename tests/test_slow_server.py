"""A server that trickles: a few bytes at a time, never silent long enough for a socket
timeout. A FETCH's answers have a deadline in proportion to what was asked, every other
command's answer one of 4 x timeout_seconds; past it the connection is dropped and the scan
fails over (the worker retries with backoff), and a stop request (Ctrl-C, SIGTERM) ends a
scan within seconds whatever the server does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from servers import Dovecot, TcpProxy
from sqlalchemy import func, select
from sqlmodel import col

from worker.config import load_config
from worker.ingest.run import prepare_store, run_scan
from worker.store.models import FolderState, Message
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


#: The first response of each command's answer, as Dovecot sends it.
FIRST_ANSWER = {"LIST": b"* LIST ", "EXAMINE": b"* FLAGS ", "STATUS": b"* STATUS ", "SEARCH": b"* SEARCH"}


class StallingAnswer:
    """A proxy in front of Dovecot that, the first time `command` is answered, sends
    "* OK still working" every 0.3 s for `seconds` before the answer: the socket is never
    silent, so only an overall deadline (or a stop) ends the wait."""

    def __init__(self, dovecot: Dovecot, command: str, seconds: float = 600) -> None:
        from servers import ImapAnswers

        self.started = threading.Event()
        marker = FIRST_ANSWER[command]

        def change(response: bytes) -> bytes | Iterator[bytes]:
            if not response.startswith(marker) or self.started.is_set():
                return response
            self.started.set()
            return self._stall(response, seconds)

        self.proxy = TcpProxy(dovecot.port, on_server=lambda: ImapAnswers(change))

    @staticmethod
    def _stall(response: bytes, seconds: float) -> Iterator[bytes]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            yield b"* OK still working\r\n"
            time.sleep(0.3)
        yield response


def _scan_in_thread(cfg_path: Path, stop: threading.Event) -> tuple[threading.Thread, list[list[str]], Any]:
    from worker.ingest.scan import Ingestor

    cfg = load_config(cfg_path)
    store, directory = prepare_store(cfg)
    done: list[list[str]] = []
    t = threading.Thread(target=lambda: done.append(Ingestor(store, cfg, directory, stop=stop).scan().errors),
                         daemon=True)
    t.start()
    return t, done, store


@pytest.mark.parametrize("command", sorted(FIRST_ANSWER))
def test_an_answer_that_never_completes_is_given_up_at_its_deadline(tmp_path: Path, dovecot: Dovecot, db_url: str,
                                                                    command: str) -> None:
    """Not only FETCH: a LIST, EXAMINE, STATUS or SEARCH answered with "still working" for ever
    fails the mailbox at 4 x timeout_seconds (here 2 s), says which command, and stores nothing."""
    dovecot.deliver_files(_questions(3))
    slow = StallingAnswer(dovecot, command)
    try:
        cfg = write_config(tmp_path, db_url, dovecot, mailbox_extra="timeout_seconds = 2\n")
        # A pattern, so that the folders are listed (LIST); then EXAMINE, STATUS and SEARCH.
        text = cfg.read_text().replace(f"port = {dovecot.port}", f"port = {slow.proxy.port}")
        cfg.write_text(text.replace('folders = ["INBOX", "Sent"]', 'folders = ["INB*", "Sent"]'))
        t, done, store = _scan_in_thread(cfg, threading.Event())
        t.join(200)  # the stall alone lasts 600 s
    finally:
        slow.proxy.close()
    assert slow.started.is_set() and done, "the scan did not end"
    assert any(f"the server sent its answer to {command} too slowly: not complete within 8s" in e
               for e in done[0]), done[0]
    with store.session() as db:
        assert db.execute(select(func.count()).select_from(Message)).scalar_one() == 0
        errors = db.execute(select(col(FolderState.last_error))).scalars().all()
    assert errors and all(e and "too slowly" in e for e in errors), errors  # for /healthz


@pytest.mark.parametrize("command", sorted(FIRST_ANSWER))
def test_a_stop_ends_a_scan_waiting_for_any_answer(tmp_path: Path, dovecot: Dovecot, db_url: str,
                                                   command: str) -> None:
    dovecot.deliver_files(_questions(3))
    slow = StallingAnswer(dovecot, command)
    stop = threading.Event()
    try:
        cfg = write_config(tmp_path, db_url, dovecot, mailbox_extra="timeout_seconds = 600\n")
        text = cfg.read_text().replace(f"port = {dovecot.port}", f"port = {slow.proxy.port}")
        cfg.write_text(text.replace('folders = ["INBOX", "Sent"]', 'folders = ["INB*", "Sent"]'))
        t, done, _ = _scan_in_thread(cfg, stop)
        assert slow.started.wait(60), f"the scan never sent {command}"
        stop.set()  # while the server is answering "still working"
        t.join(200)  # the stall alone lasts 600 s, the deadline 40 minutes
    finally:
        slow.proxy.close()
    assert done, "the scan did not stop"
    # A stop is not a failure of the server: the scan either says it was stopped mid-answer,
    # or (having read the answer in a look-ahead) sees the stop first and ends quietly.
    assert all("stopped while the server was still answering" in e for e in done[0]), done[0]
