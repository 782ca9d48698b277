"""A tiny webhook receiver for `leadsla dev` that verifies each notification's signature, and a
mail catcher for its email channel."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from services.notifier.domain import SIGNATURE_HEADER, verify


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when many deliveries arrive at once (each drop
    # costs the sender a TCP retransmit, a second or more).
    request_queue_size = 128
    daemon_threads = True


class WebhookReceiver:
    def __init__(
        self,
        port: int,
        secret: bytes,
        on_message: Callable[[dict, bool], None],
        status_for_valid: Callable[[], int] = lambda: 204,
    ) -> None:
        """Answers 401 to a bad signature, else `status_for_valid()` (tests script failures with it)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                valid = verify(receiver.secret, body, self.headers.get(SIGNATURE_HEADER, ""), int(time.time()))
                try:
                    message = json.loads(body)
                except json.JSONDecodeError:
                    message = {"raw": body.decode(errors="replace")}
                if not isinstance(message, dict):
                    message = {"raw": message}
                message["_headers"] = {k.lower(): v for k, v in self.headers.items()}
                # Recorded before answering: whoever saw the answer can rely on the record.
                on_message(message, valid)
                self.send_response(status_for_valid() if valid else 401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.secret = secret
        self._server = _Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever() that never started
            self._server.shutdown()
        self._server.server_close()


class MailCatcher:
    """A local SMTP server for `leadsla dev` (aiosmtpd): accepts every mail and hands it over."""

    def __init__(self, port: int, on_mail: Callable[[EmailMessage], None]) -> None:
        from aiosmtpd.controller import Controller

        class Handler:
            async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
                on_mail(message_from_bytes(envelope.original_content or envelope.content, policy=policy.default))
                return "250 OK"

        self.port = port
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self._started = False

    def start(self) -> None:
        self._controller.start()
        self._started = True

    def stop(self) -> None:
        if self._started:  # aiosmtpd asserts on a stop without a start (a start-up that failed before it)
            self._controller.stop()
            self._started = False
