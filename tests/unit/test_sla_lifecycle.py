"""Pure rules of a lead's life on the SLA clock: which touches count, pauses, cancellation, the
next_action cadence, reassignment resets, root causes of unowned leads."""
from datetime import UTC, datetime, timedelta

import pytest

from services.sla_clock.domain import (
    Breached,
    Cancelled,
    Met,
    Paused,
    Resumed,
    Settled,
    Started,
    cancel,
    follow_up,
    pause,
    restart,
    resume,
    root_cause,
    settle,
    start_timer,
    tick,
    touch,
    touch_counts,
)
from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig, parse_config

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
ALWAYS = BusinessCalendar(CalendarConfig())
CONFIG = parse_config("""
owners: [{id: alice}]
sla_policies:
  - id: p
    touch_actors: owner
    metrics:
      first_response: {target: 5m, warn_at: [50]}
      next_action: {target: 1h, touches: 3, within: 2h, warn_at: []}
    qualifying_touches:
      - email
      - {type: call, outcomes: [connected]}
      - {type: call, outcomes: [no_answer, voicemail], metrics: [next_action]}
""")
POLICY = CONFIG.sla_policies[0]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def timer(metric: str = "first_response", start: datetime = T0, step: int = 1):
    return start_timer("s", "l", metric, POLICY, 1, "alice", "A", start, ALWAYS, step)


@pytest.mark.parametrize(("metric", "type_", "outcome", "actor", "counts"), [
    ("first_response", "email", None, "alice", True),
    ("first_response", "call", "connected", "alice", True),
    ("first_response", "call", "no_answer", "alice", False),  # an attempt, not a response
    ("next_action", "call", "no_answer", "alice", True),
    ("next_action", "call", "voicemail", "alice", True),
    ("next_action", "call", "busy", "alice", False),
    ("first_response", "sms", None, "alice", False),  # not in this policy's list
    ("first_response", "email", None, "bob", False),  # owner only
])
def test_what_counts_as_a_touch_is_per_policy_type_outcome_and_actor(metric, type_, outcome, actor, counts) -> None:
    assert touch_counts(POLICY, metric, type_, outcome, actor, "alice") is counts


@pytest.mark.parametrize("outcome", ["opened", "clicked"])
def test_an_email_opened_or_clicked_is_the_buyer_s_engagement_and_no_touch_unless_a_rule_lists_it(outcome) -> None:
    """Open and click tracking (HubSpot, Outreach) post an email with outcome opened/clicked: the
    buyer's doing, not a response. The policy's bare `email` met the first response with it."""
    assert not touch_counts(POLICY, "first_response", "email", outcome, "alice", "alice")
    assert not touch_counts(POLICY, "next_action", "email", outcome, "alice", "alice")
    assert touch_counts(POLICY, "first_response", "email", "sent", "alice", "alice")
    listed = parse_config(f"""
owners: [{{id: alice}}]
sla_policies:
  - id: p
    metrics: {{first_response: {{target: 5m}}}}
    qualifying_touches: [{{type: email, outcomes: [sent, {outcome}]}}]
""").sla_policies[0]
    assert touch_counts(listed, "first_response", "email", outcome, "alice", "alice")


def test_an_unowned_lead_counts_anyones_touch_even_under_owner_only() -> None:
    assert touch_counts(POLICY, "first_response", "email", None, "bob", None)


def test_a_pause_stops_the_deadline_and_a_resume_moves_it_by_the_paused_time() -> None:
    paused = pause(timer(), at(1))
    assert paused.outcomes == (Paused(at(1)),) and paused.timer.next_fire_at is None
    resumed = resume(paused.timer, at(31), ALWAYS)
    assert resumed.outcomes == (Resumed(at(31)),)
    assert resumed.timer.due_at == at(35) and resumed.timer.warnings == ((50, at(32.5)),)
    # A second pause adds up.
    again = resume(pause(resumed.timer, at(33)).timer, at(43), ALWAYS).timer
    assert again.due_at == at(45) and again.paused_seconds == 40 * 60


def test_resume_without_pause_and_pause_of_a_closed_timer_change_nothing() -> None:
    assert resume(timer(), at(1), ALWAYS).outcomes == ()
    met = touch(timer(), at(1)).timer
    assert pause(met, at(2)).outcomes == ()


