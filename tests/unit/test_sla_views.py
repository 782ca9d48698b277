"""What GET /v1/leads/{lead_id}/sla shows for a timer: contract state names, business time that
stops while paused and when closed."""
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from services.sla_clock.views import timer_view
from shared.config import parse_config

T0 = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
CONFIG = parse_config("sla_policies: [{id: p, metrics: {first_response: {target: 10m}}}]")


def row(**changes):
    base = dict(sla_id="s", lead_id="l", metric="first_response", policy_id="p", policy_version=1, owner_id="alice",
                calendar="always", timezone=None, started_at=T0, due_at=T0 + timedelta(minutes=10), closed_at=None,
                state="open", root_cause=None, target_seconds=600.0, paused_at=None, paused_seconds=0.0, step=1,
                reason=None)
    return SimpleNamespace(**{**base, **changes})


def test_a_running_timer_shows_elapsed_and_remaining_business_time() -> None:
    view = timer_view(row(), CONFIG, T0 + timedelta(minutes=4))
    assert view["state"] == "running" and view["elapsed_seconds"] == 240 and view["remaining_seconds"] == 360


def test_a_paused_timer_stops_counting_and_says_since_when() -> None:
    paused = row(state="paused", paused_at=T0 + timedelta(minutes=3), paused_seconds=60.0)
    view = timer_view(paused, CONFIG, T0 + timedelta(hours=5))
    assert view["state"] == "paused" and view["paused_at"] == "2026-11-17T09:03:00Z"
    assert view["elapsed_seconds"] == 120 and view["remaining_seconds"] == 480


def test_a_cancelled_cadence_shows_its_reason_and_step() -> None:
    view = timer_view(row(metric="next_action", state="cancelled", reason="cadence_exhausted", step=3,
                          closed_at=T0 + timedelta(minutes=5)), CONFIG, T0 + timedelta(hours=1))
    assert (view["state"], view["cancel_reason"], view["step"]) == ("cancelled", "cadence_exhausted", 3)
    assert view["elapsed_seconds"] == 300


def test_a_missed_follow_up_whose_cadence_then_ended_shows_as_the_miss_it_was() -> None:
    """Reports keep it breached; the clock's own view said "cancelled", with 40 minutes elapsed
    on a 10-minute target."""
    ended = row(metric="next_action", state="cancelled", reason="cadence_exhausted", root_cause="owner_missed",
                step=3, closed_at=T0 + timedelta(minutes=40))
    view = timer_view(ended, CONFIG, T0 + timedelta(hours=1))
    assert (view["state"], view["cancel_reason"], view["root_cause"]) == ("breached", "cadence_exhausted",
                                                                          "owner_missed")
    assert view["elapsed_seconds"] == 600 and view["remaining_seconds"] == 0


def test_a_breached_timer_shows_its_whole_window_used_however_late_it_was_judged() -> None:
    judged_late = row(state="breached", root_cause="system_delay", closed_at=T0 + timedelta(minutes=11, seconds=30))
    view = timer_view(judged_late, CONFIG, T0 + timedelta(hours=1))
    assert view["state"] == "breached" and view["closed_at"] == "2026-11-17T09:11:30Z"
    assert view["elapsed_seconds"] == 600 and view["remaining_seconds"] == 0


def test_a_timer_met_while_paused_counted_until_the_pause_not_until_the_touch() -> None:
    """Met (or cancelled) a day into a pause, it showed the day as elapsed: 8h on a 10 min target.
    The domain keeps the pause's start on the closed timer; the view stops there."""
    from services.sla_clock.domain import pause, start_timer, touch
    from shared.business_hours import BusinessCalendar
    from shared.config import CalendarConfig

    timer = start_timer("s", "l", "first_response", CONFIG.sla_policies[0], 1, "alice", "A", T0,
                        BusinessCalendar(CalendarConfig()))
    met = touch(pause(timer, T0 + timedelta(minutes=3)).timer, T0 + timedelta(days=1)).timer
    view = timer_view(row(state=met.state, paused_at=met.paused_at, closed_at=T0 + timedelta(days=1)), CONFIG,
                      T0 + timedelta(days=2))
    assert (view["state"], view["elapsed_seconds"], view["remaining_seconds"]) == ("met", 180, 420)
    assert "paused_at" not in view
