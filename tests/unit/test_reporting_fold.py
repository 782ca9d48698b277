from datetime import UTC, datetime, timedelta

from services.reporting.domain import fold, fold_timer, with_response
from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig
from shared.events import CloudEvent

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def event(type_: str, accepted_at: datetime | None = None, **data) -> CloudEvent:
    """An event of the lead `l1`; an activity accepted by intake when it occurred, unless told."""
    if accepted_at is None:
        accepted_at = datetime.fromisoformat(data["occurred_at"]) if "occurred_at" in data else NOW
    return CloudEvent(id=type_, source="test", type=type_, subject="l1", time=accepted_at,
                      data={"lead_id": "l1", **data})


RECEIVED = event("lead.received", source="web", tier="A", received_at="2026-11-17T09:00:00Z",
                 contact={"email": "a@example.com"})
ASSIGNED = event("lead.assigned", owner_id="alice", team_id="sdr", assigned_at="2026-11-17T09:00:01Z")
BREACHED = event("sla.breached", metric="first_response", sla_id="s", policy_id="p",
                 due_at="2026-11-17T09:05:00Z", breached_at="2026-11-17T09:05:00Z", root_cause="owner_missed")


def replay(*events: CloudEvent) -> dict:
    state: dict = {"lead_id": "l1"}
    for e in events:
        state = fold(state, e)
    return state


def test_lifecycle() -> None:
    state = replay(RECEIVED, ASSIGNED, BREACHED)
    assert state["status"] == "assigned" and state["owner_id"] == "alice" and state["tier"] == "A"
    assert state["sla"]["first_response"]["state"] == "breached"
    assert state["sla"]["first_response"]["root_cause"] == "owner_missed"


def test_an_exhausted_cadence_makes_the_lead_nurture_until_a_disposition() -> None:
    touched = event("activity.recorded", type="email", occurred_at="2026-11-17T09:02:00Z")
    exhausted = event("sla.cancelled", metric="next_action", sla_id="n", policy_id="p",
                      due_at="2026-11-18T09:02:00Z", reason="cadence_exhausted")
    assert replay(RECEIVED, ASSIGNED, touched, exhausted)["status"] == "nurture"
    assert replay(RECEIVED, ASSIGNED, exhausted, touched)["status"] == "nurture"
    opted_out = event("sla.cancelled", metric="next_action", sla_id="n", policy_id="p",
                      due_at="2026-11-18T09:02:00Z", reason="opted_out")
    assert replay(RECEIVED, ASSIGNED, touched, opted_out)["status"] == "responded"


def test_an_opted_out_lead_reads_opted_out_whatever_comes_after() -> None:
    """Once, an opted-out lead kept status `assigned`: the lead list showed it among the leads to work."""
    opted_out = event("lead.updated", reason="opted_out", contactable=False, tier="A",
                      changed={"contactable": {"old": True, "new": False}})
    disposition = event("activity.recorded", type="disposition", occurred_at="2026-11-17T09:03:00Z",
                        disposition={"status": "disqualified", "reason": "student"})
    state = replay(RECEIVED, ASSIGNED, opted_out, disposition)
    assert state["status"] == "opted_out" and state["profile"]["contactable"] is False
    assert replay(RECEIVED, ASSIGNED, event("lead.updated", reason="corrected", tier="A"))["status"] == "assigned"


def test_a_contact_consent_withdrawn_by_patch_reads_opted_out() -> None:
    withdrawn = event("lead.updated", reason="patched", contactable=False, tier="A",
                      changed={"consent.contact": {"old": True, "new": False}})
    assert replay(RECEIVED, ASSIGNED, withdrawn)["status"] == "opted_out"


def test_out_of_order_events_do_not_move_status_backwards() -> None:
    assert replay(ASSIGNED, RECEIVED)["status"] == "assigned"


def test_earliest_touch_is_the_first_response() -> None:
    late = event("activity.recorded", type="call", occurred_at="2026-11-17T09:03:00.5Z")
    early = event("activity.recorded", type="email", occurred_at="2026-11-17T09:02:00Z")
    state = replay(RECEIVED, late, early)
    assert state["first_response_at"] == "2026-11-17T09:02:00Z" and state["status"] == "responded"


