"""The router as it runs: its subscription on the real broker and its queue loop, against the
real database. Leads are queued, then leave the queue when capacity frees or an absence ends;
concurrent decisions never give one owner more than their capacity nor drift round robin."""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.router.bootstrap import bootstrap
from services.router.handlers import RouterDeps, route_lead, update_owner
from services.router.tables import assignments, queue
from shared.config_store import apply_config
from shared.consumer import EventConsumer
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    Company,
    Consent,
    Contact,
    Disposition,
    Intent,
    LeadReceived,
    Received,
    new_event,
)
from tests.integration.own_database import OwnDatabase, own_database  # noqa: F401 - a fixture
from tests.support import create_topic, eventually, published_events

CONFIG = """
owners:
  - {{id: ann-{s}, capacity: 1}}
  - {{id: ben-{s}, status: out_of_office, until: "2026-11-17T10:00:00Z"}}
teams: [{{id: sdr-{s}, members: [ann-{s}, ben-{s}]}}]
routing:
  queue_check_seconds: 0.2
  rules: [{{id: rr-{s}, team: sdr-{s}}}]
"""


def received(now, tier: str = "A") -> CloudEvent:
    lead_id = str(uuid.uuid4())
    return new_event("lead.received", service="intake", lead_id=lead_id, time=now, data=LeadReceived(
        lead_id=lead_id, source="web", tier=tier, contact=Contact(email=f"x@{lead_id[:8]}.example"), company=Company(),
        intent=Intent(type="demo_request"), consent=Consent(), contactable=True, received_at=now))


def dispositioned(lead_id: str, now) -> CloudEvent:
    return new_event("activity.recorded", service="intake", lead_id=lead_id, time=now, data=ActivityRecorded(
        lead_id=lead_id, activity_id=str(uuid.uuid4()), type="disposition", occurred_at=now,
        disposition=Disposition(status="disqualified", reason="student")))


@pytest.fixture
def engine(own_database: OwnDatabase) -> AsyncEngine:  # noqa: F811
    """A database of this module's own: its tests empty the router's queue and write stand-in
    queue rows, which would make a later replay of the router's store differ."""
    return own_database.engine


@pytest.fixture
def database_url(own_database: OwnDatabase) -> str:  # noqa: F811
    return own_database.url


@pytest.fixture
async def empty_queue(engine):
    # The queue is shared by the whole test database: start empty, and leave it so.
    async with engine.begin() as conn:
        await conn.execute(delete(queue))
    yield
    async with engine.begin() as conn:
        await conn.execute(delete(queue))


async def test_queued_leads_leave_the_queue_when_capacity_frees_and_when_an_absence_ends(
    make_ctx, clock, engine, producer, kafka_bootstrap, empty_queue
) -> None:
    s = uuid.uuid4().hex[:6]
    ctx = make_ctx("router", CONFIG.format(s=s))
    spec = bootstrap(ctx)
    topic = await create_topic(kafka_bootstrap, partitions=1)
    sub = spec.subscriptions[0]  # leads.intake
    consumer = EventConsumer(replace(sub, group=f"router-{s}", topics=(topic,)), service="router",
                             bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=ctx.relay_wakeup, clock=clock,
                             projection=spec.projection)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(spec.loops[0](stop))]

    async def types(lead_id: str) -> list[str]:
        return [e.type for e in await published_events(engine, "router", lead_id)]

    try:
        leads = [received(clock.now()) for _ in range(3)]
        for event in leads:
            await producer.send_and_wait(topic, event.to_bytes(), key=event.subject.encode())
        first, second, third = (e.subject for e in leads)
        await eventually(lambda: types(third), what="the third lead routed")
        assert await types(first) == ["lead.assigned"]
        assert await types(second) == ["lead.queued"] and await types(third) == ["lead.queued"]

        # Ann's lead is dispositioned: her one slot frees and a queued lead takes it at once.
        # (Both were queued at the same instant of the manual clock, so either may go first.)
        done = dispositioned(first, clock.now())
        await producer.send_and_wait(topic, done.to_bytes(), key=first.encode())

        async def one_dequeued() -> str | None:
            for lead in (second, third):
                if await _ends_with_assignment(types(lead)):
                    return lead
            return None

        went = await eventually(one_dequeued, what="a queued lead dequeued")
        waiting = third if went == second else second
        assert await types(went) == ["lead.queued", "lead.dequeued", "lead.assigned"]
        assert (await published_events(engine, "router", went))[-1].data["owner_id"] == f"ann-{s}"
        assert await types(waiting) == ["lead.queued"]

        # Ben's absence ends at 10:00: the queue loop notices without anyone touching him.
        clock.advance(timedelta(hours=1))
        await eventually(lambda: _ends_with_assignment(types(waiting)), what="the other lead dequeued")
        [*_, assigned] = await published_events(engine, "router", waiting)
        assert assigned.data["owner_id"] == f"ben-{s}"
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _ends_with_assignment(types) -> bool:
    found = await types
    return bool(found) and found[-1] == "lead.assigned"


