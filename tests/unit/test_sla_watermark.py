"""The SLA clock judges only what it has seen: watermark arithmetic, judging, touch dating."""
from datetime import UTC, datetime, timedelta

import pytest

from services.sla_clock.domain import (
    Breached,
    InputHold,
    Met,
    Outage,
    PartitionMarks,
    Timer,
    Warned,
    add_marks,
    after_outage,
    after_outages,
    blind_since,
    breach_root_cause,
    consume,
    held_watermark,
    inputs_seen_until,
    intake_outage,
    intake_outages,
    judge,
    settled_watermark,
    touch,
    upstream_settled,
)
from shared.config import touch_time

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
TOLERANCE = timedelta(seconds=60)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def timer() -> Timer:
    # Started at T0, warns at 50% (150 s), due at 300 s.
    return Timer(sla_id="s", lead_id="l", metric="first_response", policy_id="p", policy_version=1,
                 owner_id="alice", tier="A", started_at=T0, due_at=at(300), warnings=((50, at(150)),))


@pytest.mark.parametrize(("now", "seen", "outcomes"), [
    # Nothing confirmed yet, within the wait: the due breach waits.
    (at(310), None, (Warned(50),)),
    (at(310), at(299), (Warned(50),)),
    # Inputs consumed up to the deadline: judge it.
    (at(310), at(300), (Breached(at(300)),)),
    (at(300.5), at(300.2), (Breached(at(300)),)),
    # Unconfirmed past the wait (60 s here): it leaves anyway.
    (at(359.9), None, (Warned(50),)),
    (at(360), None, (Breached(at(300)),)),
    (at(361), at(100), (Breached(at(300)),)),
    # A warning is held back like a breach.
    (at(200), at(149), ()),
    (at(200), at(151), (Warned(50),)),
    # A watermark ahead of the clock (another host's clock) never judges the future.
    (at(100), at(400), ()),
])
def test_a_deadline_is_judged_only_once_its_inputs_are_seen_or_the_wait_is_over(now, seen, outcomes) -> None:
    assert judge(timer(), now, seen, TOLERANCE).outcomes == outcomes


def test_a_touch_arriving_while_the_breach_waits_for_the_watermark_meets_the_sla() -> None:
    waiting = judge(timer(), at(320), at(290), TOLERANCE)
    assert waiting.timer.state == "open"
    assert touch(waiting.timer, at(295)).outcomes == (Met(at(295)),)


@pytest.mark.parametrize(("emitted", "cause"), [
    (at(300), "owner_missed"),
    (at(359.9), "owner_missed"),
    (at(360), "system_delay"),
    (at(3600), "system_delay"),
])
def test_a_breach_leaving_later_than_the_tolerance_is_the_systems_delay(emitted, cause) -> None:
    assert breach_root_cause("owner_missed", at(300), emitted, TOLERANCE) == cause


SKEW = timedelta(minutes=5)


@pytest.mark.parametrize(("occurred", "accepted", "now", "dated"), [
    (at(100), at(101), at(102), at(100)),  # the sender's time, close to acceptance
    (at(-1000), at(100), at(102), at(-200)),  # backdated further than the skew: acceptance - skew
    (at(200), at(100), at(102), at(100)),  # stamped after acceptance: acceptance
    (at(200), at(150), at(120), at(120)),  # intake's clock ahead of ours: no later than now
    (at(100), at(290), at(900), at(100)),  # accepted before the deadline, processed long after
])
def test_a_touch_is_dated_by_intakes_acceptance_with_the_senders_time_within_the_skew(
    occurred, accepted, now, dated
) -> None:
    assert touch_time(occurred, accepted, now, SKEW) == dated


def test_partition_seen_until_the_best_mark_below_the_consumed_offset() -> None:
    p = add_marks(PartitionMarks(), [(5, at(10)), (8, at(20)), (12, at(30))])
    assert consume(p, 4).floor is None
    assert consume(p, 5).floor == at(10)
    assert consume(p, 11).floor == at(20)
    assert consume(consume(p, 11), 12).floor == at(30)


def test_marks_that_say_nothing_new_are_dropped() -> None:
    p = add_marks(PartitionMarks(), [(5, at(10)), (5, at(12)), (6, at(11)), (7, at(13))])
    # (5, 10) and (6, 11) are implied by (5, 12), which is reached no later.
    assert p.pending == ((5, at(12)), (7, at(13)))
    consumed = consume(p, 7)
    assert consumed.floor == at(13) and consumed.pending == ()
    assert add_marks(consumed, [(9, at(13)), (9, at(14))]).pending == ((9, at(14)),)


def test_an_empty_partition_is_seen_as_soon_as_it_is_confirmed_empty() -> None:
    # An empty fetch at offset 0 and nothing consumed: the partition holds nothing unseen.
    assert consume(add_marks(PartitionMarks(), [(0, at(50))]), 0).floor == at(50)


@pytest.mark.parametrize(("floors", "seen"), [
    ([at(10), at(20), at(15)], at(10)),
    ([at(10), None], None),  # one partition not yet confirmed holds everything
    ([], None),
])
def test_inputs_are_seen_until_the_slowest_partition(floors, seen) -> None:
    parts = {i: PartitionMarks(floor=f) for i, f in enumerate(floors)}
    assert inputs_seen_until(parts) == seen


ALLOW = timedelta(seconds=1)


@pytest.mark.parametrize(("checked", "oldest", "settled"), [
    (at(100), None, at(99)),  # nothing unpublished: up to the check, less a commit in flight
    (at(100), at(40), at(39)),  # a row stuck since 40 s holds the bound there
    (at(100), at(150), at(99)),
])
def test_upstream_is_settled_up_to_its_oldest_unpublished_event(checked, oldest, settled) -> None:
    assert upstream_settled(checked, oldest, ALLOW) == settled


