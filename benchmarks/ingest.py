"""Ingest speed and memory against a throwaway Dovecot.

Loads about N messages of the demo firm (worker/demo.py), then times (1) imapclient's bare
FETCH of the scan's header fields, (2) the same FETCHes over a plain socket with the answers
dropped (the server alone: what no client here can beat; the scan also asks for the first
bytes of client mail's body, mostly along with its headers) and (3) a full `scan` into a fresh
SQLite store, in the same run; prints them, the scan's ratio to the bare fetch and its share
of the server's ceiling, and the scan's peak memory: the whole process's, and how far it rose
above what the process held when the scan started (the firm's config grows with N; the
scan's own memory should not). Each N runs in a child process so peak RSS is per N. Every
timing starts with Dovecot's header cache removed, as a first scan would (see cold()), and
each prints the CPU time per message of every process taking part: with Dovecot, the scan
and its fetch helper sharing the machine's cores, that is what sets the pace.

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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("INBOX", "Sent")
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
if TYPE_CHECKING:
    from servers import Dovecot

    from worker.config import Config
    from worker.demo import DemoFirm


PHASES: dict[str, float] = {}


def time_phases(clock: Callable[[], float] = time.perf_counter) -> None:
    """Wrap the scan's stages to add up where the time goes (BENCH_PHASES=1), in PHASES,
    by `clock` (wall time; benchmarks/stages.py passes the process's CPU time)."""
    import functools

    from sqlalchemy.orm import Session

    from worker.ingest import prepare as parsing
    from worker.ingest import storing
    from worker.store.db import Store

    def wrap(owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*a: object, **k: object) -> object:
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                PHASES[label] = PHASES.get(label, 0.0) + clock() - t

        setattr(owner, name, timed)

    # On a helper thread these overlap with storing; in a helper process (big folders) only
    # "store batches" is seen here, and the rest of the time is waiting for the helper. IMAP
    # waits are not shown: FETCHes are pipelined and overlap with parsing.
    wrap(storing.BatchWriter, "write", "store batches")
    wrap(parsing, "parse_batch", "parse and classify")
    wrap(storing, "plan_threads", "plan threads")
    wrap(Store, "insert_ignore", "insert")
    wrap(storing, "finish_threads", "finish threads")
    wrap(storing, "link_contacts", "link contacts")
    wrap(Session, "commit", "commit")


class HelperPeak:
    """The fetch helper's peak memory, sampled from /proc while the scan runs. Not getrusage:
    a spawned process inherits its parent's peak RSS at the fork (Linux keeps ru_maxrss
    across exec), so RUSAGE_CHILDREN reported the scan's own size at that moment. VmHWM is
    the new process's own high-water mark; sampled every 50 ms it misses at most the last
    few milliseconds of a helper's life."""

    def __init__(self) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HelperPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = Path(f"/proc/{os.getpid()}/task")
        while not self._stop.wait(0.05):
            for task in me.iterdir():
                try:
                    pids = (task / "children").read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    try:
                        if b"multiprocessing" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by process `pid`'s children: those reaped (the kernel adds them
    to its cutime and cstime) and those still running. For Dovecot's master, that is every
    imap process that served a connection."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(p: int) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

    total = sum(int(x) for x in fields(pid)[13:15])  # cutime, cstime (fields 16, 17)
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                try:
                    total += sum(int(x) for x in fields(k)[11:15])  # utime, stime, cutime, cstime
                except OSError:
                    continue
                todo.append(k)
    return total / tick


