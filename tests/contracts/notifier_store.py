"""One contract for the notifier's store, run against the in-memory fake (tests/unit) and the
Postgres store over the projection (tests/integration). A backend gives a `world`: `record`
applies internal events as the live path does, `read` runs a question against the store.
Ids are fresh per test: the Postgres database is shared by the session."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from services.notifier.adapters import NotifierStore
from services.notifier.domain import (
    ChainStopped,
    EscalationsPlanned,
    InternalEvent,
    LeadNoted,
    NewDelivery,
    PlannedEscalation,
    QueuedFor,
    StepFired,
    SubscriptionCreated,
    SubscriptionDeleted,
    SubscriptionQueued,
)
from services.notifier.handlers import internal

NOWHERE = "http://127.0.0.1:9/"  # the discard port: nothing is ever sent there (each test deletes its subscriptions)
# Long ago, so that this test's due steps come before any other test's in the shared database.
T0 = datetime(2001, 1, 1, 9, 0, tzinfo=UTC)


class World(Protocol):
    async def record(self, *payloads: InternalEvent) -> None: ...

    async def read(self, question: Callable[[NotifierStore], Awaitable[Any]]) -> Any: ...


def event_of(payload: InternalEvent, stream: str):
    return internal(payload, time=T0, stream=stream)


def planned(lead_id: str, sla_id: str, *steps: tuple[str, int, datetime]) -> EscalationsPlanned:
    return EscalationsPlanned(lead_id=lead_id, sla_id=sla_id, trigger_event_id=str(uuid.uuid4()),
                              trigger={"type": "sla.breached", "data": {"owner_id": "alice"}}, planned_at=T0,
                              steps=[PlannedEscalation(escalation_id=e, policy_id="breach", step=n, due_at=due)
                                     for e, n, due in steps])


def queued(lead_id: str, sub_id: str, send_at: datetime, releases: bool = False) -> SubscriptionQueued:
    return SubscriptionQueued(lead_id=lead_id, event_id=str(uuid.uuid4()), event_type="lead.assigned",
                              event_time=T0, body="{}", queued_at=T0, releases_held=releases,
                              deliveries=[QueuedFor(subscription_id=sub_id, next_attempt_at=send_at)])


class NotifierStoreContract:
    async def test_a_lead_is_known_by_the_facts_noted_and_received_once_its_lead_received_was(
            self, world: World) -> None:
        lead_id = str(uuid.uuid4())
        assert await world.read(lambda s: s.lead(lead_id)) is None
        await world.record(LeadNoted(lead_id=lead_id, fields=["owner_id", "tier"], owner_id="alice", tier="B"))
        assert not await world.read(lambda s: s.received_seen(lead_id))
        await world.record(LeadNoted(lead_id=lead_id, fields=["name", "company", "tier", "received_at"],
                                     name="Ada", company="Analytical", tier="A", received_at=T0))
        known = await world.read(lambda s: s.lead(lead_id))
        assert (known.name, known.company, known.tier, known.owner_id) == ("Ada", "Analytical", "A", "alice")
        assert await world.read(lambda s: s.received_seen(lead_id))

    async def test_due_steps_come_oldest_first_until_fired_or_their_chain_stops(self, world: World) -> None:
        lead_id, sla_id = str(uuid.uuid4()), str(uuid.uuid4())
        first, second, later = (str(uuid.uuid4()) for _ in range(3))
        await world.record(planned(lead_id, sla_id, (second, 2, T0 + timedelta(minutes=1)), (first, 1, T0),
                                   (later, 3, T0 + timedelta(hours=1))))
        assert await world.read(lambda s: s.has_escalations(sla_id))
        assert not await world.read(lambda s: s.has_escalations(str(uuid.uuid4())))

        async def due(now: datetime) -> list[tuple[str, int]]:
            found = await world.read(lambda s: s.due_escalations(now, 1000))
            return [(e.escalation_id, e.step) for e in found if e.lead_id == lead_id]

        assert await due(T0 + timedelta(minutes=5)) == [(first, 1), (second, 2)]
        await world.record(StepFired(lead_id=lead_id, escalation_id=first, step=1, fired_at=T0))
        assert await due(T0 + timedelta(minutes=5)) == [(second, 2)]
        await world.record(ChainStopped(lead_id=lead_id, sla_id=sla_id, stopped_at=T0 + timedelta(minutes=5)))
        assert await due(T0 + timedelta(days=1)) == []

    async def test_recent_singles_count_a_persons_messages_on_a_channel_but_not_digests(self, world: World) -> None:
        lead_id, esc, person = str(uuid.uuid4()), str(uuid.uuid4()), f"p-{uuid.uuid4().hex[:8]}"
        await world.record(planned(lead_id, str(uuid.uuid4()), (esc, 1, T0)))

        def made(kind: str, channel: str = "slack") -> NewDelivery:
            return NewDelivery(notification_id=str(uuid.uuid4()), channel=f"contract-{channel}", recipient=person,
                               kind=kind,
                               payload={}, next_attempt_at=T0)

        # Their channels exist in no configuration: a sender in another test fails them at once
        # (410, "no longer configured") without any network call.
        await world.record(StepFired(lead_id=lead_id, escalation_id=esc, step=1, fired_at=T0 + timedelta(minutes=1),
                                     deliveries=[made("single"), made("single"), made("digest"),
                                                 made("single", "mail")]))
        assert await world.read(lambda s: s.recent_singles(person, "contract-slack", T0)) == 2
        assert await world.read(lambda s: s.recent_singles(person, "contract-slack", T0 + timedelta(minutes=2))) == 0

    async def test_live_subscriptions_leave_out_deleted_ones(self, world: World) -> None:
        kept, gone = str(uuid.uuid4()), str(uuid.uuid4())
        for sub_id, types in ((kept, ["lead.*"]), (gone, ["sla.breached"])):
            await world.record(SubscriptionCreated(subscription_id=sub_id, url=NOWHERE,
                                                   event_types=types, secret="s" * 20, created_at=T0))
        await world.record(SubscriptionDeleted(subscription_id=gone, deleted_at=T0))
        live = dict(await world.read(lambda s: s.live_subscriptions()))
        assert live.get(kept) == ["lead.*"] and gone not in live
        await world.record(SubscriptionDeleted(subscription_id=kept, deleted_at=T0))

    async def test_held_deliveries_are_released_by_the_leads_received(self, world: World) -> None:
        lead_id, sub_id = str(uuid.uuid4()), str(uuid.uuid4())
        await world.record(SubscriptionCreated(subscription_id=sub_id, url=NOWHERE,
                                               event_types=["lead.*"], secret="s" * 20, created_at=T0))
        assert not await world.read(lambda s: s.holds_for(lead_id, T0))
        await world.record(queued(lead_id, sub_id, T0 + timedelta(minutes=1)))
        assert await world.read(lambda s: s.holds_for(lead_id, T0))
        assert not await world.read(lambda s: s.holds_for(lead_id, T0 + timedelta(minutes=1)))
        await world.record(queued(lead_id, sub_id, T0, releases=True))
        assert not await world.read(lambda s: s.holds_for(lead_id, T0))
        await world.record(SubscriptionDeleted(subscription_id=sub_id, deleted_at=T0))  # its deliveries with it
        assert not await world.read(lambda s: s.holds_for(lead_id, T0 - timedelta(days=1)))
