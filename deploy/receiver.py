"""The webhook target of the docker-compose stack (service `receiver`): verifies each
notification's signature and logs one JSON line per delivery (type, lead id, whether the
signature held; never the recipients' contact details). GET /healthz answers 200.

Runs from the leadsla image: python /deploy/receiver.py  (port 8009, secret LEADSLA_WEBHOOK_SECRET)."""
from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from services.notifier.domain import SIGNATURE_HEADER, verify

SECRET = os.environ.get("LEADSLA_WEBHOOK_SECRET", "").encode()
PORT = int(os.environ.get("RECEIVER_PORT", "8009"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        valid = verify(SECRET, body, self.headers.get(SIGNATURE_HEADER, ""), int(time.time()))
        try:
            message = json.loads(body)
        except ValueError:
            message = {}
        if not isinstance(message, dict):
            message = {}
        trigger = message.get("trigger") or {}
        print(json.dumps({"event": "receiver.webhook", "path": self.path, "valid_signature": valid,
                          "type": trigger.get("type") or message.get("type"),
                          "lead_id": message.get("lead_id") or message.get("subject"),
                          "idempotency_key": self.headers.get("Idempotency-Key")}), flush=True)
        self.send_response(204 if valid else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    if not SECRET:
        sys.exit("LEADSLA_WEBHOOK_SECRET is not set")
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
