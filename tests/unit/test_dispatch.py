"""Handlers are mapped by payload class, never picked by comparing type strings."""
import inspect
import re
from pathlib import Path

import pytest

from services.notifier.handlers import HANDLERS as NOTIFIER
from services.reporting.domain import PROJECTORS
from services.reporting.projections import BATCHED as REPORTING
from services.router.handlers import ESCALATION_HANDLERS, INTAKE_HANDLERS
from services.sla_clock.handlers import HANDLERS as SLA_CLOCK
from shared.events import (
    PAYLOADS,
    ActivityRecorded,
    EscalationTriggered,
    LeadAssigned,
    LeadDequeued,
    LeadQueued,
    LeadReassigned,
    LeadReceived,
    LeadUpdated,
    SlaBreached,
    SlaCancelled,
    SlaMet,
    SlaWarning,
)

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = {"router": INTAKE_HANDLERS, "router-escalations": ESCALATION_HANDLERS, "sla_clock": SLA_CLOCK,
            "notifier": NOTIFIER, "reporting": REPORTING}


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_each_service_maps_registered_payload_classes_to_handlers_of_one_signature(name: str) -> None:
    handlers = MAPPINGS[name]
    assert handlers and set(handlers) <= set(PAYLOADS.values())
    for handler in handlers.values():
        assert inspect.iscoroutinefunction(handler)
        # The first: the unit of work, or the service's store port on it (bootstrap adapts).
        assert list(inspect.signature(handler).parameters) in (["uow", "received", "deps"],
                                                               ["store", "received", "deps"])


def test_what_each_service_handles() -> None:
    # lead.updated: a PATCH may complete a field a routing rule requires, or raise a queued tier.
    assert set(INTAKE_HANDLERS) == {LeadReceived, ActivityRecorded, LeadUpdated}
    assert set(ESCALATION_HANDLERS) == {EscalationTriggered}
    assert set(SLA_CLOCK) == {LeadReceived, LeadAssigned, ActivityRecorded, LeadQueued, LeadReassigned, LeadUpdated}
    # A lead leaving the queue does not stop its clock: the assignment that follows does.
    assert LeadDequeued not in SLA_CLOCK
    # The notifier copies every type to the CRM subscriptions; reporting keeps every type.
    assert set(NOTIFIER) == set(REPORTING) == set(PAYLOADS.values())
    assert NOTIFIER[SlaBreached] is NOTIFIER[SlaWarning] is not NOTIFIER[SlaMet]
    assert NOTIFIER[SlaMet] is NOTIFIER[SlaCancelled]
    assert {LeadQueued, LeadDequeued, LeadAssigned, LeadReassigned, SlaBreached} <= set(PROJECTORS)


def test_no_code_picks_a_handler_by_comparing_event_type_strings() -> None:
    # Activity types (activity.type == "pause") are domain values, not event types: not matched.
    pattern = re.compile(r"\b(event|e|received|envelope)\.type\s*(==|!=|in\b)|\bevent\.type\.startswith\(")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for folder in ("services", "shared") for path in sorted((ROOT / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
