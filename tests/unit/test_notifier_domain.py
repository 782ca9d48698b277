from datetime import UTC, datetime, timedelta

import pytest

from services.notifier.domain import (
    Attempt,
    LeadFacts,
    Recipient,
    answered_before,
    answers_chain,
    backoff,
    decide,
    deliver_at,
    digest_key,
    digest_window,
    goes_to_digest,
    humanize,
    idempotency_key,
    invalid_event_type,
    is_retryable,
    noted_touches,
    parse_retry_after,
    plan_steps,
    rate_room,
    recipients,
    render,
    render_digest,
    roles_for,
    sign,
    step_recipients,
    subscribed,
    verify,
)
from shared.business_hours import BusinessCalendar
from shared.config import CalendarConfig, ConfigError, parse_config

CONFIG = parse_config("""
owners:
  - {id: alice, name: Alice A, email: alice@example.com, manager_id: maria}
  - {id: bob}
  - {id: maria}
  - {id: ops}
  - {id: tom}
teams:
  - {id: sdr, manager_id: tom, members: [alice, bob]}
  - {id: other, members: [maria, ops]}
lead_ops: [ops, maria]
channels:
  hook: {url: "http://127.0.0.1:1/x", secret: s}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps:
      - {step: 1, notify: [owner, manager], channels: [hook]}
      - {step: 2, after: 15m, notify: [lead_ops], channels: [hook]}
""")
NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def test_manager_comes_from_the_owner_then_the_team() -> None:
    assert [r.id for r in recipients(CONFIG, ["owner", "manager"], "alice")] == ["alice", "maria"]
    assert [r.id for r in recipients(CONFIG, ["owner", "manager"], "bob")] == ["bob", "tom"]


def test_a_person_is_reached_once_and_missing_roles_are_skipped() -> None:
    assert [r.id for r in recipients(CONFIG, ["lead_ops", "manager"], "alice")] == ["ops", "maria"]
    assert recipients(CONFIG, ["owner", "manager"], None) == []


def test_escalation_steps_are_planned_at_their_delays() -> None:
    planned = plan_steps(CONFIG, "sla.breached", NOW)
    assert [(p.policy_id, p.step, p.due_at - NOW) for p in planned] == [
        ("breach", 1, timedelta(0)), ("breach", 2, timedelta(minutes=15))]
    assert plan_steps(CONFIG, "sla.warning", NOW) == []


def test_a_breach_caused_by_the_system_goes_to_lead_ops_not_the_owner() -> None:
    people, channels = step_recipients(CONFIG, "breach", 1, "alice", "system_delay")
    assert [p.id for p in people] == ["ops", "maria"] and channels == ["hook"]
    people, _ = step_recipients(CONFIG, "breach", 1, "alice", "owner_missed")
    assert [p.id for p in people] == ["alice", "maria"]
    assert roles_for(["owner"], None) == ["owner"]


@pytest.mark.parametrize("root_cause", ["no_owner", "capacity", None])
def test_a_step_for_a_lead_nobody_owns_goes_to_lead_ops_instead_of_the_missing_owner_and_manager(root_cause) -> None:
    """A queued lead's breach (no_owner, capacity) or warning has no owner and so no manager: the
    step would reach nobody (the first step of the usual policy is owner + manager), and the lead
    nobody could take would wait unseen for the next step, or for ever with a one-step policy."""
    people, channels = step_recipients(CONFIG, "breach", 1, None, root_cause)
    assert [p.id for p in people] == ["ops", "maria"] and [p.role for p in people] == ["lead_ops", "lead_ops"]
    assert channels == ["hook"]
    # Owned again when the step fires (dequeued meanwhile): the step reaches the owner as planned.
    assert [p.id for p in step_recipients(CONFIG, "breach", 1, "alice", root_cause)[0]] == ["alice", "maria"]


def test_a_step_for_a_lead_whose_owner_left_the_configuration_goes_to_lead_ops() -> None:
    """Found by an acceptance sweep: an owner taken out of the file keeps their open leads (until
    reassigned), and a breach on one reached that owner alone, whom no channel can find (no
    email) and who has no manager any more: nobody heard of it."""
    people, channels = step_recipients(CONFIG, "breach", 1, "carl-who-left", "owner_missed")
    assert [(p.id, p.role) for p in people] == [("ops", "lead_ops"), ("maria", "lead_ops")]
    assert channels == ["hook"]


