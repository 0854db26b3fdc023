"""Real servers for the tests and benchmarks: a throwaway Dovecot, an aiosmtpd SMTP sink.

Shared by tests/conftest.py and benchmarks/, so both exercise exactly the same set-up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
MAIL_UID = 65534 if os.geteuid() == 0 else os.getuid()
MAIL_GID = 65534 if os.geteuid() == 0 else os.getgid()


def dovecot_available() -> bool:
    return os.path.exists(DOVECOT) and os.access(DOVECOT, os.X_OK)


def free_port() -> int:
    # aiosmtpd's Controller(port=0) does not work (aiosmtpd #276): pick a port first.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


CONF = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = carewatch-test-{port}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = {ssl}
{ssl_files}
disable_plaintext_auth = no
auth_mechanisms = plain login {oauth_mech}
default_login_user = {login_user}
default_internal_user = {internal_user}
mail_location = maildir:~/Maildir
mail_fsync = never
first_valid_uid = 0
first_valid_gid = 0
# Every user name logs in with the one password (and has a home of its own below): tests
# share one server, each with a mailbox user of its own.
passdb {{
  driver = static
  mechanisms = plain login
  args = password={password}
}}
{oauth_passdb}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u allow_all_users=yes
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {listen}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {listen}
    port = {imaps_port}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


@dataclass
class Dovecot:
    """A Dovecot instance on a free loopback port with one user and a Maildir."""

    root: Path
    user: str = "shared@firm.example"
    password: str = "s3cret-pass"
    port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    oauth_token_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: A mailbox user of a Dovecot that others share: it may not stop or restart the server.
    shared: bool = False
    #: The address to listen on ("0.0.0.0": also reachable from a container on this host).
    listen: str = "127.0.0.1"

    @property
    def home(self) -> Path:
        return self.root / "home" / self.user

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if not self.port:
            self.port = free_port()
        tls = self.tls_cert is not None
        oauth_passdb = ""
        if self.oauth_token_url:
            (self.root / "oauth2.conf.ext").write_text(
                f"introspection_mode = post\nintrospection_url = {self.oauth_token_url}\n"
                "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
                "force_introspection = yes\n"
            )
            oauth_passdb = (
                f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {self.root}/oauth2.conf.ext\n}}\n"
            )
        self.conf.write_text(
            CONF.format(
                root=self.root,
                listen=self.listen,
                port=self.port,
                uid=MAIL_UID,
                gid=MAIL_GID,
                imap_port=0 if tls else self.port,
                imaps_port=self.port if tls else 0,
                ssl="required" if tls else "no",
                ssl_files=(f"ssl_cert = <{self.tls_cert}\nssl_key = <{self.tls_key}" if tls else ""),
                login_user="dovenull" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
                internal_user="dovecot" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
                oauth_mech="xoauth2 oauthbearer" if self.oauth_token_url else "",
                oauth_passdb=oauth_passdb,
                password=self.password,
            )
        )
        self._make_maildir()

    def _make_maildir(self) -> None:
        for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        (self.maildir / ".Sent" / "maildirfolder").touch()
        self.chown_mail()

    def new_user(self, user: str) -> Dovecot:
        """Another mailbox user on this running server: an empty Maildir (INBOX and Sent) with
        its own UIDVALIDITY, the same password. Tests share one server this way instead of
        starting one each; the view refuses to stop or restart the server the others use."""
        assert self.proc is not None, "start the server first"
        view = replace(self, user=user, shared=True)
        view._make_maildir()
        return view

    def remove_user(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)

    def chown_mail(self) -> None:
        if os.geteuid() != 0:
            return
        for dirpath, _dirnames, filenames in os.walk(self.home if self.shared else self.root / "home"):
            os.chown(dirpath, MAIL_UID, MAIL_GID)
            for f in filenames:
                os.chown(os.path.join(dirpath, f), MAIL_UID, MAIL_GID)

    def _own_server(self, what: str) -> None:
        if self.shared:
            raise RuntimeError(f"cannot {what} a Dovecot other tests share: mark the test private_dovecot")

    def start(self) -> Dovecot:
        self._own_server("start")
        if not self.conf.exists():
            self.write_config()
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            log = self.root / "dovecot.log"
            raise RuntimeError("Dovecot did not start: " + (log.read_text()[-2000:] if log.exists() else "")) from None
        return self

    def stop(self, kill: bool = False) -> None:
        self._own_server("stop")
        if self.proc is None:
            return
        if kill:
            # A crash takes the whole tree: the imap processes serving open connections too.
            # Freeze the master first so that it forks nothing while we look.
            os.kill(self.proc.pid, signal.SIGSTOP)
            for pid in _descendants(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        # Child processes (imap, imap-login) may linger a moment after the master exits.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                break

    def restart(self) -> None:
        self.stop()
        self.start()

    def doveadm(self, *args: str) -> str:
        r = subprocess.run([DOVEADM, "-c", str(self.conf), *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    # --- mail --------------------------------------------------------------------------------
    def folder_path(self, folder: str) -> Path:
        return self.maildir if folder == "INBOX" else self.maildir / ("." + folder.replace("/", "."))

    def deliver_files(self, messages: list[bytes], folder: str = "INBOX", flags: str = "") -> None:
        """Write messages straight into the Maildir (fast: 50k in seconds), then index."""
        d = self.folder_path(folder)
        if folder != "INBOX" and not d.exists():
            for sub in ("cur", "new", "tmp"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "maildirfolder").touch()
        base = int(time.time())
        host = socket.gethostname()
        for i, raw in enumerate(messages):
            name = f"{base}.M{i}P{os.getpid()}R{os.urandom(4).hex()}.{host}"
            p = d / "cur" / f"{name}:2,{flags}"
            p.write_bytes(raw)
            if os.geteuid() == 0:
                os.chown(p, MAIL_UID, MAIL_GID)
        self.chown_mail()

    def append(self, messages: list[bytes], folder: str = "INBOX") -> None:
        """Deliver through IMAP APPEND (as a mail client would)."""
        import imapclient

        with imapclient.IMAPClient("127.0.0.1", port=self.port, ssl=False) as c:
            c.login(self.user, self.password)
            for raw in messages:
                c.append(folder, raw, msg_time=_date_of(raw))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _date_of(raw: bytes) -> datetime | None:
    """The Date header of a message, for APPEND's INTERNALDATE (as mail clients do)."""
    m = re.search(rb"^Date: (.+?)\r?$", raw, re.MULTILINE | re.IGNORECASE)
    if not m:
        return None
    try:
        return parsedate_to_datetime(m.group(1).decode())
    except (TypeError, ValueError):
        return None


