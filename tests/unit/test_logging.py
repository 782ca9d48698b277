import json
import logging
from datetime import UTC, datetime

import pytest
import structlog

from leadsla.logging import configure
from shared import tracing
from shared.events import LeadQueued, new_event


@pytest.fixture(autouse=True)
def logging_restored():
    """configure() replaces the root handler with one on the stderr of the moment (pytest's capture,
    closed later): put back what was there, so nothing writes to a closed stream at exit."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    root.handlers, root.level = handlers, level
    logging.captureWarnings(False)
    structlog.configure(**config)


def _by_event(err: str) -> dict[str, dict]:
    """The JSON lines on stderr by their event; other lines a test run may add (a library's
    warning in this process) are ignored instead of shifting the ones under test."""
    return {line["event"]: line for line in map(json.loads, err.splitlines())}


def test_request_urls_are_not_logged() -> None:
    """httpx logs each request URL at INFO; webhook URLs can carry secrets (Slack-style tokens)."""
    configure("INFO")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("leadsla").isEnabledFor(logging.INFO)


def test_lines_are_json_with_the_ids_bound_while_an_event_is_handled(capsys) -> None:
    configure("INFO", json=True)
    event = new_event("lead.queued", service="router", lead_id="lead-7", time=datetime.now(UTC),
                      data=LeadQueued(lead_id="lead-7", tier="A", queue="q", reason="r"))
    with tracing.handling(event):
        structlog.get_logger().info("router.queued", reason="no_owner")
        logging.getLogger("aiokafka").warning("broker hiccup")
    structlog.get_logger().info("outside")
    lines = _by_event(capsys.readouterr().err)
    mine, stdlib, outside = lines["router.queued"], lines["broker hiccup"], lines["outside"]
    assert mine["event"] == "router.queued" and mine["level"] == "info" and mine["reason"] == "no_owner"
    assert mine["lead_id"] == "lead-7" and mine["correlation_id"] == event.correlationid
    assert mine["trace_id"] == event.traceparent.split("-")[1] and "timestamp" in mine
    assert stdlib["event"] == "broker hiccup" and stdlib["lead_id"] == "lead-7" and stdlib["logger"] == "aiokafka"
    assert "lead_id" not in outside


def test_emails_and_phone_numbers_never_reach_a_log_line(capsys) -> None:
    configure("INFO", json=True)
    structlog.get_logger().warning(
        "smtp.refused jane.doe@example.com", error="550 <jane.doe+x@mail.example.co.uk> unknown",
        detail={"phone": "+1 (415) 555-0100", "other": ["+442079460958"]},
        lead_id="550e8400-e29b-41d4-a716-446655440000", at="2026-11-25T17:55:58Z", port=8001)
    logging.getLogger("aiosmtplib").warning("to %s", "bob@example.com")
    out = capsys.readouterr().err
    lines = _by_event(out)
    line, stdlib = lines["smtp.refused [redacted]"], lines["to [redacted]"]
    # The numbers themselves, not digits a timestamp may happen to hold
    assert "@" not in out and "555-0100" not in out and "2079460958" not in out
    assert line["event"] == "smtp.refused [redacted]" and line["error"] == "550 <[redacted]> unknown"
    assert line["detail"] == {"phone": "[redacted]", "other": ["[redacted]"]}
    # ids, times and numbers are left alone
    assert line["lead_id"] == "550e8400-e29b-41d4-a716-446655440000"
    assert line["at"] == "2026-11-25T17:55:58Z" and line["port"] == 8001
    assert stdlib["event"] == "to [redacted]"


def test_a_logged_traceback_is_redacted_too(capsys) -> None:
    """The redaction ran before the traceback was formatted: an exception whose message carried an
    email or phone (a driver's "Key (email)=(...) already exists", a sender's error) reached the
    log verbatim in the `exception` field, from structlog and from the standard library alike."""
    configure("INFO", json=True)
    try:
        raise ValueError("Key (email)=(jane.doe@example.com) already exists; phone +1 (415) 555-0100")
    except ValueError:
        structlog.get_logger().exception("notifier.sender_failed", kind="subscription")
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    out = capsys.readouterr().err
    lines = _by_event(out)
    assert "@" not in out and "555-0100" not in out
    for event in ("notifier.sender_failed", "Exception in ASGI application"):
        assert "ValueError: Key (email)=([redacted]) already exists" in lines[event]["exception"]
        assert "Traceback" in lines[event]["exception"]


def test_uvicorn_configured_by_its_own_defaults_still_logs_through_the_redaction(capsys) -> None:
    """uvicorn's default log_config gives its loggers handlers of their own and turns propagation
    off; a process where that happened first (a test server, an embedding app) logged around it."""
    import uvicorn

    uvicorn.Config(lambda scope, receive, send: None)  # applies uvicorn's LOGGING_CONFIG
    configure("INFO", json=True)
    logging.getLogger("uvicorn.error").error("client jane.doe@example.com sent garbage")
    out = capsys.readouterr().err
    assert "jane.doe" not in out and _by_event(out)["client [redacted] sent garbage"]
