"""One behaviour contract for the router's store (services/router/adapters.py), run against the
in-memory fake (tests/unit/test_router_store_fake.py) and Postgres
(tests/integration/test_router_store_postgres.py): the events recorded through a store are read
back the same way from both, so handler unit tests on the fake say something about production.

A subclass provides `unit()`: an async context manager giving a store for one unit of work, with
`commit()`; state committed by one unit is what the next one reads.
"""
from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.router.domain import (
    LeadClosed,
    LeadFacts,
    LeadRouted,
    LeadTouched,
    OwnerUpdated,
    owner_day,
)
from shared.config import parse_config
from shared.events import (
    TOPIC_ROUTING,
    CloudEvent,
    LeadAssigned,
    LeadDequeued,
    LeadQueued,
    LeadReassigned,
    new_event,
)
from shared.eventstore import ConcurrencyConflict

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
CONFIG_TEXT = """
calendars:
  tokyo: {timezone: Asia/Tokyo, hours: {mon: ["09:00-18:00"]}}
owners: [{id: ann}, {id: ben, calendar: tokyo}, {id: cat}]
teams: [{id: sdr, members: [ann, ben, cat]}]
routing:
  rules: [{id: rr, team: sdr}]
"""
TIERS_TEXT = """
tiers:
  default: C
  rules:
    - {tier: A, when: {intent: [demo_request]}}
    - {tier: B, when: {intent: [pricing]}}
"""
CONFIG = parse_config(CONFIG_TEXT + TIERS_TEXT)
# ann and cat with a capacity: a decision reads their open leads (`open_counted`).
CAPPED = parse_config(CONFIG_TEXT.replace("{id: ann}", "{id: ann, capacity: 5}")
                      .replace("{id: cat}", "{id: cat, capacity: 5}") + TIERS_TEXT)
# Tiers whose names sort otherwise than their urgency: the rules' order ranks them hot, warm, cold.
RANKED = parse_config(CONFIG_TEXT + """
tiers:
  default: cold
  rules:
    - {tier: hot, when: {intent: [demo_request]}}
    - {tier: warm, when: {intent: [pricing]}}
""")


def event(type_: str, lead_id: str, data: Any, at: datetime = NOW) -> CloudEvent:
    return new_event(type_, service="router", lead_id=lead_id, time=at, data=data)


