"""A tiny webhook receiver for `leadsla dev`: verifies each notification's signature and prints it."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from leadsla.services.notifier.domain import SIGNATURE_HEADER, verify


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
                self.send_response(status_for_valid() if valid else 401)
                self.end_headers()
                try:
                    message = json.loads(body)
                except json.JSONDecodeError:
                    message = {"raw": body.decode(errors="replace")}
                message["_headers"] = {k.lower(): v for k, v in self.headers.items()}
                on_message(message, valid)

            def log_message(self, *args: object) -> None:
                pass

        self.secret = secret
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever() that never started
            self._server.shutdown()
        self._server.server_close()
