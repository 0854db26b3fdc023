"""Prometheus metrics and the /healthz + /metrics HTTP endpoint."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..errors import ConfigError

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter("carewatch_messages_ingested_total", "Messages stored by scans", ["mailbox"],
                                registry=r)
        self.skipped = Counter("carewatch_messages_skipped_total", "Messages that could not be read", ["mailbox"],
                               registry=r)
        self.scan_duration = Histogram("carewatch_scan_duration_seconds", "Duration of a mailbox scan", ["mailbox"],
                                       buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900), registry=r)
        self.scan_errors = Counter("carewatch_scan_errors_total", "Failed mailbox scans", ["mailbox"], registry=r)
        self.last_scan_ok = Gauge("carewatch_last_scan_success_timestamp_seconds",
                                  "When each mailbox was last scanned without error", ["mailbox"], registry=r)
        self.open_alerts = Gauge("carewatch_open_alerts", "Alerts not yet resolved, by kind", ["kind"], registry=r)
        self.outbox_backlog = Gauge("carewatch_outbox_backlog", "Emails waiting to be delivered", registry=r)
        self.outbox_failed = Gauge("carewatch_outbox_failed", "Emails that could not be delivered", registry=r)
        self.deliveries = Counter("carewatch_emails_sent_total", "Emails delivered", ["kind"], registry=r)
        self.delivery_errors = Counter("carewatch_delivery_errors_total", "Failed delivery attempts", registry=r)
        self.delivery_alarm = Gauge("carewatch_delivery_alarm", "1 while delivery fails in a way retrying will not "
                                    "fix (SMTP login, TLS, sender refused); emails are kept and retried", registry=r)
        self.last_digest = Gauge("carewatch_last_digest_timestamp_seconds", "When the digest was last queued",
                                 registry=r)
        self.job_errors = Counter("carewatch_job_errors_total", "Jobs that failed", ["job"], registry=r)
        self.replies_not_seen = Gauge(
            "carewatch_replies_not_seen", "1 when contacts wrote in the last 30 days and no message from the firm "
            "to a contact was seen: its replies are not in the folders scanned", registry=r)


class HealthServer:
    """Serves /healthz (JSON, 200 when ready, 503 otherwise) and /metrics."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], tuple[bool, dict[str, Any]]]):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/metrics"):
                    body = generate_latest(outer.metrics.registry)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    try:
                        ok, detail = outer.health()
                    except Exception as exc:  # health must answer, whatever breaks
                        ok, detail = False, {"error": str(exc)}
                    self._send(200 if ok else 503, json.dumps({"ok": ok, **detail}).encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # probes every few seconds would flood the log

        self.metrics = metrics
        self.health = health
        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # taken (a second worker?), or an address this host does not have
            raise ConfigError([f"service.metrics_port: cannot serve /healthz and /metrics on {host}:{port}: "
                               f"{exc.strerror}; choose another port (service.metrics_port or --metrics-port), "
                               "or -1 to turn them off"]) from None
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.httpd.server_address[0], self.port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