def test_a_touch_synced_late_counts_from_five_minutes_before_intake_took_it_as_the_sla_clock_dates_it() -> None:
    """A CRM syncing its calls an hour late: the SLA clock dates the call at most 5 minutes before
    intake accepted it (it breached), and reporting's time to first response must say the same."""
    synced = event("activity.recorded", type="call", occurred_at="2026-11-17T09:03:00Z",
                   accepted_at=datetime(2026, 11, 17, 10, 3, tzinfo=UTC))
    assert replay(RECEIVED, ASSIGNED, synced)["first_response_at"] == "2026-11-17T09:58:00Z"
    prompt = event("activity.recorded", type="call", occurred_at="2026-11-17T09:03:00Z",
                   accepted_at=datetime(2026, 11, 17, 9, 7, tzinfo=UTC))  # within the skew: as sent
    assert replay(RECEIVED, ASSIGNED, prompt)["first_response_at"] == "2026-11-17T09:03:00Z"


# ---- SLA timer rows and time to first response ------------------------------------------------

TIMER = {"sla_id": "s", "metric": "first_response", "policy_id": "p", "policy_version": 1, "owner_id": "alice",
         "tier": "A", "started_at": "2026-11-17T09:00:00Z", "due_at": "2026-11-17T09:05:00Z"}


def sla(kind: str, **extra) -> CloudEvent:
    return event(f"sla.{kind}", **{**TIMER, **extra})


def test_a_back_filled_touch_from_before_the_lead_came_is_no_first_response() -> None:
    """A CRM back-filling history: a call three days before the lead came set its first response
    three days before its receipt (status responded), and the real answer later never replaced it."""
    old_call = event("activity.recorded", type="call", outcome="connected", occurred_at="2026-11-14T09:00:00Z")
    answer = event("activity.recorded", type="call", outcome="connected", occurred_at="2026-11-17T09:03:00Z")
    state = replay(RECEIVED, ASSIGNED, old_call)
    assert state.get("first_response_at") is None and state["status"] == "assigned"
    assert replay(RECEIVED, ASSIGNED, old_call, answer)["first_response_at"] == answer.data["occurred_at"]


def test_an_email_opened_or_clicked_is_no_first_response() -> None:
    opened = event("activity.recorded", type="email", outcome="opened", occurred_at="2026-11-17T09:02:00Z")
    assert replay(RECEIVED, ASSIGNED, opened)["status"] == "assigned"


def test_a_late_started_or_warning_never_reopens_a_met_timer() -> None:
    timer = fold_timer(None, sla("met", met_at="2026-11-17T09:02:00Z"))
    for late in (sla("started"), sla("warning", percent=80), sla("resumed")):
        timer = fold_timer(timer, late)
    assert timer["state"] == "met"


def test_pause_and_resume_move_an_open_timer_and_cancel_keeps_its_reason() -> None:
    assert fold_timer(fold_timer(None, sla("started")), sla("paused"))["state"] == "paused"
    assert fold_timer(fold_timer(None, sla("paused")), sla("resumed"))["state"] == "open"
    cancelled = fold_timer(None, sla("cancelled", reason="opted_out"))
    assert (cancelled["state"], cancelled["cancel_reason"]) == ("cancelled", "opted_out")


def test_an_unknown_sla_event_kind_changes_no_state() -> None:
    assert fold_timer(fold_timer(None, sla("started")), sla("snoozed"))["state"] == "open"


def test_time_to_first_response_counts_a_late_answer_after_a_breach() -> None:
    timer = fold_timer(None, sla("breached", breached_at="2026-11-17T09:05:00Z", root_cause="owner_missed"))
    answered = with_response(timer, NOW + timedelta(hours=1), None)
    assert answered["ttfr_seconds"] == 3600 and answered["ttfr_business_seconds"] == 3600


def test_business_time_to_first_response_skips_closed_hours() -> None:
    office = BusinessCalendar(CalendarConfig(timezone="UTC", hours={"tue": ["09:00-17:00"], "wed": ["09:00-17:00"]}))
    timer = fold_timer(None, sla("started", started_at="2026-11-17T16:00:00Z"))
    answered = with_response(timer, datetime(2026, 11, 18, 10, 0, tzinfo=UTC), office)
    assert answered["ttfr_seconds"] == 18 * 3600 and answered["ttfr_business_seconds"] == 2 * 3600



def test_business_time_to_first_response_leaves_out_the_time_the_timer_was_paused() -> None:
    """Paused from +5 s to +25 s, answered at +50 s: the SLA clock's elapsed time is 30 s (a pause
    stops the clock), and so is the report's business time; wall time stays 50 s. Answered while
    still paused, the pause counts up to the answer."""
    clock = {"calendar": "always", "timezone": None}
    paused = fold_timer(fold_timer(None, sla("started")), sla("paused", timer={
        **clock, "paused_at": "2026-11-17T09:00:05Z", "paused_seconds": 0.0}))
    resumed = fold_timer(paused, sla("resumed", timer={**clock, "paused_at": None, "paused_seconds": 20.0}))
    met = fold_timer(resumed, sla("met", met_at="2026-11-17T09:00:50Z", timer={
        **clock, "paused_at": None, "paused_seconds": 20.0}))
    answered = with_response(met, None, None)
    assert answered["ttfr_seconds"] == 50 and answered["ttfr_business_seconds"] == 30
    met_while_paused = fold_timer(paused, sla("met", met_at="2026-11-17T09:00:50Z", timer={
        **clock, "paused_at": "2026-11-17T09:00:05Z", "paused_seconds": 0.0}))
    assert with_response(met_while_paused, None, None)["ttfr_business_seconds"] == 5


