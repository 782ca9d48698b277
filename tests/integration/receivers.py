"""Real local receivers for the notifier's tests: an HTTP server that verifies signatures and
counts deliveries (scripted to fail when asked), and an SMTP server that keeps what it gets."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

from leadsla.devstack import free_port
from leadsla.webhook_receiver import WebhookReceiver


class HttpReceiver:
    """Answers 401 to a bad signature, else the next scripted status (204 once the script runs
    out). `received` keeps (parsed body + `_headers`, signature valid) in arrival order."""

    def __init__(self, secret: str = "", port: int | None = None) -> None:
        self.statuses: list[int] = []
        self.received: list[tuple[dict, bool]] = []
        self._lock = threading.Lock()
        self._server = WebhookReceiver(port or free_port(), secret.encode(), self._record, self._status)
        self.url = f"http://127.0.0.1:{self._server.port}/hook"

    @property
    def secret(self) -> bytes:
        return self._server.secret

    @secret.setter
    def secret(self, value: bytes) -> None:
        self._server.secret = value

    def _status(self) -> int:
        with self._lock:
            return self.statuses.pop(0) if self.statuses else 204

    def _record(self, message: dict, valid: bool) -> None:
        with self._lock:
            self.received.append((message, valid))

    def __enter__(self) -> HttpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


class SmtpCatcher:
    """aiosmtpd on a free port, keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(message_from_bytes(envelope.original_content or envelope.content,
                                                policy=policy.default))
        return "250 OK"

    def __enter__(self) -> SmtpCatcher:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


class SlackLikeReceiver:
    """Behaves like a Slack incoming webhook: 200 `ok` for a payload with `text` or `blocks`,
    400 `invalid_payload` otherwise; keeps each payload it accepted."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = json.loads(body)
                except json.JSONDecodeError:
                    payload = None
                ok = isinstance(payload, dict) and bool(payload.get("text") or payload.get("blocks"))
                if ok:
                    receiver.payloads.append(payload)
                self.send_response(200 if ok else 400)
                self.end_headers()
                self.wfile.write(b"ok" if ok else b"invalid_payload")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/services/T000/B000/XXXX"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SlackLikeReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class StallingReceiver:
    """Records every request on arrival; holds the first one `holds` picks (or, with `hold_all`,
    every one) open until released. A test on a shared broker picks its own lead's requests:
    a notifier also escalates what earlier tests left on the topics."""

    def __init__(self, holds: Callable[[bytes], bool] = lambda body: True) -> None:
        self.arrivals: list[tuple[dict[str, str], bytes]] = []
        self.release = threading.Event()
        self.hold_all = False
        self._held = False
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.arrivals.append(({k.lower(): v for k, v in self.headers.items()}, body))
                with lock:
                    hold = receiver.hold_all or (not receiver._held and holds(body))
                    receiver._held = receiver._held or hold
                if hold:
                    receiver.release.wait(60)
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
