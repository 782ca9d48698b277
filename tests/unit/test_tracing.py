"""W3C traceparent through the hops: HTTP header -> event -> Kafka header -> handler -> event."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared import tracing
from shared.events import CONTENT_TYPE, CloudEvent, LeadQueued, new_event

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def queued(cause: CloudEvent | None = None, **kwargs) -> CloudEvent:
    return new_event("lead.queued", service="router", lead_id="l1", time=NOW, cause=cause,
                     data=LeadQueued(lead_id="l1", tier="A", queue="q", reason="r"), **kwargs)


@pytest.mark.parametrize("value", [
    None, "", "garbage", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
    INCOMING + "-extra",  # version 00 is exactly 55 characters
])
def test_invalid_traceparents_are_ignored(value) -> None:
    assert tracing.parse(value) is None


def test_a_valid_traceparent_parses_and_prints_back() -> None:
    context = tracing.parse(INCOMING.encode())
    assert context == tracing.TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert str(context) == INCOMING


def test_an_event_continues_the_trace_of_its_cause_in_a_span_of_its_own() -> None:
    with tracing.use(INCOMING):
        first = queued()
    second = queued(cause=first)
    one, two = tracing.parse(first.traceparent), tracing.parse(second.traceparent)
    assert one.trace_id == two.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len({one.span_id, two.span_id, "00f067aa0ba902b7"}) == 3
    assert one.flags == two.flags == "01"


def test_the_same_event_id_gets_the_same_traceparent() -> None:
    """A retried handler emits the same event id; its traceparent must not change either."""
    cause = queued()
    assert queued(cause=cause, event_id="e1").traceparent == queued(cause=cause, event_id="e1").traceparent


def test_a_new_trace_is_named_by_the_correlation_so_later_loop_events_join_it() -> None:
    root = queued()
    assert tracing.current() is None
    # A timer's breach, fired later by a loop with no cause in hand, knows only the correlation id.
    later = queued(correlation_id=root.correlationid)
    assert tracing.parse(root.traceparent).trace_id == tracing.parse(later.traceparent).trace_id
    assert tracing.parse(root.traceparent).trace_id == tracing.trace_id_for(root.id)
    assert tracing.parse(queued().traceparent).trace_id != tracing.parse(root.traceparent).trace_id


def test_the_relay_copies_the_envelopes_traceparent_into_the_kafka_headers() -> None:
    event = queued()
    headers = dict(tracing.record_headers(event.to_bytes(), CONTENT_TYPE))
    assert headers == {"content-type": b"application/cloudevents+json", "traceparent": event.traceparent.encode()}


def test_a_traceparent_inside_data_is_not_taken_for_the_envelopes() -> None:
    sneaky = INCOMING.replace("4bf9", "ffff")
    event = queued().model_copy(update={"data": {"attributes": {"traceparent": sneaky}}})
    assert tracing.traceparent_in(event.to_bytes()) == event.traceparent != sneaky
    bare = event.model_copy(update={"traceparent": None})
    assert tracing.traceparent_in(bare.to_bytes()) is None
    assert tracing.record_headers(bare.to_bytes(), CONTENT_TYPE) == [("content-type", CONTENT_TYPE)]


def test_the_envelope_attribute_round_trips() -> None:
    event = queued()
    assert json.loads(event.to_bytes())["traceparent"] == event.traceparent
    assert CloudEvent.from_bytes(event.to_bytes()).traceparent == event.traceparent


def test_a_handler_runs_in_its_events_trace_with_ids_bound_for_logs() -> None:
    cause = queued()
    seen = {}
    with tracing.handling(cause, [("content-type", CONTENT_TYPE)]):
        seen.update(structlog.contextvars.get_contextvars())
        effect = queued()  # built without naming the cause: the trace still follows
    assert seen["lead_id"] == "l1" and seen["correlation_id"] == cause.correlationid
    assert seen["trace_id"] == tracing.parse(cause.traceparent).trace_id
    assert tracing.parse(effect.traceparent).trace_id == seen["trace_id"]
    assert structlog.contextvars.get_contextvars() == {} and tracing.current() is None


def test_a_record_without_an_envelope_traceparent_takes_the_kafka_header() -> None:
    bare = queued().model_copy(update={"traceparent": None})
    with tracing.handling(bare, [("traceparent", INCOMING.encode())]):
        effect = queued()
    assert tracing.parse(effect.traceparent).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_http_middleware_makes_the_request_header_the_parent() -> None:
    app = FastAPI()
    app.add_middleware(tracing.TraceMiddleware)

    @app.post("/v1/leads/{lead_id}/activities")
    async def emit(lead_id: str) -> dict:
        return {"traceparent": queued().traceparent, "bound": structlog.contextvars.get_contextvars()}

    with TestClient(app) as client:
        traced = client.post("/v1/leads/l9/activities", headers={"traceparent": INCOMING}).json()
        untraced = client.post("/v1/leads/l9/activities").json()
    assert tracing.parse(traced["traceparent"]).trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traced["bound"] == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "lead_id": "l9"}
    assert tracing.parse(untraced["traceparent"]).trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert untraced["bound"] == {"lead_id": "l9"}


def test_the_relay_reads_other_versions_by_the_full_rules_and_drops_an_all_zero_trace() -> None:
    later_version = INCOMING.replace("00-", "01-", 1) + "-future"
    event = queued().model_copy(update={"traceparent": later_version})
    assert tracing.traceparent_in(event.to_bytes()) == INCOMING  # understood as the version it knows
    zero = queued().model_copy(update={"traceparent": f"00-{'0' * 32}-{'1' * 16}-01"})
    assert tracing.record_headers(zero.to_bytes(), CONTENT_TYPE) == [("content-type", CONTENT_TYPE)]
