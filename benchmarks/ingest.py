"""Ingest speed and memory against a throwaway Dovecot.

Loads N generated messages, then times (1) a full `scan` into a fresh SQLite store and (2)
imapclient's bare FETCH of the same header fields, in the same run; prints both, their ratio
and the scan's peak memory. Each N runs in a child process so peak RSS is per N.

    python benchmarks/ingest.py                 # N = 20000 50000 100000
    python benchmarks/ingest.py --sizes 5000    # quick

Targets (issue 2): >= 10k msgs/s for 100k messages, within 2x of the bare fetch, memory flat
as N grows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def generate(n: int) -> list[bytes]:
    from worker.synth import build_message

    t0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        client = f"client{i % 200}.example"
        if i % 3 == 2:
            out.append(build_message(sender=f"owner{i % 7}@firm.example", to=[f"p{i % 50}@{client}"],
                                     subject=f"Re: Matter {i // 3}", date=t0 + timedelta(minutes=i),
                                     message_id=f"<m{i}@firm.example>", in_reply_to=f"<m{i - 2}@{client}>",
                                     references=[f"<m{i - 2}@{client}>"]))
        else:
            out.append(build_message(sender=(f"Person {i % 50}", f"p{i % 50}@{client}"),
                                     to=["shared@firm.example"], cc=[f"owner{i % 7}@firm.example"],
                                     subject=f"Matter {i // 3}", date=t0 + timedelta(minutes=i),
                                     message_id=f"<m{i}@{client}>", body="Thanks!" if i % 10 == 0 else
                                     "Could you look at the attached draft and tell me what you think?"))
    return out


def child(n: int) -> None:
    """Runs in its own process: one Dovecot, n messages, scan and bare fetch."""
    import imapclient
    from servers import Dovecot

    from worker.app import prepare_store, run_scan
    from worker.config import validate_data
    from worker.headers import FETCH_FIELDS
    from worker.mailbox.imap import HEADER_ITEM, chunk_by_command_length

    root = Path(tempfile.mkdtemp(prefix="carewatch-bench-"))
    d = Dovecot(root)
    d.write_config()
    t = time.perf_counter()
    d.deliver_files(generate(n))
    d.start()
    d.doveadm("index", "-u", d.user, "INBOX")
    load_s = time.perf_counter() - t
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # Bare fetch: the same fields, the same batch size, nothing else.
    t = time.perf_counter()
    with imapclient.IMAPClient("127.0.0.1", port=d.port, ssl=False) as c:
        c.login(d.user, d.password)
        c.select_folder("INBOX", readonly=True)
        uids = c.search(["UID", "1:*"])
        got = 0
        for part in chunk_by_command_length(uids, 500, 8000):
            got += len(c.fetch(part, [HEADER_ITEM, b"INTERNALDATE"]))
    bare_s = time.perf_counter() - t
    assert got == n, (got, n)

    os.environ["BENCH_PW"] = d.password
    clients = [{"name": f"Client {k}", "domains": [f"client{k}.example"], "owner": "o@firm.example",
                "contacts": [{"name": "P", "email": f"p0@client{k}.example", "role": "principal"}]}
               for k in range(200)]
    cfg = validate_data({
        "firm": {"domains": ["firm.example"]},
        "store": {"url": f"sqlite:///{root / 'bench.db'}"},
        "owners": [{"name": "O", "email": "o@firm.example"}],
        "clients": clients,
        "mailboxes": [{"name": "bench", "host": "127.0.0.1", "port": d.port, "tls": "none",
                       "allow_plaintext": True, "username": d.user, "password_env": "BENCH_PW",
                       "folders": ["INBOX"]}],
    }, None, os.environ)
    store, directory = prepare_store(cfg)
    t = time.perf_counter()
    rep = run_scan(cfg, store, directory)
    scan_s = time.perf_counter() - t
    assert rep.ok and rep.stored == n, rep
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d.stop()
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"n": n, "load_s": load_s, "bare_s": bare_s, "scan_s": scan_s,
                      "fields": len(FETCH_FIELDS), "rss_before_mib": rss_before / 1024,
                      "peak_rss_mib": peak_kib / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 100_000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    print(f"{'N':>8} {'scan s':>8} {'scan msg/s':>11} {'bare s':>8} {'bare msg/s':>11} {'ratio':>6} "
          f"{'peak RSS MiB':>13}")
    for n in a.sizes:
        r = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            sys.exit(1)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{n:>8} {res['scan_s']:>8.2f} {n / res['scan_s']:>11,.0f} {res['bare_s']:>8.2f} "
              f"{n / res['bare_s']:>11,.0f} {res['scan_s'] / res['bare_s']:>6.2f} {res['peak_rss_mib']:>13.0f}")


if __name__ == "__main__":
    main()