def test_a_step_removed_from_the_configuration_reaches_nobody() -> None:
    assert step_recipients(CONFIG, "breach", 9, "alice", None) == ([], [])
    assert step_recipients(CONFIG, "gone", 1, "alice", None) == ([], [])


def test_idempotency_key_depends_on_what_the_message_is_not_when_it_is_sent() -> None:
    key = idempotency_key("esc-1", 1, "alice", "hook")
    assert key == idempotency_key("esc-1", 1, "alice", "hook")
    assert len({key, idempotency_key("esc-1", 2, "alice", "hook"), idempotency_key("esc-1", 1, "maria", "hook"),
                idempotency_key("esc-2", 1, "alice", "hook"), idempotency_key("esc-1", 1, "alice", "mail")}) == 5


def test_subscriptions_match_exact_types_prefixes_and_everything() -> None:
    assert subscribed(["lead.assigned"], "lead.assigned")
    assert not subscribed(["lead.assigned"], "lead.reassigned")
    assert subscribed(["sla.*"], "sla.breached") and not subscribed(["sla.*"], "lead.assigned")
    assert subscribed(["*"], "notification.failed")


@pytest.mark.parametrize("pattern", ["lead.assigned", "sla.*", "*", "notification.failed"])
def test_known_event_types_and_patterns_are_accepted(pattern: str) -> None:
    assert invalid_event_type(pattern) is None


@pytest.mark.parametrize("pattern", ["lead.asigned", "nothing.*", "", "lead", "deadletter"])
def test_unknown_event_types_are_refused_with_a_reason(pattern: str) -> None:
    assert invalid_event_type(pattern)


def test_signature_verifies_and_detects_tampering() -> None:
    body = b'{"lead_id":"l1"}'
    header = sign(b"secret", body, 1_800_000_000)
    assert verify(b"secret", body, header, now=1_800_000_010)
    assert not verify(b"secret", body + b" ", header, now=1_800_000_010)
    assert not verify(b"other", body, header, now=1_800_000_010)


def test_old_signatures_are_replays() -> None:
    header = sign(b"secret", b"{}", 1_800_000_000)
    assert not verify(b"secret", b"{}", header, now=1_800_000_000 + 301)


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", "garbage"])
def test_malformed_signature_headers_fail_closed(header: str) -> None:
    assert not verify(b"secret", b"{}", header, now=1_800_000_000)


def test_backoff_doubles_from_one_second_up_to_five_minutes_with_jitter_in_the_upper_half() -> None:
    assert [backoff(n, 0.0).total_seconds() for n in (1, 2, 3, 10, 20)] == [0.5, 1, 2, 150, 150]
    assert [backoff(n, 0.999).total_seconds() for n in (1, 2, 3)] == pytest.approx([1, 2, 4], rel=0.01)


def test_what_is_worth_retrying() -> None:
    assert is_retryable(None) and is_retryable(503) and is_retryable(429) and is_retryable(408)
    assert not is_retryable(400) and not is_retryable(404) and not is_retryable(410)


def test_retry_after_is_read_as_seconds_or_a_date_and_capped() -> None:
    assert parse_retry_after("120", NOW) == timedelta(seconds=120)
    assert parse_retry_after("Tue, 17 Nov 2026 09:10:00 GMT", NOW) == timedelta(minutes=10)
    assert parse_retry_after("999999", NOW) == timedelta(hours=1)
    assert parse_retry_after("soon", NOW) is None and parse_retry_after(None, NOW) is None


def test_a_success_is_sent_and_a_client_error_fails_at_once() -> None:
    assert decide(Attempt(status=204), 1, 5, NOW, 0.5).state == "sent"
    failed = decide(Attempt(status=404, error="HTTP 404"), 1, 5, NOW, 0.5)
    assert failed.state == "failed" and failed.error == "HTTP 404"


