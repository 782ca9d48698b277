"""Breaches drafted ahead of their deadlines (handlers.prepare_due, Ready), through the in-memory
store: at the deadline a draft leaves exactly as the breach built there would, and a draft whose
timer, lead or configuration changed since is not used."""
from __future__ import annotations

from datetime import timedelta

import pytest

from services.sla_clock.adapters import InMemoryClockStore
from services.sla_clock.handlers import (
    Ready,
    fire_due,
    on_activity,
    on_lead_assigned,
    on_lead_received,
    on_lead_updated,
    prepare_due,
)
from shared.config import parse_config
from shared.events import CloudEvent, LeadUpdated, new_event
from tests.unit.test_sla_handlers import CONFIG, T0, activity, assigned, handle, received, started

DUE = T0 + timedelta(minutes=5)


async def fired(store: InMemoryClockStore, at, ready: Ready | None = None, config=CONFIG) -> list[CloudEvent]:
    before = len(store.recorded)
    await fire_due(store, config, at, seen=at, ready=ready)
    return [event for _, event in store.recorded[before:]]


async def warned(store: InMemoryClockStore, inputs: tuple[CloudEvent, ...] = ()) -> str:
    """A lead started (by `inputs`, its lead.received and lead.assigned, if given) whose
    first_response warning (at 50%) has fired: the breach is next."""
    if inputs:
        for handler, event in zip((on_lead_received, on_lead_assigned), inputs, strict=True):
            await handle(store, handler, event)
        lead_id = inputs[0].subject
    else:
        lead_id = await started(store)
    await fired(store, T0 + timedelta(minutes=2, seconds=30))
    return lead_id


async def drafted(store: InMemoryClockStore, config=CONFIG) -> Ready:
    ready = Ready(capacity=10)
    await prepare_due(store, config, ready, T0, DUE + timedelta(seconds=1), limit=10)
    return ready


@pytest.mark.parametrize("late", [timedelta(milliseconds=300), timedelta(minutes=2)])  # the second: system_delay
async def test_a_drafted_breach_leaves_exactly_as_one_built_at_the_deadline(late) -> None:
    ahead, fresh = InMemoryClockStore(), InMemoryClockStore()
    inputs = (received("lead-1"), assigned("lead-1"))
    for store in (ahead, fresh):
        await warned(store, inputs)
    ready = await drafted(ahead)
    assert len(ready.drafts) == 1
    built_ahead, built_then = await fired(ahead, DUE + late, ready), await fired(fresh, DUE + late)
    assert [e.type for e in built_ahead] == ["sla.breached"]
    assert [e.to_bytes() for e in built_ahead] == [e.to_bytes() for e in built_then]
    # Spliced from the draft's bytes: the same as serialising the event again.
    assert [e.to_bytes() for e in built_ahead] == [CloudEvent.to_bytes(e) for e in built_ahead]
    assert built_ahead[0].data["root_cause"] == ("system_delay" if late > timedelta(minutes=1) else "owner_missed")
    assert ahead.timer_rows == fresh.timer_rows and not ready.drafts


async def test_a_timer_with_a_warning_still_to_come_is_read_but_not_drafted() -> None:
    store = InMemoryClockStore()
    await started(store)
    ready = Ready(capacity=10)
    assert await prepare_due(store, CONFIG, ready, T0, DUE, limit=10) == 1
    assert not ready.drafts


async def test_a_breach_due_too_soon_to_be_worth_drafting_is_built_when_due() -> None:
    store = InMemoryClockStore()
    await warned(store)
    ready = Ready(capacity=10)
    # Drafting from a moment past the deadline: the timer is left to be built when due.
    assert await prepare_due(store, CONFIG, ready, DUE + timedelta(milliseconds=1), DUE + timedelta(seconds=10),
                             limit=10) == 0
    assert [e.type for e in await fired(store, DUE, ready)] == ["sla.breached"]


async def test_a_touch_after_the_draft_meets_the_timer_and_the_draft_is_forgotten() -> None:
    store = InMemoryClockStore()
    lead_id = await warned(store)
    ready = await drafted(store)
    await handle(store, on_activity, activity(lead_id, DUE - timedelta(seconds=1)))
    assert await fired(store, DUE + timedelta(seconds=1), ready) == []
    assert [e.type for _, e in store.recorded if e.type == "sla.met"] == ["sla.met"]
    ready.forget(DUE + timedelta(seconds=1))
    assert not ready.drafts


async def test_a_lead_fact_changed_after_the_draft_is_in_the_breach() -> None:
    store = InMemoryClockStore()
    lead_id = await warned(store)
    ready = await drafted(store)
    # The contact became unreachable: a breach of an uncontactable lead is missing data, not the owner's.
    await handle(store, on_lead_updated, new_event("lead.updated", service="intake", lead_id=lead_id,
                 time=DUE - timedelta(seconds=5), data=LeadUpdated(
                     lead_id=lead_id, changed={"contact.email": {"old": "a@example.com", "new": None}}, tier="A",
                     previous_tier="A", reason="patched", contactable=False)))
    [breach] = await fired(store, DUE + timedelta(seconds=1), ready)
    assert breach.data["root_cause"] == "missing_data"


async def test_a_draft_of_an_older_configuration_is_not_used() -> None:
    store = InMemoryClockStore()
    await warned(store)
    ready = await drafted(store)
    newer = parse_config("""
owners: [{id: alice, calendar: night}]
calendars:
  night: {timezone: UTC, hours: {tue: ["20:00-23:00"]}}
sla_policies:
  - id: demo
    filter: {tiers: [A]}
    metrics: {first_response: {target: 5m, warn_at: [50]}}
""")
    # The owner's calendar is now closed at the deadline: the breach is a coverage gap.
    [breach] = await fired(store, DUE + timedelta(seconds=1), ready, config=newer)
    assert breach.data["root_cause"] == "off_hours_coverage"