CONCURRENT = """
owners: [{{id: a-{s}, capacity: 7}}, {{id: b-{s}, capacity: 7}}, {{id: c-{s}, capacity: 7}}, {{id: d-{s}}}]
teams: [{{id: t-{s}, members: [a-{s}, b-{s}, c-{s}]}}, {{id: u-{s}, members: [d-{s}]}}]
routing:
  rules:
    - {{id: other-{s}, match: {{tiers: [Z]}}, team: u-{s}}}
    - {{id: rr-{s}, team: t-{s}}}
"""


async def test_concurrent_decisions_keep_capacity_and_round_robin_exact(make_ctx, clock, engine,
                                                                       empty_queue) -> None:
    """Two routers (here: many concurrent transactions) deciding at once: nobody over capacity,
    round robin as even as if the leads had come one at a time, each lead decided once."""
    s = uuid.uuid4().hex[:6]
    ctx = make_ctx("router", CONCURRENT.format(s=s))
    events = [received(clock.now()) for _ in range(24)] + [received(clock.now(), tier="Z") for _ in range(6)]
    events += events[:5]  # the same leads again, as after a rebalance

    async def route(event: CloudEvent) -> None:
        async with ctx.uow() as uow:
            await route_lead(uow, Received.of(event), RouterDeps(ctx.config.config, clock))
            await uow.commit()

    await asyncio.gather(*(route(e) for e in events))
    async with engine.connect() as conn:
        per_owner = dict((await conn.execute(
            select(assignments.c.owner_id, func.count())
            .where(assignments.c.owner_id.like(f"%-{s}")).group_by(assignments.c.owner_id))).tuples().all())
        queued = await conn.scalar(select(func.count()).select_from(queue))
    assert per_owner == {f"a-{s}": 7, f"b-{s}": 7, f"c-{s}": 7, f"d-{s}": 6}
    assert queued == 3
    for event in events[:30]:
        assert len(await published_events(engine, "router", event.subject)) == 1

    # Capacity freed by a runtime change is used at once, and only up to the new capacity.
    async with ctx.uow() as uow:
        await update_owner(uow, ctx.config.config, clock.now(), f"a-{s}", {"capacity": 9}, "test")
        await uow.commit()
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(queue)) == 1
    counts = Counter()
    for event in events[:24]:
        [*_, last] = await published_events(engine, "router", event.subject)
        if last.type == "lead.assigned":
            counts[last.data["owner_id"]] += 1
    assert counts[f"a-{s}"] == 9


async def test_a_decision_for_one_team_does_not_wait_for_another_teams_open_decision(make_ctx, clock, engine,
                                                                                    empty_queue) -> None:
    s = uuid.uuid4().hex[:6]
    ctx = make_ctx("router", CONCURRENT.format(s=s))
    config = ctx.config.config
    async with ctx.uow() as slow:
        await route_lead(slow, Received.of(received(clock.now())), RouterDeps(config, clock))  # team t: decided, not committed yet
        other = received(clock.now(), tier="Z")

        async def route_other_team() -> None:
            async with ctx.uow() as uow:
                await route_lead(uow, Received.of(other), RouterDeps(config, clock))
                await uow.commit()

        # Under one global lock this would wait for `slow` forever (it commits only afterwards).
        await asyncio.wait_for(route_other_team(), timeout=60)
        await slow.commit()
    [assigned] = await published_events(engine, "router", other.subject)
    assert assigned.data["owner_id"] == f"d-{s}"


TWO_ROUTERS = """
owners: [{{id: a-{s}, capacity: 5}}, {{id: b-{s}, capacity: 5}}, {{id: c-{s}}}, {{id: d-{s}}}]
teams: [{{id: capped-{s}, members: [a-{s}, b-{s}]}}, {{id: open-{s}, members: [c-{s}, d-{s}]}}]
routing:
  rules:
    - {{id: open-{s}, match: {{tiers: [B]}}, team: open-{s}}}
    - {{id: capped-{s}, team: capped-{s}}}
"""