def test_a_touch_while_paused_meets_the_sla() -> None:
    assert touch(pause(timer(), at(1)).timer, at(60)).outcomes == (Met(at(60)),)


@pytest.mark.parametrize("reason", ["opted_out", "disqualified", "merged"])
def test_cancel_ends_a_running_or_paused_timer_once(reason) -> None:
    for t in (timer(), pause(timer(), at(1)).timer):
        step = cancel(t, reason, at(2))
        assert step.outcomes == (Cancelled(reason),) and step.timer.state == "cancelled"
        assert cancel(step.timer, reason, at(3)).outcomes == ()


def test_a_pause_or_cancel_after_an_unjudged_deadline_comes_too_late_the_breach_was_first() -> None:
    # The timer waits for the watermark past its deadline (5 min); the opt-out was made at 6 min.
    assert cancel(timer(), "opted_out", at(6)).outcomes == (Breached(at(5)),)
    assert pause(timer(), at(6)).outcomes == (Breached(at(5)),)
    # A paused timer's deadline is not running: cancelling it later is fine.
    assert cancel(pause(timer(), at(1)).timer, "opted_out", at(60)).outcomes == (Cancelled("opted_out"),)


def test_the_cadence_moves_to_the_next_follow_up_after_each_touch() -> None:
    first = follow_up(timer("next_action", at(2)), POLICY, at(30), at(2), ALWAYS, ends_cadence=False)
    assert first.outcomes == (Met(at(30)), Started(at(30)))
    assert first.timer.step == 2 and first.timer.due_at == at(90) and first.timer.state == "open"


def test_the_cadence_is_exhausted_after_its_touches_or_its_window() -> None:
    last = follow_up(timer("next_action", at(2), step=3), POLICY, at(30), at(2), ALWAYS, ends_cadence=False)
    assert last.outcomes == (Met(at(30)), Cancelled("cadence_exhausted")) and last.timer.state == "cancelled"
    late = follow_up(timer("next_action", at(100), step=1), POLICY, at(125), at(2), ALWAYS, ends_cadence=False)
    assert late.outcomes[-1] == Cancelled("cadence_exhausted")  # two hours after the first response


def test_a_follow_up_that_would_fall_due_after_the_window_closes_is_not_started() -> None:
    # The window (2 h from the first response at 2 min) closes at 122 min; a follow-up is due 1 h
    # after the touch. Started at 70 min it would be due at 130: nobody promised it, and with no
    # touch it would breach. The cadence ends with the touch that met the last one in the window.
    ended = follow_up(timer("next_action", at(20)), POLICY, at(70), at(2), ALWAYS, ends_cadence=False)
    assert ended.outcomes == (Met(at(70)), Cancelled("cadence_exhausted")) and ended.timer.state == "cancelled"
    due_at_the_close = follow_up(timer("next_action", at(20)), POLICY, at(62), at(2), ALWAYS, ends_cadence=False)
    assert due_at_the_close.outcomes == (Met(at(62)), Started(at(62))) and due_at_the_close.timer.due_at == at(122)
    # After a missed follow-up too: the one a late touch would start is past the window.
    missed = follow_up(timer("next_action", at(2)), POLICY, at(70), at(2), ALWAYS, ends_cadence=False)
    assert follow_up(missed.timer, POLICY, at(75), at(2), ALWAYS, ends_cadence=False).outcomes == (
        Cancelled("cadence_exhausted"),)


def _with_cadence(**changes: object):
    cadence = POLICY.metrics["next_action"].model_copy(update=changes)
    return POLICY.model_copy(update={"metrics": {**POLICY.metrics, "next_action": cadence}})


def _missed(policy, step: int = 1):
    """Follow-up `step` of the cadence begun by the first response at 2 min, started then, missed."""
    started = start_timer("s", "l", "next_action", policy, 1, "alice", "A", at(2), ALWAYS, step, cadence_start=at(2))
    missed = tick(started, started.due_at)
    assert missed.outcomes == (Breached(at(62)),)
    return missed.timer


