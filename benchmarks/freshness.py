"""What an owner feels: seconds from a client's message arriving to the alert email, and from
a reply arriving to the alert resolving; and what an idle worker costs.

    python benchmarks/freshness.py [--size 100000] [--trials 10] [--idle-seconds 600]

A throwaway Dovecot holds the demo firm scaled to about --size messages, its mail leading up
to this hour; `carewatch run` (IMAP IDLE on, SMTP to an aiosmtpd server here, quiet hours off)
reads it and tells the owners about what already waits. Then, --trials times each:

* chaser: a client follows up on a thread whose alert was told (IMAP APPEND to INBOX, as
  delivery would); the clock runs until the SMTP server receives the email about it;
* reply: the firm answers another waiting thread, copied to the shared mailbox (INBOX, where
  IDLE looks); the clock runs until its alert is resolved in the store.

Then the worker is left alone for --idle-seconds and its CPU time (with its children) is read
from /proc. Prints one JSON line per trial and a summary: median and worst of each, and the
idle CPU as a share of one core.
"""

from __future__ import annotations

import argparse
import email
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, make_msgid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import bench_config_text  # noqa: E402

FOLDERS = ("INBOX", "Sent")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def waiting_threads(db: Path) -> list[tuple[int, str, str, str, str]]:
    """(alert id, message id, subject, contact, owner) of the told unanswered alerts."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT a.id, a.facts, a.contact_email, a.owner_email FROM alert a "
                         "WHERE a.kind = 'unanswered' AND a.state IN ('notified', 'escalated') "
                         "AND a.owner_email IS NOT NULL ORDER BY a.id").fetchall()
    out = []
    for aid, facts, contact, owner in rows:
        f = json.loads(facts)
        out.append((aid, f["message_id"], f["subject"], contact, owner))
    return out


def alert_state(db: Path, aid: int) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT state FROM alert WHERE id = ?", (aid,)).fetchone()[0]


def message(sender: str, to: str, subject: str, parent: str, body: str, date: datetime | None = None,
            cc: str | None = None) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    if cc:
        msg["Cc"] = cc
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    if parent:
        msg["In-Reply-To"], msg["References"] = parent, parent
    msg.set_content(body)
    return bytes(msg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=600)
    a = ap.parse_args()

    from servers import Dovecot, SmtpSink, free_port

    from worker.demo import generate

    root = Path(tempfile.mkdtemp(prefix="carewatch-fresh-"))
    d = Dovecot(root)
    sink = SmtpSink().start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        d.write_config()
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        firm = generate(d.home, seed=7, now=now, extra_clients=max(0, round(a.size / 95) - 12))
        # Threads to try on: a question a week old from each of 2 x trials contacts, unanswered.
        from worker.config import load_config
        from worker.demo import FIRM

        shared = f"clients@{FIRM}"
        people = [ct.email for c in load_config(firm.config, environ={}).clients for ct in c.contacts
                  if not c.internal][-2 * a.trials:]
        questions = [message(p, shared, f"Question {k} about the accounts", "", "Could you send the figures?",
                             date=now - timedelta(days=7)) for k, p in enumerate(people)]
        d.deliver_files(questions)
        d.chown_mail()
        d.start()
        for folder in FOLDERS:
            d.doveadm("index", "-u", d.user, folder)
        port = free_port()
        db = root / "fresh.db"
        cfg = bench_config_text(firm.config, d, f"sqlite:///{db}", name="shared", idle=True)
        cfg = re.sub(r"(?m)^\[notify\]\n", '[notify]\ntransport = "smtp"\nquiet_hours = false\n', cfg, count=1)
        cfg += (f'\n[notify.smtp]\nhost = "127.0.0.1"\nport = {sink.port}\ntls = "none"\nallow_plaintext = true\n'
                f'\n[service]\nmetrics_port = {port}\nmetrics_host = "127.0.0.1"\n')
        (root / "fresh.toml").write_text(cfg)
        env = {**os.environ, "BENCH_PW": d.password}
        log = (root / "worker.log").open("wb")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "--config", str(root / "fresh.toml"),
                                 "--json-logs", "run"], stdout=subprocess.DEVNULL, stderr=log, env=env)
        # Ready: a good scan of every folder, and what already waited told to its owners.
        while True:
            assert proc.poll() is None, (root / "worker.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    metrics = r.read().decode()
                if "carewatch_outbox_backlog 0.0" in metrics and waiting_threads(db) and sink.messages:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        print(json.dumps({"size": firm.messages, "ready_s": round(time.perf_counter() - t0, 1),
                          "told": len(sink.messages)}), flush=True)
        threads = waiting_threads(db)
        assert len(threads) >= 2 * a.trials, f"only {len(threads)} waiting threads to try"
        chase_s, resolve_s = [], []
        for k in range(a.trials):
            aid, mid, subject, contact, _owner = threads[2 * k]
            before = len(sink.messages)
            t = time.perf_counter()
            d.append([message(contact, shared, f"Re: {subject}", mid, "Any news on this? I need it today.")])
            while not any(subject in raw.decode(errors="replace") for _, _, raw in sink.messages[before:]):
                assert proc.poll() is None
                assert time.perf_counter() - t < 300, f"no alert email for the chaser on {subject!r}"
                time.sleep(0.1)
            chase_s.append(time.perf_counter() - t)
            aid, mid, subject, contact, owner = threads[2 * k + 1]
            t = time.perf_counter()
            d.append([message(owner, contact, f"Re: {subject}", mid, "Here is the answer.", cc=shared)])
            while alert_state(db, aid) in ("open", "notified", "escalated"):
                assert proc.poll() is None
                assert time.perf_counter() - t < 300, f"alert {aid} not resolved by the reply"
                time.sleep(0.1)
            resolve_s.append(time.perf_counter() - t)
            print(json.dumps({"trial": k + 1, "chaser_to_email_s": round(chase_s[-1], 2),
                              "reply_to_resolved_s": round(resolve_s[-1], 2)}), flush=True)
        c0, t = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(a.idle_seconds)
        idle_share = (cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t)
        print(json.dumps({"chaser_to_email_s": {"median": round(statistics.median(chase_s), 2),
                                                "worst": round(max(chase_s), 2)},
                          "reply_to_resolved_s": {"median": round(statistics.median(resolve_s), 2),
                                                  "worst": round(max(resolve_s), 2)},
                          "idle_cpu_share_of_one_core": round(idle_share, 4),
                          "idle_seconds": a.idle_seconds}))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        sink.stop()
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