@pytest.mark.parametrize(("checks", "broker", "watermark"), [
    ([(at(100), at(99))], None, None),
    # The check at 100 s counts only once the broker is consumed past 100 s.
    ([(at(100), at(99))], at(99.5), None),
    ([(at(100), at(99))], at(100), at(99)),
    ([(at(100), at(99)), (at(101), at(40)), (at(102), at(101))], at(101.5), at(99)),
    ([(at(100), at(99)), (at(101), at(40)), (at(102), at(101))], at(103), at(101)),
])
def test_the_watermark_needs_both_the_producers_and_the_broker(checks, broker, watermark) -> None:
    assert settled_watermark(checks, broker) == watermark


# --- Outages of the clock's inputs: intake's runs of heartbeats (first, last), every process's --
GAP, GRACE = timedelta(seconds=2), timedelta(seconds=30)


def test_no_heartbeat_at_all_is_no_outage() -> None:
    # Intake never ran against this database (a clock tested alone): nothing to wait for.
    assert intake_outage([], at(100), GAP) is None


def test_intake_beating_without_a_gap_is_no_outage() -> None:
    assert intake_outage([(at(0), at(99.8))], at(100), GAP) is None


def test_runs_closer_than_the_gap_are_one_time_of_availability() -> None:
    # Two replicas, or one process whose database answered late once.
    assert intake_outage([(at(0), at(50)), (at(51.5), at(99.9)), (at(10), at(60))], at(100), GAP) is None
    # A replica up through another one's restart.
    assert intake_outage([(at(0), at(100)), (at(0), at(40)), (at(45), at(100))], at(100.2), GAP) is None


def test_a_silent_intake_is_out_since_its_last_beat() -> None:
    assert intake_outage([(at(0), at(90))], at(100), GAP) == Outage(at(90))
    assert intake_outage([(at(0), at(90)), (at(120), at(130))], at(130), GAP) == Outage(at(90), at(120))


def test_every_outage_of_intake_is_named_not_the_latest_only() -> None:
    """Faults back to back (Postgres stopped, then intake killed): the clock named only the latest
    outage, so a breach due in the first and judged after the second began was the owner's."""
    runs = [(at(0), at(50)), (at(56), at(80)), (at(90), at(99.9))]
    first, second = Outage(at(50), at(56)), Outage(at(80), at(90))
    assert intake_outages(runs, at(100), GAP) == [first, second]
    assert intake_outages(runs, at(103), GAP) == [first, second, Outage(at(99.9))]
    hold = after_outages([first, second, Outage(at(99.9))], at(103), GRACE)
    assert hold.until == at(80) and hold.outages == (first, second, Outage(at(99.9)))  # the first: over
    later = after_outages([first, second], at(150), GRACE)
    assert later.until is None  # every grace over: nothing held, both still named
    assert breach_root_cause("owner_missed", at(53), at(150), timedelta(seconds=60), later.outages) == "system_delay"


def test_while_out_nothing_after_the_outage_began_is_judged() -> None:
    hold = after_outage(Outage(at(90)), at(100), GRACE)
    assert hold == InputHold(at(90), (Outage(at(90)),))
    assert held_watermark(at(99), hold) == at(90)
    assert held_watermark(at(80), hold) == at(80)  # the inputs' own watermark is lower: it rules
    assert held_watermark(None, hold) is None


def test_after_an_outage_the_hold_lasts_the_grace_then_lifts() -> None:
    outage = Outage(at(90), at(120))
    assert after_outage(outage, at(149), GRACE).until == at(90)
    lifted = after_outage(outage, at(150.5), GRACE)
    assert lifted == InputHold(None, (outage,))  # still named, for breaches' root cause
    assert held_watermark(at(150), lifted) == at(150)
    assert after_outage(None, at(150), GRACE) == InputHold()


def test_two_holds_hold_at_the_earlier_and_name_both_outages() -> None:
    intake, blind = Outage(at(90), at(120)), Outage(at(100), at(110))
    both = after_outage(intake, at(125), GRACE) & after_outage(blind, at(125), GRACE)
    assert both == InputHold(at(90), (intake, blind))


def test_a_breach_due_in_an_outage_is_the_systems_delay() -> None:
    outage = Outage(at(90), at(120))
    assert breach_root_cause("owner_missed", at(100), at(121), TOLERANCE, (outage,)) == "system_delay"
    assert breach_root_cause("owner_missed", at(120), at(151), TOLERANCE, (outage,)) == "system_delay"
    # Due before it began, or after intake was back, it is the person's, judged as before.
    assert breach_root_cause("owner_missed", at(90), at(91), TOLERANCE, (outage,)) == "owner_missed"
    assert breach_root_cause("owner_missed", at(125), at(151), TOLERANCE, (outage,)) == "owner_missed"
    assert breach_root_cause("owner_missed", at(500), at(501), TOLERANCE, (Outage(at(90)),)) == "system_delay"


def test_a_clock_whose_rounds_stopped_is_blind_since_its_last_one() -> None:
    # Rounds every fraction of a second: no outage of its own between them, nor before the first.
    assert blind_since(at(99), at(100), timedelta(seconds=3)) is None
    assert blind_since(None, at(100), timedelta(seconds=3)) is None
    # None completed for 10 s (the database, then the broker away): a deadline since is the system's.
    blind = blind_since(at(90), at(100), timedelta(seconds=3))
    assert blind == Outage(at(90))
    assert breach_root_cause("owner_missed", at(95), at(100), TOLERANCE, (blind,)) == "system_delay"
    assert breach_root_cause("owner_missed", at(89), at(100), TOLERANCE, (blind,)) == "owner_missed"