class SmtpSink:
    """A real SMTP server (aiosmtpd) that keeps what it receives; can refuse on demand."""

    def __init__(self, tls_cert: Path | None = None, tls_key: Path | None = None,
                 login: tuple[str, str] | None = None, port: int | None = None,
                 hostname: str = "127.0.0.1") -> None:
        import ssl

        from aiosmtpd.controller import Controller

        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse_code: str | None = None  # e.g. "451 try later" or "550 no such user"
        self.refuse_rcpt: dict[str, str] = {}  # one address's answer, e.g. "550 5.7.1 relaying denied"
        self.lock = threading.Lock()
        self.port = port or free_port()  # a port of its own, or the one a stopped server had
        self.running = False
        sink = self

        self.refuse_sender: str | None = None  # MAIL FROM's answer, e.g. "550 5.7.60 SendAs denied"

        class Handler:
            async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                                  mail_options: list[str]) -> str:
                if sink.refuse_sender:
                    return sink.refuse_sender
                envelope.mail_from = address
                envelope.mail_options.extend(mail_options)
                return "250 OK"

            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                                  rcpt_options: list[str]) -> str:
                if sink.refuse_code:
                    return sink.refuse_code
                if address in sink.refuse_rcpt:
                    return sink.refuse_rcpt[address]
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                with sink.lock:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return "250 Message accepted"

        kwargs: dict = {}
        if tls_cert and tls_key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls_cert), str(tls_key))
            kwargs = {"tls_context": ctx, "require_starttls": True}
        if login is not None:
            from aiosmtpd.smtp import AuthResult

            def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
                ok = (getattr(auth_data, "login", b"") == login[0].encode()
                      and getattr(auth_data, "password", b"") == login[1].encode())
                return AuthResult(success=ok)

            # PLAIN only: aiosmtpd's LOGIN exchange stalls after a failed attempt (a test-server quirk).
            kwargs.update(authenticator=authenticator, auth_require_tls=False, auth_required=True,
                          auth_exclude_mechanism=["LOGIN"])
        self.controller = Controller(Handler(), hostname=hostname, port=self.port, **kwargs)

    def start(self) -> SmtpSink:
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        """Stop listening (once; a stopped server cannot start again: make a new one on its port)."""
        if self.running:
            self.controller.stop()
            self.running = False

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