async def test_two_routers_sharing_the_consumer_group_never_double_assign_or_drift(
    make_ctx, clock, engine, producer, kafka_bootstrap, empty_queue
) -> None:
    s = uuid.uuid4().hex[:6]
    topic = await create_topic(kafka_bootstrap, partitions=3)
    handled: list[Counter] = [Counter(), Counter()]
    routers = []
    for i in range(2):
        ctx = make_ctx("router", TWO_ROUTERS.format(s=s))
        sub = bootstrap(ctx).subscriptions[0]  # leads.intake

        def counting(handler, seen: Counter):
            async def handle(uow, received) -> None:
                await handler(uow, received)
                seen[received.envelope.subject] += 1
            return handle

        def counting_run(handler, seen: Counter):
            async def handle(uow, run) -> None:
                await handler(uow, run)
                seen.update(received.envelope.subject for received in run)
            return handle

        counted = {cls: counting(handler, handled[i]) for cls, handler in sub.handlers.items()}
        counted_runs = {cls: counting_run(handler, handled[i]) for cls, handler in sub.batched.items()}
        routers.append(EventConsumer(replace(sub, group=f"router-{s}", topics=(topic,), handlers=counted,
                                             batched=counted_runs),
                                     service="router",
                                     bootstrap=kafka_bootstrap, engine=engine, relay_wakeup=ctx.relay_wakeup,
                                     clock=clock, projection=ctx.projection))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in routers]
    sent: list[CloudEvent] = []

    async def send_wave() -> None:
        for tier in ("A", "B") * 10:
            event = received(clock.now(), tier=tier)
            sent.append(event)
            await producer.send_and_wait(topic, event.to_bytes(), key=event.subject.encode())
        # A replay of leads already sent, as a rebalance or a restarted sender would cause.
        for event in sent[-3:]:
            replay = event.model_copy(update={"id": str(uuid.uuid4())})
            await producer.send_and_wait(topic, replay.to_bytes(), key=event.subject.encode())

    async def both_routers_working() -> bool:
        if not (handled[0] and handled[1]) and len(sent) < 400:
            await send_wave()  # keep leads coming until the group has split the partitions
        return bool(handled[0] and handled[1])

    try:
        await eventually(both_routers_working, timeout=90, what="both routers handling leads")
        await eventually(lambda: _all_routed(engine, sent), timeout=60, what="every lead routed")
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    async with engine.connect() as conn:
        per_owner = dict((await conn.execute(
            select(assignments.c.owner_id, func.count())
            .where(assignments.c.owner_id.like(f"%-{s}")).group_by(assignments.c.owner_id))).tuples().all())
    tier_a = sum(1 for e in sent if e.data["tier"] == "A")
    tier_b = len(sent) - tier_a
    assert per_owner[f"a-{s}"] == per_owner[f"b-{s}"] == 5  # capacity held, no more
    assert abs(per_owner[f"c-{s}"] - per_owner[f"d-{s}"]) <= 1  # round robin did not drift
    assert per_owner[f"c-{s}"] + per_owner[f"d-{s}"] == tier_b
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(queue)) == tier_a - 10


async def _all_routed(engine, sent: list[CloudEvent]) -> bool:
    for event in sent:
        found = await published_events(engine, "router", event.subject)
        if len(found) != 1:  # exactly one decision per lead: assigned or queued
            assert len(found) < 2, [e.type for e in found]
            return False
    return True


SURGE = """
tiers:
  default: C
  rules: [{{tier: A, when: {{intent: [demo_request]}}}}, {{tier: B, when: {{intent: [pricing]}}}}]
owners: [{owners}]
teams: [{{id: surge-{s}, members: [{members}]}}]
routing:
  rules: [{{id: surge-{s}, team: surge-{s}}}]
"""