def own_cpu_s() -> tuple[float, float]:
    """(this process, its reaped children) CPU seconds: the scan, and the fetch helper. CPU
    times from getrusage are right for children, unlike ru_maxrss (see HelperPeak)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def server_fetch(d: Dovecot, uids: dict[str, list[int]], window: int = 8) -> int:
    """The scan's header FETCHes, pipelined `window` deep over a plain socket, the answers read
    and dropped: how fast this Dovecot on this machine can hand the fields over at all, the
    ceiling of any client (the scan must also parse and store them on the same cores). Lines
    are read with readline and literals skipped by their announced size, so a header that
    happens to hold "OK" is never read as a completion. Returns the messages answered."""
    import re
    import socket

    from worker.mailbox.imap import HEADER_ITEM, chunk_by_command_length

    literal = re.compile(rb"\{(\d+)\}\r\n$")
    sock = socket.create_connection(("127.0.0.1", d.port))
    f = sock.makefile("rb")

    def until_tagged(tags: set[bytes]) -> tuple[int, bytes]:
        """Read to the next tagged completion of one of `tags`: (FETCH answers, its tag)."""
        answers = 0
        while True:
            line = f.readline()
            if not line:
                raise EOFError("Dovecot closed the connection")
            m = literal.search(line)
            if m:
                f.read(int(m.group(1)))
            if line.startswith(b"* ") and b" FETCH " in line[:24]:
                answers += 1
            elif not line.startswith(b"* ") and not m:
                tag, _, rest = line.partition(b" ")
                if tag in tags:
                    if not rest.startswith(b"OK"):
                        raise RuntimeError(f"{tag!r} failed: {rest!r}")
                    return answers, tag

    f.readline()  # the greeting
    sock.sendall(f'a LOGIN "{d.user}" "{d.password}"\r\n'.encode())
    until_tagged({b"a"})
    got = 0
    for folder, folder_uids in uids.items():
        sock.sendall(f'b EXAMINE "{folder}"\r\n'.encode())
        until_tagged({b"b"})
        parts = chunk_by_command_length(folder_uids, 500, 8000)
        in_flight: set[bytes] = set()
        sent = 0
        while sent < len(parts) or in_flight:
            while sent < len(parts) and len(in_flight) < window:
                tag = b"f%d" % sent
                sock.sendall(tag + b" UID FETCH " + ",".join(map(str, parts[sent])).encode()
                             + b" (UID INTERNALDATE " + HEADER_ITEM + b")\r\n")
                in_flight.add(tag)
                sent += 1
            answers, tag = until_tagged(in_flight)
            in_flight.discard(tag)
            got += answers
    sock.sendall(b"z LOGOUT\r\n")
    sock.close()
    return got


def cold(d: Dovecot) -> None:
    """Dovecot as before a first read of the mail: its cache of header fields removed. The
    first FETCH of a header field parses every message file and fills the cache (about 80
    µs a message on our VMs); later ones read the cache (about 25). Whichever of the bare
    fetch and the scan ran second was timed on a warm cache: the scan's ratio looked 15-25%
    better than it was. Both now start cold, as a first scan of a mailbox does (and a later
    scan reads only new mail, which no one has fetched yet)."""
    d.stop()
    for f in d.home.rglob("dovecot.index.cache*"):
        f.unlink()
    d.start()


def demo_dovecot(n: int) -> tuple[Path, Dovecot, DemoFirm]:
    """A throwaway Dovecot holding about n messages of the demo firm (INBOX and Sent), indexed,
    under a new temporary directory (the first of the three; the caller removes it)."""
    from servers import Dovecot

    from worker.demo import generate

    root = Path(tempfile.mkdtemp(prefix="carewatch-bench-"))
    d = Dovecot(root)
    try:
        d.write_config()
        # The demo firm is the one source of realistic mail: ~95 messages per client over four
        # months, written straight into Dovecot's Maildir.
        firm = generate(d.home, seed=7, extra_clients=max(0, round(n / 95) - 12))
        d.chown_mail()
        d.start()
    except BaseException:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    for folder in FOLDERS:
        d.doveadm("index", "-u", d.user, folder)
    return root, d, firm


def bench_mailbox(d: Dovecot, name: str = "bench", idle: bool = False) -> dict[str, object]:
    """The [[mailboxes]] entry that reads the throwaway Dovecot (its password in BENCH_PW)."""
    os.environ["BENCH_PW"] = d.password
    return {"name": name, "host": "127.0.0.1", "port": d.port, "tls": "none", "allow_plaintext": True,
            "username": d.user, "password_env": "BENCH_PW", "folders": list(FOLDERS), "idle": idle}


def bench_config_text(firm: Path, d: Dovecot, store_url: str, name: str = "bench", idle: bool = False) -> str:
    """The demo firm's config file as text, its store and its mailbox replaced, for benchmarks
    that run the CLI or the worker on it (the rest as the demo writes it)."""
    import re

    text = re.sub(r'(?m)^url = ".*"$', f'url = "{store_url}"', firm.read_text(), count=1)
    mailbox = "[[mailboxes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in bench_mailbox(d, name, idle).items())
    return re.sub(r"(?ms)^\[\[mailboxes\]\]\n.*?(?=^\[)", lambda _: mailbox + "\n", text, count=1)


def bench_config(firm: DemoFirm, d: Dovecot, store_url: str) -> Config:
    """The demo firm's config, reading the throwaway Dovecot into `store_url`."""
    import tomllib

    from worker.config import validate_data

    data = tomllib.loads(firm.config.read_text())
    data["store"] = {"url": store_url}
    if os.environ.get("BENCH_SQLITE_CACHE_MIB"):
        data["store"]["sqlite_cache_mib"] = int(os.environ["BENCH_SQLITE_CACHE_MIB"])
    data["mailboxes"] = [{k: v for k, v in bench_mailbox(d).items() if k != "idle"}]
    return validate_data(data, None, os.environ)


