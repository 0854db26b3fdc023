"""Delivery: SMTP (STARTTLS or implicit TLS, auth, verified certificates) or .eml files."""

from __future__ import annotations

import contextlib
import os
import smtplib
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .. import defaults
from ..config import Config, SmtpConfig
from ..deadline import Watchdog
from ..errors import DeliveryError, tls_failed


class Transport(Protocol):
    name: str

    def send(self, raw: bytes, mail_from: str, recipients: list[str], message_id: str) -> dict[str, str]:
        """Deliver; return the recipients refused (the others got it). Raises DeliveryError."""

    def close(self) -> None: ...


class FileTransport:
    """The embedded default: each email becomes an .eml file (written atomically)."""

    name = "file"

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path_for(self, message_id: str) -> Path:
        stem = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in message_id.strip("<>"))
        return self.dir / f"{stem}.eml"

    def send(self, raw: bytes, mail_from: str, recipients: list[str], message_id: str) -> dict[str, str]:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # who was told what, about whom
            target = self.path_for(message_id)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)  # a crash leaves either no file or the whole file
            html = _html_part(raw)
            if html is not None:  # beside it, the HTML to open in a browser, private as the .eml
                fd = os.open(target.with_suffix(".html"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.fchmod(fd, 0o600)  # one written by an older version was 0644
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(html)
        except OSError as exc:
            raise DeliveryError(f"cannot write {self.dir}: {exc.strerror}") from exc
        return {}

    def close(self) -> None:
        pass


def _html_part(raw: bytes) -> str | None:
    import email
    from email import policy

    msg = email.message_from_bytes(raw, policy=policy.default)
    part = msg.get_body(("html",))
    return part.get_content() if part is not None else None


class SmtpTransport:
    name = "smtp"

    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg
        self.conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        c = self.cfg
        ctx = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        port = c.server_port
        conn: smtplib.SMTP = (smtplib.SMTP_SSL(timeout=c.timeout_seconds, context=ctx) if c.tls == "implicit"
                              else smtplib.SMTP(timeout=c.timeout_seconds))
        # Made without a host so that connecting happens under the watchdog; TLS checks the
        # certificate against the host the constructor would have kept.
        conn._host = c.host  # type: ignore[attr-defined]  # noqa: SLF001
        # The greeting, EHLO, STARTTLS and login: a few round trips, each allowed the timeout.
        watchdog = Watchdog(lambda: getattr(conn, "sock", None), defaults.SMTP_LOGIN_ROUND_TRIPS * c.timeout_seconds,
                            what="its replies")
        try:
            with watchdog:
                conn.connect(c.host, port)
                if c.tls == "starttls":
                    conn.starttls(context=ctx)
                if c.username:
                    conn.login(c.username, c.read_password())
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"SMTP {c.host}:{port}: TLS certificate not trusted ({exc.verify_message}); set "
                                "notify.smtp.ca_file for a private CA", alarm=True) from None
        except ssl.SSLError as exc:
            failed = tls_failed(exc, c.tls == "implicit", "notify.smtp.tls", "587 or 25", 465)
            raise DeliveryError(f"SMTP {c.host}:{port}: {failed}", alarm=True) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP {c.host}:{port}: login refused ({exc.smtp_code}); check notify.smtp.username "
                                "and its password (emails are kept and retried)", alarm=True) from None
        except (OSError, smtplib.SMTPException) as exc:
            _close_quietly(conn)
            why = watchdog.reason if watchdog.fired else f"cannot connect: {exc}"
            raise DeliveryError(f"SMTP {c.host}:{port}: {why}") from None
        return conn

    def probe(self, mail_from: str, recipients: Sequence[str]) -> dict[str, str]:
        """Connect and log in as a delivery would, then ask the server whether it takes mail
        from `mail_from` to each recipient (MAIL FROM, RCPT TO) and reset: nothing is sent.
        Returns the recipients it refused, with what it said. A relay that refuses outside
        addresses, or a sender the login may not use (Microsoft 365: SendAs), shows here and
        not hours later in the outbox."""
        conn = self._connect()
        where = f"SMTP {self.cfg.host}:{self.cfg.server_port}"
        refused: dict[str, str] = {}
        try:
            conn.ehlo_or_helo_if_needed()
            code, said = conn.mail(mail_from)
            if code != 250:
                raise DeliveryError(f"{where}: refuses the sender notify.from_address {mail_from!r}: "
                                    f"{code} {said.decode(errors='replace')}", permanent=True)
            for rcpt in recipients:
                code, said = conn.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = f"{code} {said.decode(errors='replace')}"
            conn.rset()
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"{where}: {exc}") from None
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.quit()
        return refused

    def send(self, raw: bytes, mail_from: str, recipients: list[str], message_id: str) -> dict[str, str]:
        if self.conn is None:
            self.conn = self._connect()
        conn = self.conn
        # The whole conversation has a deadline in proportion to what it sends: a relay that
        # trickles its replies must not hold delivery (and every alert behind it) for ever.
        budget = (self.cfg.timeout_seconds + len(raw) / defaults.SMTP_MIN_BYTES_PER_SECOND
                  + len(recipients) * defaults.SMTP_SECONDS_PER_RECIPIENT)
        watchdog = Watchdog(lambda: conn.sock, budget, what="its replies")
        try:
            with watchdog:
                refused = conn.sendmail(mail_from, recipients, raw)
        except smtplib.SMTPSenderRefused as exc:
            # Every email would be refused the same way: the sender (notify.from_address) or the
            # login's right to send as it, not this email. Retried, and said loudly.
            self.close()
            raise DeliveryError(f"SMTP refuses the sender {mail_from!r}: {exc.smtp_code} {exc.smtp_error!r}; check "
                                "notify.from_address (Microsoft 365: SendAs for the login)", alarm=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            self.close()
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(f"SMTP refused every recipient: {exc.recipients}",
                                permanent=all(500 <= c < 600 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise DeliveryError(f"SMTP said {exc.smtp_code} {exc.smtp_error!r}",
                                permanent=500 <= exc.smtp_code < 600) from None
        except OSError as exc:  # smtplib's own errors included: they are OSErrors
            self.close()
            # After DATA the email may have arrived: retried, it may arrive twice (at least once).
            raise DeliveryError(f"SMTP delivery failed: {watchdog.reason if watchdog.fired else exc}") from None
        # Some recipients may have been refused while others accepted: the email is delivered.
        return {addr: f"{code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
                for addr, (code, msg) in refused.items()}

    def close(self) -> None:
        if self.conn is not None:
            _close_quietly(self.conn)
            self.conn = None


def _close_quietly(conn: smtplib.SMTP) -> None:
    """QUIT if the server still listens, and close the socket whatever it says."""
    with contextlib.suppress(OSError, smtplib.SMTPException):
        conn.quit()
    with contextlib.suppress(OSError):
        conn.close()


def make_transport(config: Config) -> Transport:
    n = config.settings.notify
    if n.transport == "smtp":
        if n.smtp is None:
            raise DeliveryError("notify.transport = \"smtp\" needs a [notify.smtp] section")
        return SmtpTransport(n.smtp)
    return FileTransport(n.dir)