def test_a_call_logged_with_its_disposition_is_the_lead_s_disposition_and_its_first_response() -> None:
    """As the SLA clock judges it: the disposition meets qualification, the connected call answers."""
    call = event("activity.recorded", type="call", outcome="connected", actor="carol",
                 occurred_at="2026-11-17T09:02:00Z", disposition={"status": "unreachable", "reason": "no_answer_5x"})
    state = replay(RECEIVED, ASSIGNED, call)
    assert (state["status"], state["disposition_status"]) == ("dispositioned", "unreachable")
    assert (state["first_response_at"], state["first_touch_actor"]) == ("2026-11-17T09:02:00Z", "carol")

def test_a_met_timer_is_answered_when_it_was_met_not_by_an_earlier_non_qualifying_touch() -> None:
    timer = fold_timer(None, sla("met", met_at="2026-11-17T09:03:00Z"))
    assert with_response(timer, NOW + timedelta(minutes=1), None)["ttfr_seconds"] == 180


def test_an_unanswered_timer_has_no_time_to_first_response() -> None:
    assert with_response(fold_timer(None, sla("started")), None, None)["ttfr_seconds"] is None


def test_a_cancelled_timer_has_no_time_to_first_response_though_the_lead_is_answered_later() -> None:
    """A tier change cancels the timer (policy_changed) and its successor, from the same clock
    start, is the one the answer meets: the cancelled one counted the same answer again, under the
    old tier and policy (a lead upgraded from C to A was in tier C's time to first response)."""
    for reason in ("policy_changed", "disqualified", "merged"):
        cancelled = fold_timer(fold_timer(None, sla("started")), sla("cancelled", reason=reason))
        answered = with_response(cancelled, NOW + timedelta(minutes=2), None)
        assert answered["ttfr_seconds"] is None and answered["ttfr_business_seconds"] is None


def test_reassignment_events_in_any_order_leave_the_highest_assignment_as_owner() -> None:
    reassigned = event("lead.reassigned", from_owner_id="alice", to_owner_id="bob", reason="r", assignment_no=2)
    for order in ((ASSIGNED, reassigned), (reassigned, ASSIGNED)):
        state = replay(RECEIVED, *order)
        assert (state["owner_id"], state["first_owner_id"], state["reassignments"]) == ("bob", "alice", 1)


def test_a_lead_taken_into_the_queue_is_nobody_s_until_handed_out_and_that_counts_as_a_reassignment() -> None:
    """The owner out of office, nobody else free: the lead kept showing its old owner (the lead list
    by owner_id listed it) and the hand-out to someone else was no reassignment in the reports."""
    queued = CloudEvent(id="q", source="test", type="lead.queued", subject="l1", time=NOW, data={
        "lead_id": "l1", "tier": "A", "queue": "tier-A", "reason": "no_eligible_owner", "assignment_no": 2,
        "from_owner_id": "alice"})
    handed = CloudEvent(id="a2", source="test", type="lead.assigned", subject="l1", time=NOW, data={
        "lead_id": "l1", "owner_id": "bob", "team_id": "sdr", "assignment_no": 2, "assigned_at": "2026-11-17T09:10:00Z"})
    waiting = replay(RECEIVED, ASSIGNED, queued)
    assert (waiting["owner_id"], waiting["status"]) == (None, "queued")  # it read `assigned`, to nobody
    state = replay(RECEIVED, ASSIGNED, queued, handed)
    assert (state["owner_id"], state["reassignments"], state["first_owner_id"]) == ("bob", 1, "alice")
    assert state["status"] == "assigned"
    late = replay(RECEIVED, ASSIGNED, handed, queued)  # a late queue event changes nothing
    assert (late["owner_id"], late["status"]) == ("bob", "assigned")


def test_a_tier_upgrade_moves_the_lead_to_its_new_tier() -> None:
    upgraded = event("lead.updated", tier="B", changed={"intent": {"old": "newsletter", "new": "trial"}})
    assert replay(RECEIVED, upgraded)["tier"] == "B"