def child(n: int) -> None:
    """Runs in its own process: one Dovecot, n messages, scan and bare fetch."""
    t = time.perf_counter()
    root, d, firm = demo_dovecot(n)
    try:
        measure(n, root, d, firm, time.perf_counter() - t)
    finally:
        # A run that fails half-way leaves no Dovecot running and no Maildir (1.6 GB at 118k).
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def measure(n: int, root: Path, d: Dovecot, firm: DemoFirm, load_s: float) -> None:
    """The bare fetch, the server alone and the scan of the n messages in d; prints the figures."""
    import imapclient

    from worker.ingest.headers import FETCH_FIELDS
    from worker.ingest.run import prepare_store, run_scan
    from worker.mailbox.imap import HEADER_ITEM, chunk_by_command_length

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # Bare fetch: the same fields, the same folders and batch size, nothing else.
    cold(d)
    assert d.proc is not None
    dovecot_cpu = tree_cpu_s(d.proc.pid)
    bare_cpu = own_cpu_s()[0]
    t = time.perf_counter()
    got = 0
    sample: list[bytes] = []
    all_uids: dict[str, list[int]] = {}
    with imapclient.IMAPClient("127.0.0.1", port=d.port, ssl=False) as c:
        c.login(d.user, d.password)
        for folder in FOLDERS:
            c.select_folder(folder, readonly=True)
            # In spans: one SEARCH answer over 1 MB is refused by imaplib (~140k UIDs).
            uids = [u for k in range(0, int(c.folder_status(folder, [b"UIDNEXT"])[b"UIDNEXT"]), 50_000)
                    for u in c.search(["UID", f"{k + 1}:{k + 50_000}"])]
            all_uids[folder] = uids
            for part in chunk_by_command_length(uids, 500, 8000):
                answers = c.fetch(part, [HEADER_ITEM, b"INTERNALDATE"])
                got += len(answers)
                if len(sample) < 5000:
                    sample += [v for a in answers.values() for k, v in a.items() if k.startswith(b"BODY[")]
    bare_s = time.perf_counter() - t
    time.sleep(0.2)  # let Dovecot's master reap the imap process of that connection
    cpu = {"bare: Dovecot": tree_cpu_s(d.proc.pid) - dovecot_cpu, "bare: imapclient": own_cpu_s()[0] - bare_cpu}

    # The server alone: the same FETCHes, nothing done with the answers.
    cold(d)
    dovecot_cpu, client_cpu = tree_cpu_s(d.proc.pid), own_cpu_s()[0]
    t = time.perf_counter()
    served = server_fetch(d, all_uids)
    server_s = time.perf_counter() - t
    time.sleep(0.2)
    assert served == got, (served, got)
    cpu["server alone: Dovecot"] = tree_cpu_s(d.proc.pid) - dovecot_cpu
    cpu["server alone: client"] = own_cpu_s()[0] - client_cpu
    # How fast is this machine? The figures came from one where compat32 parsed about
    # 55k header blocks/s and imapclient fetched about 17k messages/s.
    from email import policy
    from email.parser import BytesHeaderParser

    t = time.perf_counter()
    for block in sample:
        BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    compat32_rate = len(sample) / (time.perf_counter() - t)
    del sample
    n = got

    # BENCH_STORE_URL: an empty PostgreSQL database instead of the default SQLite file.
    cfg = bench_config(firm, d, os.environ.get("BENCH_STORE_URL") or f"sqlite:///{root / 'bench.db'}")
    store, directory = prepare_store(cfg)
    cold(d)
    assert d.proc is not None
    prof = None
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    if os.environ.get("BENCH_PHASES"):
        time_phases()

    # What the process holds when the scan starts: the harness, and the firm's config and
    # directory, which the demo scales with N (about one client per 95 messages).
    start_mib = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    dovecot_cpu, (main_cpu, helper_cpu) = tree_cpu_s(d.proc.pid), own_cpu_s()
    t = time.perf_counter()
    with HelperPeak() as helper:
        rep = run_scan(cfg, store, directory)
    scan_s = time.perf_counter() - t
    time.sleep(0.2)
    cpu["scan: Dovecot"] = tree_cpu_s(d.proc.pid) - dovecot_cpu
    main_end, helper_end = own_cpu_s()
    cpu["scan: main process"] = main_end - main_cpu
    cpu["scan: fetch helper"] = helper_end - helper_cpu
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["BENCH_PROFILE"])
    assert rep.ok and rep.stored + sum(f.duplicates for f in rep.folders) == n, rep
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    helper_kib = helper.peak_kib  # the fetch helper process of big folders
    print(
        json.dumps(
            {
                "n": n,
                "load_s": load_s,
                "bare_s": bare_s,
                "server_s": server_s,
                "scan_s": scan_s,
                "fields": len(FETCH_FIELDS),
                "rss_before_mib": rss_before / 1024,
                "scan_start_mib": start_mib,
                "peak_rss_mib": peak_kib / 1024,
                "helper_rss_mib": helper_kib / 1024,
                "compat32_per_s": compat32_rate,
                "phases": PHASES,
                "cpu": cpu,
            }
        )
    )