class RouterStoreContract:
    """Subclasses set `unit` (see the module docstring)."""

    def unit(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    # -- recording helpers: what the handlers record for each decision --

    async def assign(self, owner: str, *, tier: str = "A", domain: str | None = None, at: datetime = NOW,
                     rule: str | None = "rr", cursor: int | None = 0, weights: dict[str, int] | None = None,
                     lead_id: str | None = None) -> str:
        lead_id = lead_id or str(uuid.uuid4())
        facts = LeadFacts(lead_id, tier, "web", country="GB", company_domain=domain, received_at=at)
        async with self.unit() as store:
            await store.record(TOPIC_ROUTING, event("lead.assigned", lead_id, LeadAssigned(
                lead_id=lead_id, owner_id=owner, team_id="sdr", rule_id=rule, method="round_robin",
                reason="rule_match", assignment_no=1, candidates=[], assigned_at=at, tier=tier), at))
            await store.record(None, event(LeadRouted.TYPE, lead_id, LeadRouted(
                lead_id=lead_id, facts=facts.to_json(), company_domain=domain, assignment_no=1, owner_id=owner,
                day=owner_day(CONFIG.owner(owner), CONFIG, at), rule_id=rule, cursor=cursor, weights=weights), at))
            await store.commit()
        return lead_id

    async def enqueue(self, tier: str = "A", *, at: datetime = NOW, assignment_no: int = 1,
                      lead_id: str | None = None, received_at: datetime | None = None) -> str:
        lead_id = lead_id or str(uuid.uuid4())
        facts = LeadFacts(lead_id, tier, "web", country="GB", received_at=received_at or at)
        async with self.unit() as store:
            await store.record(TOPIC_ROUTING, event("lead.queued", lead_id, LeadQueued(
                lead_id=lead_id, tier=tier, queue=f"tier-{tier}", reason="no_eligible_owner", queued_at=at), at))
            await store.record(None, event(LeadRouted.TYPE, lead_id, LeadRouted(
                lead_id=lead_id, facts=facts.to_json(), assignment_no=assignment_no), at))
            await store.commit()
        return lead_id

    async def record(self, *events: tuple[str | None, CloudEvent], stream: str | None = None) -> None:
        async with self.unit() as store:
            for topic, e in events:
                await store.record(topic, e, stream=stream)
            await store.commit()

    async def state(self, **kw):
        async with self.unit() as store:
            return await store.load_state(CONFIG, NOW, **kw)

    # -- the contract --

    async def test_an_assigned_lead_reads_back_with_its_facts_load_day_and_cursor(self) -> None:
        lead_id = await self.assign("ben", domain="acme.example", cursor=1)
        async with self.unit() as store:
            row = await store.assignment(lead_id)
            state = await store.load_state(CONFIG, NOW)
        assert (row.owner_id, row.tier, row.assignment_no, row.closed_at, row.touched_at) == ("ben", "A", 1, None, None)
        assert row.facts == LeadFacts(lead_id, "A", "web", country="GB", company_domain="acme.example",
                                      received_at=NOW)
        assert row.version == 2  # lead.assigned and router.lead_routed
        assert state.open_leads["ben"] == 1 and state.today["ben"] == 1  # ben's own (Tokyo) day
        assert state.cursors["rr"] == 1 and state.last_turns["rr"] == "ben"  # found by id when the team changes

    async def test_counts_and_cursors_can_be_read_for_some_owners_and_rules_only(self) -> None:
        await self.assign("ann", cursor=0)
        await self.assign("cat", cursor=2)
        async with self.unit() as store:
            state = await store.load_state(CAPPED, NOW, owners={"ann"}, rules={"other"})
        assert state.open_leads == {"ann": 1} and set(state.today) == {"ann"} and state.cursors == {}
        assert set(state.owners) == {"ann", "ben", "cat"}  # every configured owner, with runtime changes

    async def test_a_decision_reads_open_leads_only_of_owners_whose_count_can_change_it(self) -> None:
        """Without a capacity, or a least_loaded rule to pick among them, an owner's open leads
        change no decision: a decision's read skips them (an owner in a CRM that sends no
        dispositions holds thousands), the full read (GET /v1/owners) counts them; a capacity
        given at run time makes them count."""
        await self.assign("ann")
        await self.assign("cat")
        assert (await self.state(owners={"ann", "cat"})).open_leads == {}
        assert (await self.state()).open_leads == {"ann": 1, "cat": 1}
        balanced = parse_config(CONFIG_TEXT.replace("{id: rr, team: sdr}", "{id: rr, team: sdr, method: least_loaded}"))
        async with self.unit() as store:
            assert (await store.load_state(balanced, NOW, owners={"ann", "cat"})).open_leads == {"ann": 1, "cat": 1}
        await self.record((None, event(OwnerUpdated.TYPE, "cat", OwnerUpdated(owner_id="cat", changes={"capacity": 3}))),
                          stream="cat")
        assert (await self.state(owners={"ann", "cat"})).open_leads == {"cat": 1}

    async def test_yesterdays_assignments_do_not_count_today(self) -> None:
        await self.assign("ann", at=NOW - timedelta(days=1))
        state = await self.state()
        assert state.open_leads["ann"] == 1 and state.today.get("ann", 0) == 0

    async def test_the_weighted_credits_are_kept_per_rule(self) -> None:
        await self.assign("ann", rule="w", cursor=None, weights={"ann": -1, "ben": 1})
        await self.assign("ben", rule="w", cursor=None, weights={"ann": 1, "ben": -1})
        state = await self.state()
        assert state.weighted["w"] == {"ann": 1, "ben": -1} and state.cursors["w"] == -1 and "w" not in state.last_turns

    async def test_a_closed_lead_stops_counting_and_closes_once(self) -> None:
        lead_id = await self.assign("ann")
        await self.record((None, event(LeadClosed.TYPE, lead_id, LeadClosed(lead_id=lead_id, closed_at=NOW,
                                                                           cause="disposition"))))
        later = NOW + timedelta(hours=1)
        await self.record((None, event(LeadClosed.TYPE, lead_id, LeadClosed(lead_id=lead_id, closed_at=later,
                                                                           cause="opt_out"))))
        async with self.unit() as store:
            assert (await store.assignment(lead_id)).closed_at == NOW
            assert (await store.load_state(CONFIG, NOW)).open_leads.get("ann", 0) == 0
            assert (await store.load_state(CONFIG, NOW)).today["ann"] == 1  # assigned today all the same

    async def test_the_first_touch_is_kept_and_touched_or_closed_leads_are_not_handed_back(self) -> None:
        young, old, touched, closed = (await self.assign("ann", tier="B", at=NOW),
                                       await self.assign("ann", tier="B", at=NOW - timedelta(minutes=5)),
                                       await self.assign("ann"), await self.assign("ann"))
        first, second = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
        for at in (first, second):
            await self.record((None, event(LeadTouched.TYPE, touched, LeadTouched(lead_id=touched, touched_at=at))))
        await self.record((None, event(LeadClosed.TYPE, closed, LeadClosed(lead_id=closed, closed_at=NOW,
                                                                          cause="opt_out"))))
        urgent = await self.assign("ann", tier="A")
        async with self.unit() as store:
            assert (await store.assignment(touched)).touched_at == first
            assert [a.lead_id for a in await store.open_untouched("ann", CONFIG.tiers)] == [urgent, old, young]

    async def test_a_reassigned_lead_moves_its_load_to_the_new_owner(self) -> None:
        lead_id = await self.assign("ann")
        await self.record((TOPIC_ROUTING, event("lead.reassigned", lead_id, LeadReassigned(
            lead_id=lead_id, from_owner_id="ann", to_owner_id="cat", reason="test", assignment_no=2,
            method="manual", assigned_at=NOW + timedelta(minutes=1)))))
        async with self.unit() as store:
            row = await store.assignment(lead_id)
            state = await store.load_state(CONFIG, NOW)
        assert (row.owner_id, row.assignment_no, row.assigned_at) == ("cat", 2, NOW + timedelta(minutes=1))
        assert state.open_leads.get("ann", 0) == 0 and state.open_leads["cat"] == 1

    async def test_the_queue_drains_by_tier_then_age_and_a_dequeued_lead_leaves_it(self) -> None:
        b_old = await self.enqueue("B", at=NOW - timedelta(hours=1))
        a_new = await self.enqueue("A", at=NOW, assignment_no=3)
        b_new = await self.enqueue("B", at=NOW)
        async with self.unit() as store:
            assert await store.queue_nonempty()
            page = await store.queue_page(None, 2, CONFIG.tiers)
            assert [q.lead_id for q in page] == [a_new, b_old]
            assert [q.lead_id for q in await store.queue_page(page[-1].key, 10, CONFIG.tiers)] == [b_new]
            assert await store.queue_depths() == {"A": 1, "B": 2}
            assert [f.lead_id for f in await store.queued_ahead("A", 10, CONFIG.tiers)] == [a_new]
            queued = await store.queued(a_new)
            assert (queued.assignment_no, queued.reason, queued.facts.tier, queued.version) == (
                3, "no_eligible_owner", "A", 2)
        for lead_id in (a_new, b_old, b_new):
            await self.record((TOPIC_ROUTING, event("lead.dequeued", lead_id, LeadDequeued(
                lead_id=lead_id, tier="A", queue="tier-A", reason="owner_available"))))
        async with self.unit() as store:
            assert not await store.queue_nonempty() and await store.queued(a_new) is None

    async def test_leads_queued_at_one_instant_drain_oldest_received_first(self) -> None:
        """A run of new leads that all queue is one transaction, so they share `queued_at`: they
        drained in the order of their random ids, a lead received seconds later often first."""
        first, second, third = (f"{prefix}-{uuid.uuid4()}" for prefix in ("z", "m", "a"))  # ids sort backwards
        for lead_id, received in ((first, NOW - timedelta(seconds=3)), (third, NOW - timedelta(seconds=1)),
                                  (second, NOW - timedelta(seconds=2))):
            await self.enqueue("A", at=NOW, lead_id=lead_id, received_at=received)
        async with self.unit() as store:
            page = await store.queue_page(None, 2, CONFIG.tiers)
            assert [q.lead_id for q in page] == [first, second]
            assert [q.lead_id for q in await store.queue_page(page[-1].key, 2, CONFIG.tiers)] == [third]
            assert [f.lead_id for f in await store.queued_ahead("A", 10, CONFIG.tiers)] == [first, second, third]

    async def test_the_queue_drains_by_the_configurations_tier_rank_not_by_the_tiers_names(self) -> None:
        tiers = RANKED.tiers
        retired = await self.enqueue("lukewarm", at=NOW - timedelta(hours=4))  # a tier no longer configured
        cold = await self.enqueue("cold", at=NOW - timedelta(hours=3))
        hot_new = await self.enqueue("hot", at=NOW)
        warm = await self.enqueue("warm", at=NOW - timedelta(hours=2))
        hot_old = await self.enqueue("hot", at=NOW - timedelta(hours=1))
        async with self.unit() as store:
            page = await store.queue_page(None, 2, tiers)
            assert [q.lead_id for q in page] == [hot_old, hot_new]
            assert [q.lead_id for q in await store.queue_page(page[-1].key, 2, tiers)] == [warm, cold]
            cold_at = NOW - timedelta(hours=3)
            assert [q.lead_id for q in await store.queue_page((2, "cold", cold_at, cold_at.isoformat(), cold), 9,
                                                              tiers)] == [retired]
            assert [f.lead_id for f in await store.queued_ahead("warm", 10, tiers)] == [hot_old, hot_new, warm]
            assert [f.lead_id for f in await store.queued_ahead("hot", 10, tiers)] == [hot_old, hot_new]
        untouched = [await self.assign("ann", tier=t, at=NOW - timedelta(minutes=i))
                     for i, t in enumerate(("cold", "hot", "warm"))]
        async with self.unit() as store:
            assert [a.lead_id for a in await store.open_untouched("ann", tiers)] == [
                untouched[1], untouched[2], untouched[0]]

    async def test_a_new_lead_waits_only_behind_queued_leads_of_its_rank_or_above(self) -> None:
        async def ahead() -> dict[str, bool]:
            async with self.unit() as store:
                found, _ = await store.read_run([("hot-lead", None, "hot"), ("warm-lead", None, "warm"),
                                                 ("cold-lead", None, "cold"), ("odd-lead", None, "lukewarm"),
                                                 ("odder-lead", None, "zesty")],
                                                RANKED, NOW, owners=set(), rules=set())
            return {lead: context.queue_ahead for lead, context in found.items()}

        warm = await self.enqueue("warm")
        assert await ahead() == {"hot-lead": False, "warm-lead": True, "cold-lead": True, "odd-lead": True,
                                 "odder-lead": True}
        await self.record((TOPIC_ROUTING, event("lead.dequeued", warm, LeadDequeued(
            lead_id=warm, tier="warm", queue="tier-warm", reason="owner_available"))))
        await self.enqueue("retired")  # a tier the configuration no longer names: after all it names
        assert await ahead() == {"hot-lead": False, "warm-lead": False, "cold-lead": False, "odd-lead": False,
                                 "odder-lead": True}  # between unnamed tiers, by name

    async def test_a_lead_taken_back_to_the_queue_no_longer_counts_against_its_owner(self) -> None:
        lead_id = await self.assign("ann")
        await self.enqueue("A", lead_id=lead_id, assignment_no=2)
        async with self.unit() as store:
            assert await store.assignment(lead_id) is None
            assert (await store.queued(lead_id)).assignment_no == 2
            assert (await store.load_state(CONFIG, NOW)).open_leads.get("ann", 0) == 0

    async def test_owner_changes_merge_and_count_versions_on_the_owners_stream(self) -> None:
        for changes in ({"status": "away"}, {"capacity": 3}, {"status": "active"}):
            await self.record((None, event(OwnerUpdated.TYPE, "cat", OwnerUpdated(owner_id="cat", changes=changes))),
                              stream="cat")
        async with self.unit() as store:
            assert await store.owner_changes("cat") == ({"status": "active", "capacity": 3}, 3)
            assert await store.owner_changes("ann") == (None, 0)
            owners = (await store.load_state(CONFIG, NOW)).owners
        assert owners["cat"].capacity == 3 and owners["cat"].status == "active" and owners["ann"].capacity is None

    async def test_a_runs_reads_say_known_account_owner_queue_ahead_and_version_beside_the_state(self) -> None:
        await self.assign("ann", domain="old.example", at=NOW - timedelta(minutes=2))
        await self.assign("cat", domain="old.example", at=NOW - timedelta(minutes=1))
        closed = await self.assign("ben", domain="old.example", at=NOW)
        await self.record((None, event(LeadClosed.TYPE, closed, LeadClosed(lead_id=closed, closed_at=NOW,
                                                                          cause="opt_out"))))
        queued = await self.enqueue("B")
        async with self.unit() as store:
            assert await store.account_owners({"old.example", "none.example"}) == {"old.example": "cat"}
            scope, accounts = await store.lock_run(["new-lead", queued], {"router.owner:ann"},
                                                   {"old.example", "none.example"}, undoable=True)
            assert accounts == {"cat"}  # the owners of the domains' newest open leads
            await scope.keep()
            found, state = await store.read_run([("new-lead", "old.example", "A"), (queued, None, "B"),
                                                 ("other-lead", "none.example", "C")], CAPPED, NOW,
                                                owners={"ann", "cat"}, rules={"rr"})
            assert set(found) == {"new-lead", queued, "other-lead"}
            assert state.open_leads == {"ann": 1, "cat": 1} and state.cursors == {"rr": 0}
            assert set(state.owners) == {o.id for o in CONFIG.owners}
            fresh, waiting, other = found["new-lead"], found[queued], found["other-lead"]
            assert (fresh.known, fresh.account_owner, fresh.queue_ahead, fresh.version) == (False, "cat", False, 0)
            assert (waiting.known, waiting.account_owner, waiting.queue_ahead, waiting.version) == (True, None, True, 2)
            assert (other.known, other.account_owner, other.queue_ahead, other.version) == (False, None, True, 0)

    async def test_a_unit_that_read_an_old_version_conflicts_at_commit(self) -> None:
        lead_id = await self.assign("ann")
        async with self.unit() as stale:
            assert await stale.load_version(lead_id) == 2
            await self.record((None, event(LeadTouched.TYPE, lead_id, LeadTouched(lead_id=lead_id, touched_at=NOW))))
            await stale.record(None, event(LeadClosed.TYPE, lead_id, LeadClosed(lead_id=lead_id, closed_at=NOW,
                                                                               cause="opt_out")))
            with pytest.raises(ConcurrencyConflict):
                await stale.commit()