async def test_a_surge_of_ten_thousand_queued_leads_drains_in_priority_order_within_capacity(
    make_ctx, clock, engine, empty_queue
) -> None:
    from services.router.domain import LeadFacts
    from services.router.entrypoints import drain_all

    s = uuid.uuid4().hex[:6]
    names = [f"o{i}-{s}" for i in range(5)]
    config = SURGE.format(s=s, members=", ".join(names),
                          owners=", ".join(f"{{id: {n}, status: away, capacity: 40}}" for n in names))
    ctx = make_ctx("router", config)
    # The surge arrived while everybody was away: 10,000 leads wait, in mixed tiers and ages.
    start = clock.now() - timedelta(hours=1)
    rows = []
    for i in range(10_000):
        tier = "ABC"[(i * 7) % 3]
        lead_id = f"surge-{s}-{i:05d}"
        rows.append({"lead_id": lead_id, "tier": tier, "reason": "no_eligible_owner",
                     "queued_at": start + timedelta(milliseconds=i), "assignment_no": 1,
                     "facts": LeadFacts(lead_id=lead_id, tier=tier, source="web").to_json()})
    async with engine.begin() as conn:
        await conn.execute(queue.insert(), rows)
    tiers = ctx.config.config.tiers  # A, B, C: the rules' order, the default last
    drain_order = [r["lead_id"] for r in sorted(rows, key=lambda r: (tiers.rank(r["tier"]), r["queued_at"]))]

    async def assigned() -> dict[str, str]:
        async with engine.connect() as conn:
            return dict((await conn.execute(select(assignments.c.lead_id, assignments.c.owner_id)
                                            .where(assignments.c.lead_id.like(f"surge-{s}-%")))).tuples().all())

    # Everybody comes back: 5 x 40 leads go out, the first 200 in drain order, 40 each.
    for name in names:
        async with ctx.uow() as uow:
            await update_owner(uow, ctx.config.config, clock.now(), name, {"status": "active"}, "test")
            await uow.commit()
    await drain_all(ctx)
    first = await assigned()
    assert set(first) == set(drain_order[:200])
    assert Counter(first.values()) == {name: 40 for name in names}

    # Capacity frees (50 dispositions): the next 50 in drain order, and still nobody above 40.
    async with engine.begin() as conn:
        await conn.execute(assignments.update().where(assignments.c.lead_id.in_(drain_order[:50]))
                           .values(closed_at=clock.now()))
    await drain_all(ctx)
    second = await assigned()
    assert set(second) - set(first) == set(drain_order[200:250])
    async with engine.connect() as conn:
        open_now = dict((await conn.execute(
            select(assignments.c.owner_id, func.count())
            .where(assignments.c.owner_id.in_(names), assignments.c.closed_at.is_(None))
            .group_by(assignments.c.owner_id))).tuples().all())
        waiting = await conn.scalar(select(func.count()).select_from(queue))
    assert all(n <= 40 for n in open_now.values()) and sum(open_now.values()) == 200
    assert waiting == 10_000 - 250


async def test_owners_added_by_a_new_configuration_take_the_queue_at_once(make_ctx, clock, engine,
                                                                          empty_queue) -> None:
    """The queue is checked every `queue_check_seconds` (an hour here), and at once when a new
    configuration is loaded: owners added to drain a queue take it without waiting the hour."""
    s = uuid.uuid4().hex[:6]
    nobody = f"""
owners: [{{id: ben-{s}, status: out_of_office}}]
teams: [{{id: sdr-{s}, members: [ben-{s}]}}]
routing: {{queue_check_seconds: 3600, rules: [{{id: rr-{s}, team: sdr-{s}}}]}}
"""
    ctx = make_ctx("router", nobody, version=0)  # any version applied below is newer
    spec = bootstrap(ctx)
    lead = received(clock.now())
    async with ctx.uow() as uow:
        await route_lead(uow, Received.of(lead), RouterDeps(ctx.config.config, clock))
        await uow.commit()
    assert [e.type for e in await published_events(engine, "router", lead.subject)] == ["lead.queued"]

    stop = asyncio.Event()
    loop = asyncio.create_task(spec.loops[0](stop))
    try:
        async with engine.begin() as conn:
            await apply_config(conn, nobody.replace(f"[{{id: ben-{s}, status: out_of_office}}]",
                                                    f"[{{id: ben-{s}, status: out_of_office}}, {{id: ann-{s}}}]")
                               .replace(f"members: [ben-{s}]", f"members: [ben-{s}, ann-{s}]"))
        assert await ctx.config.refresh()  # what the config watch does within config_poll_seconds

        async def assigned() -> bool:
            return await _ends_with_assignment(published_types(engine, lead.subject))

        await eventually(assigned, timeout=10, what="the queued lead assigned to the new owner")
    finally:
        stop.set()
        await loop


async def published_types(engine, lead_id: str) -> list[str]:
    return [e.type for e in await published_events(engine, "router", lead_id)]