def test_server_errors_and_timeouts_retry_until_the_last_attempt() -> None:
    retry = decide(Attempt(status=502, error="HTTP 502"), 2, 5, NOW, 0.0)
    assert retry.state == "pending" and retry.next_attempt_at == NOW + timedelta(seconds=1)
    assert decide(Attempt(error="ConnectTimeout"), 1, 5, NOW, 0.0).state == "pending"
    assert decide(Attempt(status=502, error="HTTP 502"), 5, 5, NOW, 0.0).state == "failed"


def test_a_429_waits_as_long_as_the_receiver_asks() -> None:
    wait = decide(Attempt(status=429, error="HTTP 429", retry_after="30"), 1, 5, NOW, 0.0)
    assert wait.state == "pending" and wait.next_attempt_at == NOW + timedelta(seconds=30)


def test_durations_read_like_a_person_would_say_them() -> None:
    assert [humanize(timedelta(seconds=s)) for s in (5, 125, 3700, 90000)] == ["5 s", "2 min", "1 h 1 min", "1 d 1 h"]


def test_a_breach_message_says_who_which_lead_tier_how_late_and_links_to_it() -> None:
    lead = LeadFacts("lead-1", name="Ada Lovelace", company="Analytical <Engines>", tier="A", owner_id="alice",
                     owner_name="Alice A")
    sla = {"metric": "first_response", "due_at": "2026-11-17T08:48:00Z", "breached_at": "2026-11-17T08:48:00Z",
           "root_cause": "owner_missed"}
    msg = render(lead, "sla.breached", sla, Recipient("maria", "manager"), 1, "https://leads.example.com/", NOW)
    assert msg.subject == "SLA breached: Ada Lovelace (Analytical <Engines>), tier A, 12 min late"
    assert msg.link == "https://leads.example.com/v1/leads/lead-1"
    for part in ("Owner: Alice A", "Tier: A", "2026-11-17 08:48 UTC", "owner_missed", msg.link):
        assert part in msg.text
    assert "Analytical &lt;Engines&gt;" in msg.html and "<Engines>" not in msg.html
    assert msg.slack["blocks"][-1]["elements"][0]["url"] == msg.link
    assert {"type": "plain_text", "text": "Lead:\nAda Lovelace, Analytical <Engines>", "emoji": False} in \
        msg.slack["blocks"][1]["fields"]  # plain text: shown as written, never parsed


def test_a_message_without_a_base_url_has_no_link() -> None:
    msg = render(LeadFacts("l"), "sla.warning", {"due_at": "2026-11-17T09:05:00Z", "percent": 80},
                 Recipient("alice", "owner"), 1, None, NOW)
    assert msg.link is None and "due in 5 min" in msg.subject and "actions" not in str(msg.slack)


def test_slack_and_email_channels_are_configured_with_secrets_from_the_environment() -> None:
    config = parse_config("""
channels:
  team-slack: {type: slack, url_env: SLACK_URL}
  mail: {type: email, host: smtp.example.com, from: leads@example.com, username: u, password_env: SMTP_PW}
  hook: {url: "http://x", secret_env: HOOK}
""")
    assert {name: c.type for name, c in config.channels.items()} == {
        "team-slack": "slack", "mail": "email", "hook": "webhook"}
    with pytest.raises(ConfigError, match="channels.team-slack.url_env"):
        parse_config("channels: {team-slack: {type: slack, url: 'https://hooks.slack.com/x'}}")


LONDON_OFFICE = BusinessCalendar(CalendarConfig(timezone="Europe/London", hours={
    day: ["09:00-17:30"] for day in ("mon", "tue", "wed", "thu", "fri")}))


def test_a_message_to_a_person_waits_for_their_working_hours_unless_the_tier_is_urgent() -> None:
    evening = datetime(2026, 11, 17, 22, 0, tzinfo=UTC)  # a Tuesday, after hours in London
    assert deliver_at(LONDON_OFFICE, evening, "B", ["A"]) == datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    assert deliver_at(LONDON_OFFICE, evening, "A", ["A"]) == evening
    assert deliver_at(LONDON_OFFICE, NOW, "B", ["A"]) == NOW  # 09:00 London: open
    assert deliver_at(None, evening, "B", []) == evening  # no calendar: always reachable