def self_signed(directory: Path, names: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1/localhost and `names` (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost" + "".join(f",DNS:{n}" for n in names)],
                   check=True, capture_output=True)
    os.chmod(directory, 0o755)
    os.chmod(key, 0o644)
    return cert, key


class TcpProxy:
    """A TCP relay on a free loopback port to `target`, which a test can cut (every open
    connection is closed and new ones are dropped at once, as when a database server
    restarts or a network path fails) and restore."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", rate: int | None = None,
                 fast: int = 0,
                 on_server: Callable[[], Callable[[bytes], Iterable[bytes] | bytes | None]] | None = None) -> None:
        """`rate`: pass what the server sends at that many bytes a second (after its first
        `fast` bytes), as a server that trickles does; None relays at full speed.
        `on_server`: makes, for each connection, a filter that each chunk the server sends goes
        through (ImapAnswers, say): what it returns is passed on; None cuts the connection."""
        self.target = (target_host, target_port)
        self.on_server = on_server
        self.rate, self.fast = rate, fast
        #: Bytes passed at `rate` so far (past the first `fast`): a test waits on it, not on a clock.
        self.trickled = 0
        self.port = free_port()
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, upstream]
            server_filter = self.on_server() if self.on_server else None
            for a, b, rate, f in ((client, upstream, None, None), (upstream, client, self.rate, server_filter)):
                threading.Thread(target=self._pump, args=(a, b, rate, f), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int | None = None,
              on_data: Callable[[bytes], Iterable[bytes] | bytes | None] | None = None) -> None:
        sent = 0
        deadline = time.monotonic() + 300  # a trickle is bounded: tests end long before
        try:
            while (data := src.recv(65536)) and time.monotonic() < deadline:
                if on_data is not None:
                    passed = on_data(data)
                    if passed is None:
                        break  # cut: both ends are shut below
                    if not isinstance(passed, bytes):  # pieces, as they come
                        for piece in passed:
                            dst.sendall(piece)
                        continue
                    data = passed
                if rate is None:
                    dst.sendall(data)
                    continue
                for k in range(0, len(data), 20):
                    dst.sendall(data[k:k + 20])
                    sent += 20
                    if sent > self.fast:
                        self.trickled += 20
                        time.sleep(20 / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.open.clear()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


class ImapAnswers:
    """What a proxy's `on_server` is given: the server's IMAP stream, cut into whole responses
    (a line, with its literals), each passed to `change(response)`: return it as it is, other
    bytes in its place (b"" leaves it out), pieces to send one by one (an iterator that may
    sleep between them, as a server that trickles does), or None to cut the connection there.
    Bytes stay held only until their response is complete."""

    def __init__(self, change: Callable[[bytes], bytes | Iterable[bytes] | None]) -> None:
        self.change = change
        self.buffer = b""
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> Iterable[bytes] | None:
        with self.lock:
            self.buffer += data
            out: list[bytes | Iterable[bytes]] = []
            while (response := self._take()) is not None:
                changed = self.change(response)
                if changed is None:
                    return None
                out.append(changed)
        return itertools.chain.from_iterable([piece] if isinstance(piece, bytes) else piece for piece in out)

    def _take(self) -> bytes | None:
        """The first whole response in the buffer, removed from it; None if it is not all here."""
        at = 0
        while True:
            end = self.buffer.find(b"\r\n", at)
            if end < 0:
                return None
            m = re.search(rb"\{(\d+)\}$", self.buffer[at:end])
            if m is None:
                response, self.buffer = self.buffer[:end + 2], self.buffer[end + 2:]
                return response
            at = end + 2 + int(m.group(1))  # the literal, then the rest of the line
            if at > len(self.buffer):
                return None


def replayed_imap(wire: bytes, tags: list[bytes], folder: str) -> tuple[Any, Any]:
    """An ImapSource connected to nothing, in `folder`: its FETCHes are sent nowhere, take
    their tags from `tags` and read their answers from `wire` (bytes a server sent, or made
    up). Returns the source and the file it reads, to check what was left unread."""
    import io
    from types import SimpleNamespace

    from worker.mailbox.imap import ImapSource

    source = ImapSource("replay", "127.0.0.1", 143, "none", "nobody")
    file = io.BufferedReader(io.BytesIO(wire), 65536)
    source.client = SimpleNamespace(
        _imap=SimpleNamespace(file=file, send=lambda data: None, _new_tag=iter(tags).__next__, tagged_commands={}))
    source._selected = folder
    return source, file