def cpu_ceiling(n: int, scan_s: float, cpu_s: dict[str, float], cores: int | None = None) -> str:
    """The rate the scan's CPU cost allows: all its processes' CPU seconds (`cpu_s`) spread
    over every core, and how close the scan came. Our VMs' speed swings by up to 2x between
    runs and days; this says whether a slow run did less work per second or the same work
    at a higher cost per message (issue 2's 10k/s needs at most 200 µs a message on 2 cores)."""
    cores = cores or os.cpu_count() or 1
    per_msg = sum(cpu_s.values()) / n
    ceiling = cores / per_msg
    return (f"scan CPU: {per_msg * 1e6:.0f} µs/msg in all, so {cores} cores can do at most {ceiling:,.0f} msg/s "
            f"at that cost; the scan reached {n / scan_s / ceiling:.0%} of it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 100_000])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    print("N is approximate: the demo firm is scaled to about N messages (INBOX and Sent).")
    print(
        f"{'N':>8} {'scan s':>8} {'scan msg/s':>11} {'bare s':>8} {'bare msg/s':>11} {'ratio':>6} {'peak RSS MiB':>13}"
        f" {'scan growth MiB':>16} {'helper peak MiB':>16}"
    )
    for n in a.sizes:
        r = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            sys.exit(1)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        n = res["n"]
        print(
            f"{n:>8} {res['scan_s']:>8.2f} {n / res['scan_s']:>11,.0f} {res['bare_s']:>8.2f} "
            f"{n / res['bare_s']:>11,.0f} {res['scan_s'] / res['bare_s']:>6.2f} {res['peak_rss_mib']:>13.0f}"
            f" {res['peak_rss_mib'] - res['scan_start_mib']:>16.0f}"
            f" {format(res['helper_rss_mib'], '.0f') if res['helper_rss_mib'] else '- (none)':>16}"
        )
        print(f"   server alone: {n / res['server_s']:,.0f} msg/s (the header FETCHes, pipelined, the answers "
              f"dropped: the ceiling of any client here); the scan reaches {res['server_s'] / res['scan_s']:.0%} of it")
        print(f"   this machine: compat32 parses {res['compat32_per_s']:,.0f} header blocks/s "
              "(the issue's reference: ~55k/s)")
        # What sets the pace: CPU per message of each process. Dovecot, the helper and the main
        # process share this machine's cores; their sum over the core count bounds the rate.
        print("   CPU µs/msg: " + ", ".join(f"{k} {v / n * 1e6:.0f}" for k, v in res["cpu"].items())
              + f" ({os.cpu_count()} cores)")
        print("   " + cpu_ceiling(n, res["scan_s"], {k: v for k, v in res["cpu"].items() if k.startswith("scan:")}))
        if res["phases"]:
            rest = res["scan_s"] - sum(res["phases"].values())
            print("   " + ", ".join(f"{k} {v:.2f}s" for k, v in {**res["phases"], "rest": rest}.items()))


if __name__ == "__main__":
    main()
