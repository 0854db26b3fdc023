"""Real servers for the container check's run of the README's Deploy section.

    deploy_servers.py DIR            Dovecot (implicit TLS) holding a client question that has
                                     waited a week, and an SMTP server (STARTTLS) that saves
                                     what it receives as DIR/smtp/*.eml; both on every address
                                     of this host, so a container reaches them. Writes
                                     DIR/ready (shell variables) once both listen; runs until
                                     killed.
    deploy_servers.py --edit FILE DIR/ready
                                     The Deploy section's `$EDITOR carewatch.toml`: points the
                                     copied example config at those servers, as an operator
                                     would edit it for theirs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import Dovecot, SmtpSink, self_signed  # noqa: E402

#: How a container on this host names the host (podman and Docker Desktop both provide it).
HOST_NAME = "host.containers.internal"


def question(days_ago: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Arden <alice@acme.example>"
    msg["To"] = "clients@example.com"
    msg["Subject"] = "Can you confirm the year-end figures?"
    msg["Date"] = format_datetime(datetime.now(UTC) - timedelta(days=days_ago))
    msg["Message-ID"] = make_msgid(domain="acme.example")
    msg.set_content("Hello, could you confirm the figures before Friday? Thanks, Alice")
    return bytes(msg)


def serve(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(root / "tls", names=(HOST_NAME,))
    dovecot = Dovecot(root / "dovecot", user="clients@example.com", tls_cert=cert, tls_key=key,
                      listen="0.0.0.0").start()
    dovecot.deliver_files([question(days_ago=7)])
    smtp_dir = root / "smtp"
    smtp_dir.mkdir()
    sink = SmtpSink(tls_cert=cert, tls_key=key, hostname="0.0.0.0").start()
    (root / "ready").write_text(
        f"IMAP_PORT={dovecot.port}\nSMTP_PORT={sink.port}\nIMAP_PASSWORD={shlex.quote(dovecot.password)}\n"
        f"SMTP_DIR={smtp_dir}\nCA_FILE={cert}\n")
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    saved = 0
    try:
        while not stop:
            with sink.lock:
                new = sink.messages[saved:]
            for _mail_from, _rcpt, content in new:
                saved += 1
                (smtp_dir / f"{saved}.eml").write_bytes(content)
            time.sleep(0.2)
    finally:
        sink.stop()
        dovecot.stop()


def edit(config: Path, ready: Path) -> None:
    env = dict(line.split("=", 1) for line in ready.read_text().splitlines() if "=" in line)
    text = config.read_text()
    # The mailbox: this host's Dovecot, its certificate given as a mounted secret.
    secrets = config.parent / "secrets"
    secrets.mkdir(exist_ok=True)
    shutil.copy(env["CA_FILE"], secrets / "ca.pem")
    secrets.joinpath("ca.pem").chmod(0o644)
    text = text.replace('host = "imap.example.com"', f'host = "{HOST_NAME}"')
    text = re.sub(r"^port = 993 ", f"port = {env['IMAP_PORT']} ", text, count=1, flags=re.M)
    text = text.replace('# ca_file = "/etc/ssl/private-ca.pem"', 'ca_file = "/run/secrets/ca.pem"', 1)
    text = text.replace('folders = ["INBOX", "Sent Items"]', 'folders = ["INBOX", "Sent"]', 1)
    # Delivery by SMTP, at any hour (the check runs at weekends too).
    text = text.replace('transport = "file"', 'transport = "smtp"', 1)
    text = text.replace("quiet_hours = true", "quiet_hours = false", 1)
    text = text.replace("# [notify.smtp]", "[notify.smtp]", 1)
    text = text.replace('# host = "smtp.example.com"', f'host = "{HOST_NAME}"', 1)
    text = text.replace("# port = 587", f"port = {env['SMTP_PORT']}", 1)
    text = text.replace('# ca_file = "/etc/ssl/private-ca.pem"', 'ca_file = "/run/secrets/ca.pem"', 1)
    # A scan every minute, so that the check sees the alert soon.
    text = text.replace("scan_interval_minutes = 5", "scan_interval_minutes = 1", 1)
    config.write_text(text)


if __name__ == "__main__":
    if sys.argv[1] == "--edit":
        edit(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        serve(Path(sys.argv[1]))