def test_a_missed_follow_up_ends_its_cadence_when_no_touch_can_start_another_inside_the_window() -> None:
    """Nobody touches the lead after the miss: when the window leaves no room for another
    follow-up (a touch later would start one due after it closes), the cadence is over and the
    lead goes to nurture, as a touch then would have decided. The clock looks again then."""
    missed = _missed(_with_cadence(within=3 * 3600.0))  # 3 h from 2 min: a touch by 122 min starts one
    assert missed.next_fire_at == at(122)
    assert tick(missed, at(121)).outcomes == ()
    ended = tick(missed, at(122))
    assert ended.outcomes == (Cancelled("cadence_exhausted"),) and ended.timer.next_fire_at is None
    # Agrees with what a touch decides on either side of that instant.
    assert follow_up(missed, _with_cadence(within=3 * 3600.0), at(122), at(2), ALWAYS,
                     ends_cadence=False).outcomes == (Started(at(122)),)
    assert follow_up(missed, _with_cadence(within=3 * 3600.0), at(123), at(2), ALWAYS,
                     ends_cadence=False).outcomes == (Cancelled("cadence_exhausted"),)


def test_a_missed_last_follow_up_or_one_whose_window_is_used_up_ends_the_cadence_at_once() -> None:
    assert _missed(POLICY, step=3).next_fire_at == at(62)  # the last of its touches: nothing can follow
    assert tick(_missed(POLICY, step=3), at(62)).outcomes == (Cancelled("cadence_exhausted"),)
    # Window 2 h: by the miss at 62 min, another follow-up would fall due after 122 min.
    assert tick(_missed(_with_cadence(within=3600.0 + 60)), at(62)).outcomes == (Cancelled("cadence_exhausted"),)


def test_a_missed_follow_up_without_a_window_waits_for_the_next_touch() -> None:
    missed = _missed(_with_cadence(within=None))
    assert missed.next_fire_at is None and tick(missed, at(10_000)).outcomes == ()


def test_a_booked_meeting_or_the_lead_leaving_after_a_miss_settles_the_cadence_quietly() -> None:
    """The miss stands, but nothing will send the lead to nurture later: a buyer with a meeting
    booked is not a nurture lead."""
    missed = _missed(POLICY, step=3)
    booked = follow_up(missed, POLICY, at(70), at(2), ALWAYS, ends_cadence=True)
    assert booked.outcomes == (Settled(),) and booked.timer.state == "breached"
    assert booked.timer.next_fire_at is None and tick(booked.timer, at(10_000)).outcomes == ()
    assert settle(missed) == booked
    assert settle(booked.timer).outcomes == () and settle(timer("next_action")).outcomes == ()


def test_a_booked_meeting_ends_the_cadence_met() -> None:
    step = follow_up(timer("next_action", at(2)), POLICY, at(30), at(2), ALWAYS, ends_cadence=True)
    assert step.outcomes == (Met(at(30)),) and step.timer.state == "met" and step.timer.next_fire_at is None


def test_a_touch_after_a_missed_follow_up_starts_the_next_one() -> None:
    missed = follow_up(timer("next_action", at(2)), POLICY, at(70), at(2), ALWAYS, ends_cadence=False)
    assert missed.timer.state == "breached"
    wider = POLICY.model_copy(update={"metrics": {**POLICY.metrics, "next_action": POLICY.metrics[
        "next_action"].model_copy(update={"within": 3 * 3600.0})}})  # the next one due within it
    step = follow_up(missed.timer, wider, at(75), at(2), ALWAYS, ends_cadence=False)
    assert step.outcomes == (Started(at(75)),) and step.timer.step == 2 and step.timer.due_at == at(135)


def test_a_follow_up_made_while_the_lead_is_paused_starts_the_next_one_paused() -> None:
    """The lead is paused (the buyer asked for quiet): a touch meets the due follow-up, but the
    next one waits for the resume instead of falling due, breaching and escalating meanwhile."""
    paused = pause(timer("next_action", at(2)), at(10)).timer
    step = follow_up(paused, POLICY, at(30), at(2), ALWAYS, ends_cadence=False)
    assert step.outcomes == (Met(at(30)), Started(at(30)), Paused(at(30)))
    assert (step.timer.step, step.timer.state, step.timer.next_fire_at) == (2, "paused", None)
    assert resume(step.timer, at(100), ALWAYS).timer.due_at == at(160)  # a whole target from the resume