def test_a_patch_and_an_opt_out_show_in_the_lead_profile() -> None:
    received = event("lead.received", source="web", tier="C", received_at="2026-11-17T09:00:00Z",
                     contact={"email": "a@example.com", "phone": None}, intent={"type": "webinar"},
                     consent={"contact": True}, contactable=True, missing_fields=["contact.phone"])
    patched = event("lead.updated", tier="A", previous_tier="C", reason="patched", contactable=True,
                    missing_fields=[], changed={"contact.phone": {"old": None, "new": "+14155550100"},
                                                "intent.type": {"old": "webinar", "new": "demo_request"},
                                                "attributes.crm.id": {"old": None, "new": "x"}})
    opted_out = event("lead.updated", tier="A", previous_tier="A", reason="opted_out", contactable=False,
                      changed={"contactable": {"old": True, "new": False},
                               "consent.contact": {"old": True, "new": False}})
    before = replay(received)
    state = fold(before, patched)
    profile = state["profile"]
    assert profile["contact"] == {"email": "a@example.com", "phone": "+14155550100"}
    assert profile["intent"] == {"type": "demo_request"} and profile["missing_fields"] == []
    assert before["profile"]["contact"]["phone"] is None  # the earlier state is not changed in place
    profile = fold(state, opted_out)["profile"]
    assert profile["contactable"] is False and profile["consent"] == {"contact": False}
    assert profile["missing_fields"] == []  # an update without missing fields leaves them


def test_queue_meeting_and_disposition_facts_are_kept_for_the_reports() -> None:
    queued = event("lead.queued", tier="A", queue="default", reason="nobody eligible")
    meeting = event("activity.recorded", type="meeting", actor="alice", outcome="booked",
                    occurred_at="2026-11-17T10:00:00Z")
    earlier = event("activity.recorded", type="disposition", occurred_at="2026-11-17T11:00:00Z",
                    disposition={"status": "qualified", "reason": None})
    later = event("activity.recorded", type="disposition", occurred_at="2026-11-17T12:00:00Z",
                  disposition={"status": "disqualified", "reason": "no_budget"})
    state = replay(RECEIVED, queued, ASSIGNED, meeting, later, earlier)
    assert state["queued_at"] == "2026-11-17T09:00:00Z" and state["first_assign_method"] is None
    assert state["meeting_booked_at"] == "2026-11-17T10:00:00Z" and state["first_touch_actor"] == "alice"
    # The latest disposition stands, whatever order they arrived in.
    assert (state["disposition_status"], state["disposition_reason"]) == ("disqualified", "no_budget")
    assert state["status"] == "dispositioned"


def test_time_in_queue_is_the_lead_s_first_stay_not_from_its_first_queueing_to_its_last_dequeue() -> None:
    """Queued on arrival for a minute, then three days with alice, then queued again when she went
    out of office: the lead's queue time read as three days and an hour (first lead.queued to the
    last lead.dequeued), time it spent with an owner. The routing report's time in queue is the
    first stay (as its time to assignment is the first assignment's)."""
    def at(minutes: int, type_: str, **data) -> CloudEvent:
        return CloudEvent(id=f"{type_}{minutes}", source="test", type=type_, subject="l1",
                          time=NOW + timedelta(minutes=minutes),
                          data={"lead_id": "l1", "tier": "A", "queue": "tier-A", "reason": "r", **data})
    state = replay(RECEIVED, at(0, "lead.queued"), at(1, "lead.dequeued"), ASSIGNED,
                   at(3 * 24 * 60, "lead.queued", from_owner_id="alice", assignment_no=2),
                   at(3 * 24 * 60 + 60, "lead.dequeued", assignment_no=2))
    assert (state["queued_at"], state["dequeued_at"]) == ("2026-11-17T09:00:00Z", "2026-11-17T09:01:00Z")


def test_an_assignment_folded_before_the_lead_s_receipt_gives_the_lead_facts_it_carries() -> None:
    """CONTRACT: lead.assigned carries tier, source and received_at so a consumer can act before it
    has seen lead.received (leads.routing may be read ahead of leads.intake). The lead read as
    tier none, source none, and was missing from the lead list and the routing report until then."""
    early = event("lead.assigned", owner_id="alice", team_id="sdr", assignment_no=1, method="round_robin",
                  assigned_at="2026-11-17T09:00:01Z", tier="A", source="web", received_at="2026-11-17T09:00:00Z")
    state = replay(early)
    assert (state["tier"], state["source"], state["received_at"]) == ("A", "web", "2026-11-17T09:00:00Z")
    upgraded = event("lead.updated", tier="B", changed={})
    # What intake says wins once it comes, whatever the assignment said.
    assert replay(early, RECEIVED)["tier"] == "A" and replay(RECEIVED, upgraded, early)["tier"] == "B"
