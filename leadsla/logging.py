"""structlog set-up: JSON lines for machines, readable lines on a terminal. Events carry ids,
never personal data: handlers log lead ids and reasons, not emails or phones.

Every line, structlog's and the standard library's (uvicorn, aiokafka), goes out through the
same processors: context variables merged (a consumer binds lead_id, correlation_id, event_id and
trace_id while it handles an event; the HTTP middleware binds trace_id and the path's lead id),
personal data redacted, one JSON object per line when stderr is not a terminal.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# An email address, or an international phone number (with separators), standing alone.
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w+-])\+\d(?:[\s().-]{0,2}\d){6,14}(?![\w-])")
REDACTED = "[redacted]"
# Values under these keys are ids and times we write ourselves: never personal data.
SAFE_KEYS = frozenset({"event", "level", "timestamp", "lead_id", "correlation_id", "event_id", "event_type",
                       "trace_id", "owner_id", "service", "logger"})


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return PHONE.sub(REDACTED, EMAIL.sub(REDACTED, value))
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_personal_data(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A safety net under the rule "log ids, not contact details": an email address or an
    international phone number that reaches a log line anyway (inside an error message, say) is
    replaced by [redacted]."""
    for key, value in event_dict.items():
        if key not in SAFE_KEYS or key == "event":
            event_dict[key] = _scrub(value)
    return event_dict


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # Tracebacks become text before the redaction, which scrubs them too (an exception's
        # message can carry an email or a phone: a driver's "Key (email)=(...)", a sender's error).
        structlog.processors.format_exc_info,
        redact_personal_data,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # A library that configured its loggers itself (uvicorn with its default log_config: handlers
    # of its own, propagate off) would write around the redaction: everything goes through root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        own = logging.getLogger(name)
        own.handlers, own.propagate = [], True
    logging.captureWarnings(True)  # Python warnings become log lines too, not bare text on stderr
    # httpx logs every request URL at INFO; webhook URLs (Slack-style ones especially) are secrets.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