def test_reset_on_reassignment_gives_the_whole_target_from_the_reassignment() -> None:
    step = restart(timer(), POLICY, at(4), ALWAYS)
    assert step.outcomes == (Started(at(4)),) and step.timer.due_at == at(9) and step.timer.warned == ()


def test_a_reset_after_an_unjudged_deadline_comes_too_late_the_breach_was_first() -> None:
    """Like a pause or a cancel: a reassignment made after the deadline, read before the clock
    judged it (its watermark lags by a second, an outage by minutes), must not wipe the breach
    with a fresh window for the new owner. It is left to the clock to judge (a touch made in time
    may still be on its way on another topic)."""
    late = restart(timer(), POLICY, at(6), ALWAYS)
    assert late.outcomes == () and late.timer.due_at == at(5)
    assert tick(late.timer, at(6)).outcomes == (Breached(at(5)),)


def test_a_paused_timer_reset_on_reassignment_stays_paused_until_resumed() -> None:
    reset = restart(pause(timer(), at(1)).timer, POLICY, at(4), ALWAYS).timer
    assert reset.state == "paused" and reset.next_fire_at is None
    assert resume(reset, at(10), ALWAYS).timer.due_at == at(15)


@pytest.mark.parametrize(("queued_reason", "cause"), [
    (None, "no_owner"), ("no_eligible_owner", "no_owner"), ("no_matching_rule", "no_owner"),
    ("at_capacity", "capacity"), ("missing_data", "missing_data"),
])
def test_an_unowned_breach_says_why_nobody_owned_it(queued_reason, cause) -> None:
    assert root_cause(owner_id=None, contactable=True, owner_calendar=None, due_at=T0,
                      queued_reason=queued_reason) == cause


def test_a_metric_calendar_must_exist() -> None:
    with pytest.raises(ValueError, match=r"sla_policies.0.metrics.qualification.calendar: unknown calendar 'nope'"):
        parse_config("sla_policies: [{id: p, metrics: {qualification: {target: 1d, calendar: nope}}}]")


def test_a_policy_without_metrics_is_refused() -> None:
    with pytest.raises(ValueError, match=r"sla_policies.0.metrics"):
        parse_config("sla_policies: [{id: p, metrics: {}}]")


def test_a_touch_at_the_deadline_is_judged_as_the_clock_judges_it_there() -> None:
    """`tick` breaches at the deadline and `touch` met at it: the outcome of a touch stamped exactly
    then depended on which the clock handled first. Both now say breached."""
    timer = start_timer("s", "l", "first_response", POLICY, 1, "alice", "A", T0, ALWAYS)
    assert [type(o).__name__ for o in touch(timer, timer.due_at).outcomes] == ["Breached"]
    assert [type(o).__name__ for o in tick(timer, timer.due_at).outcomes] == ["Breached"]
    assert [type(o).__name__ for o in touch(timer, timer.due_at - timedelta(microseconds=1)).outcomes] == ["Met"]


def test_a_deadline_at_closing_time_is_the_owner_s_miss_not_a_coverage_gap() -> None:
    """1h from 16:00 on 09:00-17:00 is 17:00, when the half-open span has just closed: the owner
    who worked the whole hour was reported as `off_hours_coverage`."""
    office = BusinessCalendar(CalendarConfig(timezone="UTC", hours={d: ["09:00-17:00"] for d in
                                                                    ("mon", "tue", "wed", "thu", "fri")}))
    due = office.add(datetime(2026, 11, 17, 16, tzinfo=UTC), 3600)
    assert due == datetime(2026, 11, 17, 17, tzinfo=UTC)
    assert root_cause(owner_id="alice", contactable=True, owner_calendar=office, due_at=due) == "owner_missed"
    before_opening = datetime(2026, 11, 17, 9, tzinfo=UTC)
    assert root_cause(owner_id="alice", contactable=True, owner_calendar=office,
                      due_at=before_opening) == "off_hours_coverage"
