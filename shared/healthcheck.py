"""Container healthcheck: `python -m shared.healthcheck <service> [path]` exits 0 when the
service's `/readyz` (or the given path) answers 200 on its port in this container, else 1.
The image has no curl; this needs nothing beyond the standard library."""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from services import SERVICE_PORTS


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SERVICE_PORTS:
        print(f"usage: python -m shared.healthcheck {{{','.join(SERVICE_PORTS)}}} [path]", file=sys.stderr)
        return 2
    port = int(os.environ.get("LEADSLA_HTTP_PORT") or SERVICE_PORTS[argv[0]])
    path = argv[1] if len(argv) > 1 else "/readyz"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{argv[0]} {path}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