def test_digest_windows_are_aligned_so_every_replica_agrees() -> None:
    start, end = digest_window(datetime(2026, 11, 17, 9, 7, 30, tzinfo=UTC), 300)
    assert (start, end) == (datetime(2026, 11, 17, 9, 5, tzinfo=UTC), datetime(2026, 11, 17, 9, 10, tzinfo=UTC))
    assert not goes_to_digest(2, after=3) and goes_to_digest(3, after=3)
    assert digest_key("maria", "slack", start) == digest_key("maria", "slack", start)


def test_a_digest_lists_the_first_escalations_and_counts_the_rest() -> None:
    items = [{"subject": f"SLA breached: lead {n}", "link": f"https://x/v1/leads/{n}"} for n in range(40)]
    msg = render_digest(items, 10_000, Recipient("maria", "manager"), NOW, "https://x")
    assert msg.subject.startswith("10000 lead escalations for you")
    assert "SLA breached: lead 0 https://x/v1/leads/0" in msg.text and "lead 30" not in msg.text
    assert "... and 9975 more" in msg.text and msg.link == "https://x/board"
    listed = msg.slack["blocks"][1]["elements"]
    assert sum(len(e["elements"][0]["text"]) for e in listed[0]["elements"]) <= 3000
    assert listed[-1]["elements"][0]["text"] == f"... and {10_000 - len(listed[0]['elements'])} more"


def test_a_rate_limited_channel_has_room_for_what_is_left_of_its_quota() -> None:
    assert [rate_room(3, used) for used in (0, 2, 3, 7)] == [3, 1, 0, 0]


ANSWERING = parse_config("""
sla_policies:
  - id: fast
    metrics: {first_response: {target: 5m}, next_action: {target: 1d, touches: 3}, qualification: {target: 5d}}
    qualifying_touches: [{type: call, outcomes: [connected]}, email]
    touch_actors: owner
""")


@pytest.mark.parametrize(("metric", "policy", "activity", "outcome", "actor", "answers"), [
    ("first_response", "fast", "call", "connected", "alice", True),
    ("first_response", "fast", "call", "no_answer", "alice", False),  # not a touch under the policy
    ("first_response", "fast", "email", None, "bob", False),  # only the owner's touches count
    ("first_response", "fast", "note", None, "alice", False),
    ("next_action", "fast", "email", None, "alice", True),
    ("next_action", "fast", "disposition", None, "alice", True),  # ends the cadence
    ("next_action", "fast", "meeting", "booked", "alice", True),
    ("qualification", "fast", "disposition", None, "bob", True),
    ("qualification", "fast", "call", "connected", "alice", False),
    ("first_response", "gone", "call", "connected", "alice", False),  # policy no longer configured
])
def test_a_late_activity_answers_a_chain_by_the_rule_the_clock_judges(metric, policy, activity, outcome, actor,
                                                                      answers):
    sla = {"metric": metric, "policy_id": policy, "owner_id": "alice"}
    assert answers_chain(ANSWERING, sla, activity, outcome, actor, "alice") is answers


def test_a_call_from_before_the_sla_began_a_back_filled_history_answers_no_chain() -> None:
    started = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
    sla = {"metric": "first_response", "policy_id": "fast", "owner_id": "alice", "started_at": "2026-11-17T09:00:00Z"}
    history, drifted = started - timedelta(days=3), started - timedelta(minutes=1)
    assert answers_chain(ANSWERING, sla, "call", "connected", "alice", "alice", history) is False
    assert answers_chain(ANSWERING, sla, "call", "connected", "alice", "alice", drifted) is True  # clocks drift


def test_a_breach_read_after_its_late_answer_knows_of_it_and_not_of_earlier_or_other_touches() -> None:
    due = datetime(2026, 11, 17, 9, 5, tzinfo=UTC)
    sla = {"metric": "first_response", "policy_id": "fast", "owner_id": "alice",
           "started_at": "2026-11-17T09:00:00Z", "due_at": "2026-11-17T09:05:00Z"}

    def touches(*made: tuple[str, str | None, str, timedelta]) -> list[dict]:
        kept: list[dict] | None = None
        for type_, outcome, actor, after in made:
            kept = noted_touches(kept, type_=type_, outcome=outcome, actor=actor, at=due + after, owner_id="alice",
                                 disposition=False)
        return kept or []

    assert answered_before(ANSWERING, sla, touches(("call", "connected", "alice", timedelta(seconds=1)))) is True
    assert answered_before(ANSWERING, sla, touches(("call", "connected", "alice", timedelta(0)))) is True
    # Before the deadline (it met the SLA, or the clock judged it otherwise), not an answer, not the owner's.
    assert answered_before(ANSWERING, sla, touches(("call", "connected", "alice", -timedelta(minutes=1)))) is False
    assert answered_before(ANSWERING, sla, touches(("call", "no_answer", "alice", timedelta(seconds=1)),
                                                   ("email", None, "bob", timedelta(seconds=2)))) is False
    assert answered_before(ANSWERING, sla, None) is False


