"""structlog set-up: JSON lines for machines, readable lines on a terminal. Events carry ids,
never personal data: handlers log lead ids and reasons, not emails or phones."""
from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO") -> None:
    renderer = structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    logging.getLogger().setLevel(level)  # basicConfig leaves an already-configured root alone
    # httpx logs every request URL at INFO; webhook URLs (Slack-style ones especially) are secrets.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
