"""The steady state: what a running firm's small scans and CLI calls cost on a big store.

    python benchmarks/steady.py [--size 100000] [--new 1000] [--rounds 5]

Loads the demo firm, scaled to about --size messages, into a throwaway Dovecot and scans it
once into SQLite (BENCH_STORE_URL: PostgreSQL). Then, each round:

* --new new messages arrive (70% client mail in INBOX, 30% the firm's replies in Sent);
  imapclient fetches them bare (the scan's header fields, nothing parsed or stored) and
  `carewatch scan` reads them; both start with Dovecot's header cache dropped, as a
  message nobody has fetched yet is;
* `carewatch scan` again, with no new mail;
* `carewatch --help`.

`carewatch scan --json` reports the scan's own time and the command's (config and store set
up too); the wall time adds Python starting and importing. Prints one JSON object per round
and the medians. BENCH_PROFILE=FILE writes a cProfile of the last round's scan of new mail.
Nothing here is asserted: compare the scan with the bare fetch measured beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import FOLDERS, bench_config_text, cold, demo_dovecot  # noqa: E402
from servers import Dovecot  # noqa: E402

CLI = [sys.executable, "-m", "worker.cli"]


def write_config(firm_config: Path, d: Dovecot, store_url: str, path: Path) -> Path:
    """The demo firm's config, reading the throwaway Dovecot."""
    path.write_text(bench_config_text(firm_config, d, store_url))
    return path


def new_mail(cfg_path: Path, n: int, round_: int) -> dict[str, list[bytes]]:
    """n messages after the demo's last: questions from contacts, and replies to them."""
    from worker.config import load_config
    from worker.demo import DEFAULT_NOW
    from worker.synth import build_message

    cfg = load_config(cfg_path)
    contacts = [(c.name, ct.email) for c in cfg.clients for ct in c.contacts]
    staff = [o.email for o in cfg.settings.owners]
    shared = cfg.settings.notify.reply_to or staff[0]
    start = DEFAULT_NOW.replace(tzinfo=None) + timedelta(days=round_ + 1)
    inbox, sent = [], []
    for k in range(n):
        client, who = contacts[(k * 7919 + round_) % len(contacts)]
        when = start + timedelta(seconds=20 * k)
        mid = f"<steady{round_}.{k}@bench.example>"
        if k % 10 < 7:
            inbox.append(build_message(sender=who, to=[shared], subject=f"Question {round_}.{k} for {client}?",
                                       date=when, message_id=mid, body="Could you confirm the figures? Thanks"))
        else:
            sent.append(build_message(sender=staff[k % len(staff)], to=[who], subject=f"Re: update {round_}.{k}",
                                      date=when, message_id=mid, body="Here they are."))
    return {"INBOX": inbox, "Sent": sent}


def bare_fetch(d: object, since: dict[str, int]) -> tuple[float, int, dict[str, int]]:
    """imapclient alone: log in, find the new UIDs, fetch the scan's header fields."""
    import imapclient

    from worker.mailbox.imap import HEADER_ITEM, chunk_by_command_length

    t = time.perf_counter()
    got, last = 0, {}
    with imapclient.IMAPClient("127.0.0.1", port=d.port, ssl=False) as c:  # type: ignore[attr-defined]
        c.login(d.user, d.password)  # type: ignore[attr-defined]
        for folder in FOLDERS:
            c.select_folder(folder, readonly=True)
            uids = c.search(["UID", f"{since.get(folder, 0) + 1}:*"])
            uids = [u for u in uids if u > since.get(folder, 0)]
            last[folder] = max(uids, default=since.get(folder, 0))
            for part in chunk_by_command_length(uids, 500, 8000):
                got += len(c.fetch(part, [HEADER_ITEM, b"INTERNALDATE"]))
    return time.perf_counter() - t, got, last


def cli(cfg: Path, *args: str, profile: str | None = None) -> tuple[float, dict]:
    """Run carewatch as a user does; (wall seconds, its --json report or {})."""
    cmd = [*CLI, "--config", str(cfg), *args]
    if profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "worker.cli", "--config", str(cfg), *args]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return wall, (json.loads(r.stdout) if "--json" in args else {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    t = time.perf_counter()
    root, d, firm = demo_dovecot(a.size)
    try:
        store_url = os.environ.get("BENCH_STORE_URL") or f"sqlite:///{root / 'bench.db'}"
        cfg = write_config(firm.config, d, store_url, root / "bench.toml")
        first_wall, first = cli(cfg, "scan", "--json")
        stored = sum(f["stored"] + f["duplicates"] for f in first["folders"])
        print(json.dumps({"size": stored, "load_s": round(time.perf_counter() - t - first_wall, 1),
                          "first_scan_s": round(first_wall, 1)}), flush=True)
        _, _, since = bare_fetch(d, {})  # where the store's cursors stand
        rounds = []
        for k in range(a.rounds):
            mail = new_mail(cfg, a.new, k)
            for folder, raws in mail.items():
                d.deliver_files(raws, folder)
                d.doveadm("index", "-u", d.user, folder)  # as delivery by LDA/LMTP leaves it
            cold(d)
            bare_s, got, since = bare_fetch(d, since)
            assert got == a.new, got
            cold(d)
            profile = os.environ.get("BENCH_PROFILE") if k == a.rounds - 1 else None
            wall, rep = cli(cfg, "scan", "--json", profile=profile)
            assert sum(f["stored"] + f["duplicates"] + f["skipped"] for f in rep["folders"]) == a.new, rep
            idle_wall, idle = cli(cfg, "scan", "--json")
            help_wall, _ = cli(cfg, "--help")
            row = {"round": k + 1, "bare_fetch_s": round(bare_s, 3), "scan_wall_s": round(wall, 3),
                   "scan_in_process_s": rep["seconds"]["scan"], "scan_command_s": rep["seconds"]["command"],
                   "no_new_wall_s": round(idle_wall, 3), "no_new_in_process_s": idle["seconds"]["scan"],
                   "no_new_command_s": idle["seconds"]["command"], "help_s": round(help_wall, 3)}
            row["scan_vs_bare"] = round(row["scan_in_process_s"] / bare_s, 2)
            rounds.append(row)
            print(json.dumps(row), flush=True)
        med = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0] if k != "round"}
        print(json.dumps({"median": med}))
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
