"""Evaluation speed and memory: a full `status --json` over N stored messages, 10k contacts.

    python benchmarks/evaluate.py                     # N = 250k 500k 1M
    python benchmarks/evaluate.py --sizes 100000

Messages are written straight into a SQLite store (ingest has its own benchmark). Each size
runs the real `carewatch status --json` (the CLI, output to a file) in a child process pinned
to one core, and reports its time (imports included) and peak RSS.
Target (issue 3): 1M messages under 5 s and 500 MB on one core, time roughly linear.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = "2026-11-20T12:00:00Z"
CLIENTS = 1000
PER_CLIENT = 10  # contacts: 10k in all


def write_config(d: Path) -> Path:
    lines = [
        '[firm]\ndomains = ["firm.example"]\n',
        f'[store]\nurl = "sqlite:///{d / "bench.db"}"\n',
        '[[owners]]\nname = "O"\nemail = "o@firm.example"\n',
    ]
    for c in range(CLIENTS):
        contacts = ", ".join(
            f'{{ name = "P{c}-{k}", email = "p{k}@c{c}.example", role = "{"principal" if k == 0 else "user"}" }}'
            for k in range(PER_CLIENT)
        )
        lines.append(
            f'[[clients]]\nname = "Client {c}"\ndomains = ["c{c}.example"]\nowner = "o@firm.example"\n'
            f"contacts = [{contacts}]\n"
        )
    p = d / "bench.toml"
    p.write_text("\n".join(lines))
    return p


def populate(cfg_path: Path, n: int) -> None:
    from worker.config import load_config
    from worker.ingest.run import prepare_store

    cfg = load_config(cfg_path)
    store, _ = prepare_store(cfg)  # migrate and sync the 10k contacts
    store.dispose()
    db = sqlite3.connect(cfg.settings.store.url.removeprefix("sqlite:///"))
    ids = {email: (cid, client) for cid, email, client in db.execute("SELECT id, email, client_id FROM contact")}
    emails = sorted(ids)
    rng = random.Random(7)
    start = datetime(2025, 11, 1, tzinfo=UTC)
    span = 365 * 86400
    now = datetime.now(UTC).replace(tzinfo=None)
    from worker.store.threads import thread_hash

    rows: list[tuple] = []
    links: list[tuple] = []
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    i = 0
    while i < n:
        email = emails[rng.randrange(len(emails))]
        cid, client = ids[email]
        t = start + timedelta(seconds=rng.randrange(span))
        mid = f"<t{i}@c.example>"
        tid = thread_hash(mid)  # what ingest's threading gives a conversation
        subject = f"Matter {i}"
        # A thread: question, maybe a chaser, usually a reply, sometimes thanks.
        rows.append(
            (
                mid,
                mid,
                None,
                "",
                subject,
                subject.lower(),
                email,
                "",
                "shared@firm.example",
                "",
                t.strftime(fmt),
                "inbound",
                0,
                0,
                1,
                0,
                client,
                str(cid),
                "bench",
                "INBOX",
                now.strftime(fmt),
                tid,
            )
        )
        links.append((mid, cid, 1, t.strftime(fmt)))
        i += 1
        k = 1
        if rng.random() < 0.1 and i < n:
            rows.append(
                (
                    f"<t{i}@c.example>",
                    mid,
                    mid,
                    mid,
                    "Re: " + subject,
                    subject.lower(),
                    email,
                    "",
                    "shared@firm.example",
                    "",
                    (t + timedelta(hours=20)).strftime(fmt),
                    "inbound",
                    0,
                    0,
                    1,
                    0,
                    client,
                    str(cid),
                    "bench",
                    "INBOX",
                    now.strftime(fmt),
                    tid,
                )
            )
            links.append((f"<t{i}@c.example>", cid, 1, (t + timedelta(hours=20)).strftime(fmt)))
            i += 1
            k += 1
        if rng.random() < 0.85 and i < n:
            rt = t + timedelta(minutes=rng.randrange(10, 3000))
            rows.append(
                (
                    f"<t{i}@firm.example>",
                    mid,
                    mid,
                    mid,
                    "Re: " + subject,
                    subject.lower(),
                    "o@firm.example",
                    "",
                    email,
                    "",
                    rt.strftime(fmt),
                    "outbound",
                    0,
                    0,
                    0,
                    0,
                    client,
                    str(cid),
                    "bench",
                    "Sent",
                    now.strftime(fmt),
                    tid,
                )
            )
            links.append((f"<t{i}@firm.example>", cid, 0, rt.strftime(fmt)))
            i += 1
        if len(rows) >= 50000:
            _flush(db, rows, links)
    _flush(db, rows, links)
    from worker.store.threads import REFRESH_REPLIES, episodes_sql

    db.execute(REFRESH_REPLIES)  # what ingest keeps current: when each inbound was answered...
    db.execute(episodes_sql("sqlite", False))  # ...and the answered episodes
    db.commit()
    db.close()


def _flush(db: sqlite3.Connection, rows: list[tuple], links: list[tuple]) -> None:
    db.executemany(
        'INSERT INTO message (message_id, in_reply_to, "references", subject, norm_subject, from_addr, '
        "from_name, to_addrs, cc_addrs, sent_at, direction, automated, acknowledgement, firm_in_to, firm_in_cc, "
        "client_id, contact_ids, mailbox, folder, ingested_at, thread_id, synthetic_id) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
        [r[:1] + r[2:] for r in rows],  # (the second field, the thread's first message, is not stored)
    )
    db.executemany(
        "INSERT INTO message_contact (message_pk, contact_id, inbound, automated, sent_at, day) "
        "SELECT id, ?, ?, 0, ?, CAST(strftime('%s', ?) AS INTEGER) / 86400 FROM message WHERE message_id = ?",
        [(cid, inbound, at, at, mid) for mid, cid, inbound, at in links],
    )
    rows.clear()
    links.clear()


def child(cfg_path: str) -> None:
    """Runs in its own process: the real `carewatch status --json`, output to a file."""
    t = time.perf_counter()
    from worker.cli.main import app

    out_path = Path(cfg_path).with_name("status.json")
    prof = None
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    real_stdout = sys.stdout
    with out_path.open("w") as sys.stdout:
        app(["--log-level", "WARNING", "--config", cfg_path, "status", "--json", "--now", NOW],
            standalone_mode=False)
    sys.stdout = real_stdout
    secs = time.perf_counter() - t
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before reading the output
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["BENCH_PROFILE"])
    doc = json.loads(out_path.read_text())
    print(
        json.dumps(
            {
                "seconds": secs,
                "peak_rss_mib": peak_mib,
                "messages": doc["messages_considered"],
                "json_bytes": out_path.stat().st_size,
                "lapses": sum(len(c["lapses"]) + sum(len(p["lapses"]) for p in c["contacts"])
                              for c in doc["clients"]),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per size: the median and the best are printed "
                    "(shared machines vary by a third from run to run)")
    ap.add_argument("--keep", type=Path, help="keep the generated stores under this folder and reuse them")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    print(f"{'N':>9} {'populate s':>11} {'median s':>9} {'best s':>7} {'msgs/s':>11} {'peak RSS MiB':>13} "
          f"{'lapses':>7} {'JSON MiB':>9}")
    for n in a.sizes:
        with tempfile.TemporaryDirectory(prefix="carewatch-eval-") as tmp:
            where = Path(tmp)
            if a.keep:
                where = a.keep / str(n)
                where.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            if (where / "bench.toml").exists():
                cfg = where / "bench.toml"
            else:
                cfg = write_config(where)
                populate(cfg, n)
            pop = time.perf_counter() - t
            # taskset: one core, as the target says.
            cmd = [sys.executable, __file__, "--child", str(cfg)]
            if os.path.exists("/usr/bin/taskset"):
                cmd = ["taskset", "-c", "0", *cmd]
            runs = []
            for _ in range(a.repeat):
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode:
                    print(r.stderr[-3000:], file=sys.stderr)
                    sys.exit(1)
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            times = sorted(x["seconds"] for x in runs)
            res = runs[0]
            print(
                f"{n:>9} {pop:>11.1f} {times[len(times) // 2]:>9.2f} {times[0]:>7.2f} "
                f"{res['messages'] / times[len(times) // 2]:>11,.0f} "
                f"{max(x['peak_rss_mib'] for x in runs):>13.0f} {res['lapses']:>7} {res['json_bytes'] / 2**20:>9.1f}"
            )

if __name__ == "__main__":
    main()
