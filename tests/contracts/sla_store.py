"""One behaviour contract for the SLA clock's store (services/sla_clock/adapters.ClockStore), run
against the in-memory fake (tests/unit/test_sla_store_fake.py) and Postgres
(tests/integration/test_sla_store_postgres.py). A subclass provides the `store` fixture: an empty
state for the contract's own leads (ids and a tier of its own, times long past, so that rows of
other tests sharing a database do not count)."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.sla_clock.domain import (
    LEAD_NOTED,
    OWNER_CHANGED,
    LeadFacts,
    OwnerChanged,
    TimerRecord,
)
from shared.events import SLA_PAYLOADS, CloudEvent, new_event

T0 = datetime(1990, 1, 1, 9, 0, tzinfo=UTC)


def lead_noted(lead_id: str, **facts: Any) -> CloudEvent:
    values = {"tier": "A", "source": "web", "contactable": True, "received_at": T0, **facts}
    return new_event(LEAD_NOTED, service="sla_clock", lead_id=lead_id, time=T0,
                     data=LeadFacts(lead_id=lead_id, **values))


def owner_changed(lead_id: str, owner_id: str | None, as_of: datetime | None = None) -> CloudEvent:
    return new_event(OWNER_CHANGED, service="sla_clock", lead_id=lead_id, time=T0,
                     data=OwnerChanged(lead_id=lead_id, owner_id=owner_id, as_of=as_of))


def timer_event(kind: str, lead_id: str, metric: str, *, sla_id: str | None = None, tier: str = "A",
                state: str = "open", due_in: float = 300, owner_id: str | None = "alice",
                reason: str | None = None, warned: tuple[int, ...] = ()) -> CloudEvent:
    due = T0 + timedelta(seconds=due_in)
    warning = T0 + timedelta(seconds=due_in / 2)
    record = TimerRecord(
        policy_id="p", policy_version=1, calendar="always", owner_id=owner_id, tier=tier, started_at=T0,
        due_at=due, warnings=[(50, warning)], warned=list(warned), state=state,
        next_fire_at=(due if 50 in warned else warning) if state == "open" else None,
        closed_at=None if state in ("open", "paused") else due, reason=reason, target_seconds=due_in)
    sla_id = sla_id or f"{lead_id}:{metric}"
    return new_event(f"sla.{kind}", service="sla_clock", lead_id=lead_id, time=T0, data=SLA_PAYLOADS[kind](
        lead_id=lead_id, sla_id=sla_id, metric=metric, policy_id="p", policy_version=1, owner_id=owner_id,
        started_at=T0, due_at=due, tier=tier, timer=record.model_dump(mode="json"),
        **({"reason": reason} if reason else {})))


def new_id() -> str:
    return f"contract-{uuid.uuid4()}"


class ClockStoreContract:
    async def write_apart(self, store, events: list[CloudEvent]) -> None:
        """Record as a unit of work of its own would (the Postgres store: in a subtransaction)."""
        await store.record(events)

    async def test_a_noted_lead_reads_back_with_its_facts_and_the_last_note_wins(self, store) -> None:
        lead_id = new_id()
        assert await store.lead(lead_id) is None
        await store.record([lead_noted(lead_id, timezone="Europe/Paris")])
        await store.record([lead_noted(lead_id, tier="B", first_touch_at=T0 + timedelta(minutes=1))])
        lead = await store.lead(lead_id)
        assert (lead.tier, lead.source, lead.timezone, lead.first_touch_at) == ("B", "web", None,
                                                                               T0 + timedelta(minutes=1))
        assert set(await store.leads([lead_id, new_id()])) == {lead_id}

    async def test_a_timer_is_what_its_last_event_says_also_within_one_batch(self, store) -> None:
        lead_id = new_id()
        await store.record([timer_event("started", lead_id, "first_response"),
                            timer_event("warning", lead_id, "first_response", warned=(50,)),
                            timer_event("breached", lead_id, "first_response", state="breached", warned=(50,))])
        [timer] = await store.timers(lead_id)
        assert (timer.state, list(timer.warned), timer.next_fire_at, timer.closed_at) == (
            "breached", [50], None, T0 + timedelta(seconds=300))
        assert [[pct, datetime.fromisoformat(at)] for pct, at in timer.warnings] == [
            [50, T0 + timedelta(seconds=150)]]
        assert (await store.timer(timer.sla_id)).state == "breached"

    async def test_a_lead_s_timers_come_by_metric_and_filter_by_state_and_metric(self, store) -> None:
        lead_id = new_id()
        await store.record([timer_event("started", lead_id, "qualification"),
                            timer_event("started", lead_id, "first_response"),
                            timer_event("paused", lead_id, "next_action", state="paused")])
        assert [t.metric for t in await store.timers(lead_id)] == ["first_response", "next_action", "qualification"]
        assert [t.metric for t in await store.timers(lead_id, ("paused",))] == ["next_action"]
        assert [t.metric for t in await store.timers(lead_id, None, "qualification")] == ["qualification"]

    async def test_a_successor_takes_the_place_of_the_timer_it_replaces_in_one_batch(self, store) -> None:
        lead_id = new_id()
        await store.record([timer_event("started", lead_id, "first_response")])
        await store.record([timer_event("cancelled", lead_id, "first_response", state="cancelled",
                                        reason="policy_changed"),
                            timer_event("started", lead_id, "first_response", sla_id=f"{lead_id}:2")])
        live = await store.timers(lead_id, ("open", "paused"))
        assert [t.sla_id for t in live] == [f"{lead_id}:2"]
        assert sorted(map(str, await store.reasons(lead_id, "first_response"))) == ["None", "policy_changed"]

    async def test_a_new_owner_takes_the_lead_and_its_running_timers_only(self, store) -> None:
        lead_id = new_id()
        await store.record([lead_noted(lead_id, owner_id="alice"),
                            timer_event("started", lead_id, "first_response"),
                            timer_event("met", lead_id, "qualification", state="met"),
                            timer_event("paused", lead_id, "next_action", state="paused"),
                            owner_changed(lead_id, "bob")])
        assert (await store.lead(lead_id)).owner_id == "bob"
        assert {t.metric: t.owner_id for t in await store.timers(lead_id)} == {
            "first_response": "bob", "next_action": "bob", "qualification": "alice"}

    async def test_a_running_timer_past_its_deadline_when_the_owner_changed_stays_the_previous_owners(
            self, store) -> None:
        lead_id = new_id()
        await self.write_apart(store, [lead_noted(lead_id, owner_id="alice"),
                                       timer_event("started", lead_id, "first_response", due_in=60),
                                       timer_event("started", lead_id, "qualification", due_in=3600),
                                       timer_event("paused", lead_id, "next_action", state="paused", due_in=60)])
        # Apart: the Postgres store reads the stored rows (times typed), not the batch's own (text).
        await self.write_apart(store, [owner_changed(lead_id, None, as_of=T0 + timedelta(seconds=90))])
        assert (await store.lead(lead_id)).owner_id is None
        assert {t.metric: t.owner_id for t in await store.timers(lead_id)} == {
            "first_response": "alice", "qualification": None, "next_action": None}
        # In one batch with the timers' own events (their rows as the events carry them).
        other = new_id()
        await store.record([lead_noted(other, owner_id="alice"), timer_event("started", other, "first_response",
                                                                             due_in=60),
                            owner_changed(other, "bob", as_of=T0 + timedelta(seconds=90))])
        assert [t.owner_id for t in await store.timers(other)] == ["alice"]

    async def test_due_timers_are_the_open_ones_by_the_horizon_soonest_first(self, store) -> None:
        soon, later, paused = new_id(), new_id(), new_id()
        tier = f"t-{uuid.uuid4().hex[:6]}"
        await store.record([timer_event("started", later, "first_response", due_in=600, tier=tier),
                            timer_event("started", soon, "first_response", due_in=60, tier=tier),
                            timer_event("paused", paused, "first_response", due_in=10, state="paused", tier=tier)])
        assert await store.next_due() == T0 + timedelta(seconds=30)
        assert [i for i, _ in await store.due(T0 + timedelta(seconds=300), 10)] == [
            f"{soon}:first_response", f"{later}:first_response"]
        assert [i for i, _ in await store.due(T0 + timedelta(seconds=300), 1)] == [f"{soon}:first_response"]
        assert [i for i, _ in await store.due(T0 + timedelta(seconds=29), 10)] == []
        rows = await store.timers_by_id([f"{soon}:first_response"])
        assert [r.lead_id for r in rows.values()] == [soon]
        counts = [c for c in await store.open_counts() if c[1] == tier]
        assert counts == [("first_response", tier, 2)]

    async def test_timers_ahead_are_the_open_ones_by_a_time_in_order_after_a_position(self, store) -> None:
        # Other tests' rows may come first: the contract's own are far in the future, one time apart.
        far = datetime(2990, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 100_000)
        ids = sorted(new_id() for _ in range(3))
        late, tied, paused = new_id(), ids, new_id()
        events = [timer_event("started", i, "first_response", warned=(50,), due_in=(far - T0).total_seconds())
                  for i in tied]
        events += [timer_event("started", late, "first_response", warned=(50,),
                               due_in=(far - T0).total_seconds() + 60),
                   timer_event("paused", paused, "first_response", state="paused",
                               due_in=(far - T0).total_seconds() - 60)]
        await store.record(events)
        start = (far - timedelta(seconds=1), "")
        ahead = [row for row, _ in await store.ahead(start, far + timedelta(seconds=60), 10)]
        assert [t.lead_id for t in ahead] == [*tied, late]
        assert [t.lead_id for t, _ in await store.ahead(start, far, 2)] == tied[:2]
        assert [t.lead_id for t, _ in await store.ahead((far, ahead[1].sla_id), far + timedelta(seconds=60), 10)] == [
            tied[2], late]

    async def test_a_timer_s_version_changes_with_every_write_of_its_row_or_its_lead_s(self, store) -> None:
        lead_id, other = new_id(), new_id()
        await store.record([timer_event("started", lead_id, "first_response", warned=(50,)),
                            timer_event("started", other, "first_response", warned=(50,))])

        async def version() -> str:
            return dict(await store.due(T0 + timedelta(seconds=300), 100_000))[f"{lead_id}:first_response"]

        versions = [await version()]
        assert dict((r.sla_id, v) for r, v in await store.ahead(None, T0 + timedelta(seconds=300), 100_000))[
            f"{lead_id}:first_response"] == versions[0]
        await self.write_apart(store, [lead_noted(other)])  # another lead's: no change
        assert await version() == versions[0]
        for write in ([lead_noted(lead_id)], [lead_noted(lead_id, contactable=False)], [owner_changed(lead_id, "bob")],
                      [timer_event("started", lead_id, "first_response", warned=(50,), due_in=200)]):
            await self.write_apart(store, write)
            versions.append(await version())
        assert len(set(versions)) == len(versions)

    async def test_open_counts_follow_timers_opening_and_closing_and_a_count_at_zero_goes(self, store) -> None:
        one, two = new_id(), new_id()
        tier = f"t-{uuid.uuid4().hex[:6]}"

        async def counts() -> list[tuple[str, str, int]]:
            return [c for c in await store.open_counts() if c[1] == tier]

        await store.record([timer_event("started", one, "first_response", tier=tier),
                            timer_event("started", two, "first_response", tier=tier),
                            timer_event("started", one, "qualification", tier=tier)])
        await store.record([timer_event("breached", one, "first_response", state="breached", tier=tier),
                            timer_event("warning", two, "first_response", warned=(50,), tier=tier)])
        assert await counts() == [("first_response", tier, 1), ("qualification", tier, 1)]
        # Opened and closed within one batch: never counted.
        three = new_id()
        await store.record([timer_event("started", three, "first_response", tier=tier),
                            timer_event("met", three, "first_response", state="met", tier=tier),
                            timer_event("paused", two, "first_response", state="paused", tier=tier)])
        assert await counts() == [("qualification", tier, 1)]
        await store.record([timer_event("resumed", two, "first_response", tier=tier)])
        assert await counts() == [("first_response", tier, 1), ("qualification", tier, 1)]