def test_a_lead_keeps_only_its_latest_touches_the_latest_last_whatever_order_they_came_in() -> None:
    start = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
    kept = None
    for minute in (7, 1, 3, 9, 2, 8, 5):  # a CRM syncing out of order
        kept = noted_touches(kept, type_="call", outcome="connected", actor="alice",
                             at=start + timedelta(minutes=minute), owner_id="alice", disposition=False)
    assert [datetime.fromisoformat(t["at"]).minute for t in kept] == [3, 5, 7, 8, 9]


def _slack_texts(payload: dict) -> list[tuple[str, str]]:
    """Every (type, text) Slack would parse in a message: the top-level text (mrkdwn unless the
    message says `mrkdwn: false`) and each text object of its blocks."""
    found = [("mrkdwn" if payload.get("mrkdwn", True) else "plain_text", payload["text"])]

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("plain_text", "mrkdwn") and "text" in node:
                found.append((node["type"], node["text"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(payload["blocks"])
    return found


HOSTILE = "<!channel> *bold* _it_ ~s~ `c` <@U123> <https://evil.example|click>"


def test_lead_fields_cannot_become_slack_mentions_links_or_formatting() -> None:
    # A company named `<!channel>` pinged the whole channel through the message's top-level text
    # (Slack reads it as mrkdwn), and `*bold*` in a name rendered as formatting in the fields.
    lead = LeadFacts("lead-1", name="Zoë *Ångström*", company=HOSTILE, tier="A", owner_id="alice",
                     owner_name="_Alice_")
    sla = {"metric": "first_response", "due_at": "2026-11-17T08:48:00Z", "root_cause": "owner_missed"}
    for trigger in ("sla.breached", "sla.warning"):
        msg = render(lead, trigger, sla, Recipient("maria", "manager"), 1, "https://leads.example.com", NOW)
        for kind, text in _slack_texts(msg.slack):
            if kind == "mrkdwn":
                assert "<" not in text and not any(c in text for c in "*_~`"), text
        assert "<!channel>" not in msg.slack["text"]
        assert "Zoë *Ångström*" in str(msg.slack["blocks"])  # shown as sent, as plain text
    digest = render_digest([{"subject": msg.subject, "link": msg.link}], 1, Recipient("maria", "manager"), NOW,
                           "https://x")
    for kind, text in _slack_texts(digest.slack):
        if kind == "mrkdwn":
            assert "<" not in text and not any(c in text for c in "*_~`"), text
    assert msg.link in str(digest.slack["blocks"])  # each listed lead still links to it


def test_a_long_name_with_ampersands_is_cut_before_it_is_escaped_for_slack() -> None:
    # The fallback text was escaped and then cut at 3,000 characters, so a cut could fall inside
    # `&amp;` and the notification showed a stray `&am`.
    lead = LeadFacts("lead-1", name="&" * 4000, company="Acme", tier="A")
    sla = {"metric": "first_response", "due_at": "2026-11-17T08:48:00Z"}
    text = render(lead, "sla.breached", sla, Recipient("maria", "manager"), 1, None, NOW).slack["text"]
    assert text.startswith("SLA breached: &amp;") and "&" not in text.replace("&amp;", "")


def test_a_call_logged_with_its_disposition_answers_a_qualification_chain_as_a_disposition_does() -> None:
    """The SLA clock meets qualification with it (a disposition carried by any activity)."""
    for metric in ("qualification", "next_action"):
        sla = {"metric": metric, "policy_id": "fast", "owner_id": "alice"}
        assert answers_chain(ANSWERING, sla, "call", "no_answer", "bob", "alice", disposition=True) is True
