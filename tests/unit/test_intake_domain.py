from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from services.intake.domain import (
    ActivityIn,
    DedupeFacts,
    DispositionIn,
    KnownLead,
    New,
    Repeat,
    Replay,
    actor_id,
    brings_news,
    classify_tier,
    dedupe,
    identity_keys,
    intent_vocabulary,
    is_contactable,
    lead_columns,
    missing_fields,
    read_disposition,
    same_person,
    updated_record,
)
from services.intake.normalize import Refused, Submission, clean_text, read_submission
from shared.config import IntakeSource, Suppression, parse_config
from shared.events import Contact
from shared.text import storable

TIERS = parse_config("""
tiers:
  default: C
  rules:
    - {tier: A, when: {intent: [demo_request]}}
    - {tier: B, when: {min_score: 70}}
    - {tier: B, when: {source: [partner], countries: [DE]}}
""").tiers


def submission(**overrides) -> Submission:
    body = {"contact": {"email": "ada@example.com"}, "intent": {"type": "newsletter"}, **overrides}
    return read_submission(body, IntakeSource(default_intent="inquiry"))


@pytest.mark.parametrize(
    ("overrides", "source", "tier"),
    [
        ({"intent": {"type": "demo_request"}}, "web", "A"),
        ({"score": 80}, "web", "B"),
        ({"score": 10}, "web", "C"),
        ({"contact": {"email": "a@example.com", "country": "DE"}}, "partner", "B"),
        ({"contact": {"email": "a@example.com", "country": "FR"}}, "partner", "C"),
    ],
)
def test_tier_rules_first_match_wins(overrides: dict, source: str, tier: str) -> None:
    assert classify_tier(submission(**overrides), source, TIERS) == tier


def test_missing_fields_are_reported() -> None:
    assert missing_fields(submission()) == ["contact.phone", "contact.country", "company.name"]


def test_identity_keys_follow_the_configured_match_keys() -> None:
    sub = submission(contact={"email": "a@example.com", "phone": "+14155552671"})
    assert identity_keys(sub, ["email"]) == [("email", "a@example.com")]
    assert identity_keys(sub, ["email", "phone"]) == [("email", "a@example.com"), ("phone", "+14155552671")]


REASONS = {"disqualified": ["no_budget", "student"], "qualified": []}


@pytest.mark.parametrize(
    ("status", "reason", "problem"),
    [
        ("qualified", None, None),
        ("disqualified", "student", None),
        ("disqualified", None, "reason must be one of: no_budget, student"),
        ("disqualified", "bored", "reason must be one of: no_budget, student"),
        ("won", None, "unknown disposition status 'won' (known: disqualified, qualified)"),
    ],
)
def test_dispositions_follow_the_configured_reasons(status: str, reason: str | None, problem: str | None) -> None:
    found = read_disposition(DispositionIn(status=status, reason=reason), REASONS)[1]
    assert (found[1] if found else None) == problem


@pytest.mark.parametrize(("status", "reason", "read", "problem"), [
    # A CRM picklist's label for a configured value: read as the configured spelling.
    ("Disqualified", "No Budget", ("disqualified", "no_budget"), None),
    ("DISQUALIFIED", "no-budget", ("disqualified", "no_budget"), None),
    ("Qualified", "Big fish", ("qualified", "Big fish"), None),  # any reason where none are listed
    # A refusal names the innermost field, as every other error of the body does.
    ("won", None, None, ("disposition.status", "unknown disposition status 'won'")),
    ("disqualified", "bored", None, ("disposition.reason", "reason must be one of: no_budget, student")),
    ("disqualified", None, None, ("disposition.reason", "reason must be one of")),
])
def test_a_disposition_is_read_in_the_configured_spelling_or_refused_naming_its_field(
        status: str, reason: str | None, read, problem) -> None:
    """"Disqualified" / "No Budget" (the label a CRM picklist shows for the configured value) was a
    422: the disposition was lost and the qualification SLA breached for a lead that was closed."""
    found, refused = read_disposition(DispositionIn(status=status, reason=reason), REASONS)
    if read is None:
        assert refused is not None and refused[0] == problem[0] and refused[1].startswith(problem[1])
    else:
        assert refused is None and (found.status, found.reason) == read


def test_a_disposition_activity_needs_its_disposition() -> None:
    with pytest.raises(ValidationError, match="disposition"):
        ActivityIn.model_validate({"type": "disposition"})


def test_missing_fields_count_values_kept_as_sent_as_missing() -> None:
    sub = submission(contact={"email": "ada@example.com", "phone": "12345678", "country": "Atlantis"})
    assert missing_fields(sub) == ["contact.phone", "contact.country", "company.name"]


def test_values_kept_as_sent_never_identify_anyone() -> None:
    sub = submission(contact={"email": "ada@example.com", "phone": "555 0100 9999"})
    assert identity_keys(sub, ["email", "phone"]) == [("email", "ada@example.com")]


def test_a_value_read_from_several_given_still_identifies_the_lead_and_fills_its_field() -> None:
    """'several values given; the first is used' was counted as a value kept as sent: the lead's
    email and phone identified nobody (a repeat was a new lead) and counted as missing."""
    sub = submission(contact={"email": ["Ada@Example.com", "ada@work.example"], "phone": ["4155552671", "2125550100"],
                              "country": "US"}, company={"name": "Acme"})
    assert identity_keys(sub, ["email", "phone"]) == [("email", "ada@example.com"), ("phone", "+14155552671")]
    assert missing_fields(sub) == []
    record = {"contact": sub.snapshot()["contact"], "data_quality": sub.data_quality, "tier": "B"}
    assert lead_columns(record) == {"email": "ada@example.com", "phone": "+14155552671", "tier": "B"}


def test_tiers_rank_in_rule_order_with_the_default_last() -> None:
    assert [TIERS.rank(t) for t in ("A", "B", "C", "Z")] == [0, 1, 2, 3]


SWITCHBOARD = "+442079460958"


@pytest.mark.parametrize(
    ("existing", "new", "match"),
    [
        ({"email": "ada@example.com"}, Contact(email="ada@example.com"), "email"),
        ({"email": "ada@example.com", "phone": SWITCHBOARD},
         Contact(email="bob@example.com", phone=SWITCHBOARD), None),  # colleague on the switchboard
        ({"first_name": "Ada", "phone": SWITCHBOARD},
         Contact(first_name="Bob", phone=SWITCHBOARD), None),
        ({"first_name": "Ada", "phone": SWITCHBOARD},
         Contact(first_name="ada", phone=SWITCHBOARD), "phone"),
        ({"phone": SWITCHBOARD}, Contact(phone=SWITCHBOARD, email="ada@example.com"), "phone"),
        ({"phone": SWITCHBOARD, "phone_extension": "12"},
         Contact(phone=SWITCHBOARD, phone_extension="34"), None),
        ({"email": "ada@example.com"}, Contact(email="ada@example.com"), "email"),
    ],
)
def test_a_shared_phone_is_an_identity_only_when_nothing_contradicts_it(
    existing: dict, new: Contact, match: str | None
) -> None:
    assert same_person(existing, new, ["email", "phone"]) == match


def test_phone_matches_can_be_switched_off() -> None:
    assert same_person({"phone": SWITCHBOARD}, Contact(phone=SWITCHBOARD), ["email"]) is None


@pytest.mark.parametrize(
    ("contact", "consent", "contactable"),
    [
        ({"email": "ada@example.com"}, None, True),
        ({"email": "ada@example.com"}, {"contact": "no"}, False),
        ({"email": "ceo@blocked.example"}, None, False),
        ({"email": "stop@example.com"}, None, False),
        ({"phone": "+14155552671"}, None, False),
    ],
)
def test_suppressed_or_unconsenting_leads_are_not_contactable(contact: dict, consent, contactable: bool) -> None:
    suppression = Suppression(emails=["Stop@Example.com"], domains=["blocked.example"], phones=["+14155552671"])
    assert is_contactable(submission(contact=contact, consent=consent), suppression) is contactable


@pytest.mark.parametrize("kind", ["pause", "resume", "opt_out"])
def test_consent_and_pause_activities_are_known_types(kind: str) -> None:
    assert ActivityIn.model_validate({"type": kind, "reason": "asked"}).type == kind


def test_configured_intent_types_are_matched_before_built_in_spellings() -> None:
    config = parse_config("""
tiers: {rules: [{tier: A, when: {intent: [event_demo]}}]}
intake: {intent_aliases: {partner: [Become a partner]}}
""")
    vocabulary = intent_vocabulary(config)
    assert read_submission({"contact": {"email": "a@example.com"}, "intent": "Event Demo"},
                           IntakeSource(), vocabulary).intent.type == "event_demo"
    assert read_submission({"contact": {"email": "a@example.com"}, "intent": "become a partner"},
                           IntakeSource(), vocabulary).intent.type == "partner"


def test_a_body_nested_too_deeply_is_refused_not_crashed() -> None:
    body: dict = {"contact": {"email": "a@example.com"}}
    inner = body
    for _ in range(5000):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(Refused):
        read_submission(body, IntakeSource())


@pytest.mark.parametrize(
    ("body", "kind", "outcome"),
    [({"type": "Call", "outcome": "No Answer"}, "call", "no_answer"),
     ({"type": "meeting", "outcome": "no-show"}, "meeting", "no_show"),
     ({"type": "Opt-Out"}, "opt_out", None),
     ({"type": "call", "outcome": "left a note"}, "call", "left a note")],
)
def test_activity_types_and_outcomes_are_read_in_any_spelling(body: dict, kind: str, outcome: str | None) -> None:
    activity = ActivityIn.model_validate(body)
    assert (activity.type, activity.outcome) == (kind, outcome)


def test_the_senders_activity_id_is_its_idempotency_key() -> None:
    assert ActivityIn.model_validate({"type": "call", "activity_id": "crm-1"}).external_id == "crm-1"


# ---- dedupe precedence and the update fold (services/intake/domain.py) ----------------------


def known(lead_id: str, email: str | None = None, phone: str | None = None, first_name: str | None = None):
    contact = {k: v for k, v in {"email": email, "phone": phone, "first_name": first_name}.items() if v}
    return KnownLead(lead_id, "C", {"contact": contact}, f"corr-{lead_id}")


ADA = Contact(email="ada@example.com", phone="+14155550100", first_name="Ada")


@pytest.mark.parametrize(("facts", "expected"), [
    (DedupeFacts(), New()),
    (DedupeFacts(key_owner="k", by_external_id=known("x"), candidates=[known("c", "ada@example.com")]), Replay("k")),
    (DedupeFacts(by_external_id=known("x"), candidates=[known("c", "ada@example.com")]), Repeat(known("x"), None)),
    (DedupeFacts(candidates=[known("c", "ada@example.com")]), Repeat(known("c", "ada@example.com"), "email")),
    # A colleague on the same switchboard (another email) is skipped; the next candidate is Ada by phone.
    (DedupeFacts(candidates=[known("colleague", "bob@example.com", "+14155550100"), known("ada", None, "+14155550100")]),
     Repeat(known("ada", None, "+14155550100"), "phone")),
    (DedupeFacts(candidates=[known("grace", None, "+14155550100", "Grace")]), New()),
], ids=["nothing", "key-first", "external-id-next", "same-email", "switchboard-skipped", "phone-other-name"])
def test_dedupe_precedence(facts: DedupeFacts, expected) -> None:
    assert dedupe(facts, ADA, ["email", "phone"]) == expected


def test_a_repeat_brings_news_only_with_a_value_the_lead_does_not_hold() -> None:
    lead = KnownLead("l1", "C", {"contact": {"email": "ada@example.com", "phone": None, "country": "GB"},
                                 "company": {"name": "Acme"}, "attributes": {"plan": "pro"}}, "corr")

    def repeat(contact=None, company=None, attributes=None) -> dict:
        return {"contact": contact or {"email": "ada@example.com"}, "company": company or {}, "intent": {},
                "attributes": attributes or {}}

    assert not brings_news(lead, repeat())  # the same record, or less of it
    assert not brings_news(lead, repeat(company={"name": "Acme"}, attributes={"plan": "pro"}))
    assert brings_news(lead, repeat({"email": "ada@example.com", "phone": "+442079460958"}))  # a phone it lacked
    assert brings_news(lead, repeat({"email": "ada@new.example"}))
    assert brings_news(lead, repeat(company={"name": "Acme Ltd"}))
    assert brings_news(lead, repeat(attributes={"plan": "enterprise"}))


def test_an_update_folds_changed_paths_notes_tier_and_missing_fields_into_the_record() -> None:
    record = {"contact": {"phone": "n/a"}, "attributes": {}, "tier": "C", "contactable": True,
              "missing_fields": ["contact.phone"],
              "data_quality": [{"field": "contact.phone", "message": "unreadable", "value": "n/a"},
                               {"field": "contact.timezone", "message": "unknown", "value": "Mars"}]}
    update = {"changed": {"contact.phone": {"old": "n/a", "new": "+14155550100"},
                          "attributes.utm.source": {"old": None, "new": "ads"}, "score": {"old": None, "new": 42}},
              "tier": "A", "contactable": True, "missing_fields": [],
              "data_quality": [{"field": "company.country", "message": "unknown", "value": "Atlantis"}]}
    folded = updated_record(record, update)
    assert folded["contact"] == {"phone": "+14155550100"} and folded["attributes"] == {"utm.source": "ads"}
    assert folded["score"] == 42 and folded["tier"] == "A" and folded["missing_fields"] == []
    assert [q["field"] for q in folded["data_quality"]] == ["contact.timezone", "company.country"]
    assert record["contact"] == {"phone": "n/a"}  # the input is left as it was
    upgrade = updated_record(folded, {"changed": {"intent": {"old": None, "new": {"type": "demo_request"}}},
                                      "tier": "A", "contactable": False})
    assert upgrade["intent"] == {"type": "demo_request"} and upgrade["missing_fields"] == []
    assert upgrade["contactable"] is False


@pytest.mark.parametrize(("sent", "occurred_at", "warning"), [
    ("2026-11-26T14:05:00Z", "2026-11-26T14:05:00+00:00", None),
    ("2026-11-26T09:05:00-05:00", "2026-11-26T14:05:00+00:00", None),
    # A CRM's local time: read in the source's zone, as a lead's submitted_at is.
    ("2026-11-26 09:05:00", "2026-11-26T14:05:00+00:00", "has no UTC offset; read in the source's time zone"),
    ("11/26/2026 09:05", "2026-11-26T14:05:00+00:00", "has no UTC offset"),
    (1795701900000, "2026-11-26T14:05:00+00:00", None),  # Unix milliseconds (HubSpot)
    ("1795701900", "2026-11-26T14:05:00+00:00", None),
    ("last tuesday", None, "is not a timestamp; kept in attributes"),  # dated when accepted
])
def test_an_activity_s_time_is_read_in_any_common_spelling_and_never_refuses_it(sent, occurred_at, warning) -> None:
    activity = ActivityIn.model_validate({"type": "call", "occurred_at": sent})
    warnings = activity.warnings("America/New_York")
    dated = activity.dated("America/New_York")
    assert (dated.occurred_at.astimezone(UTC).isoformat() if dated.occurred_at else None) == occurred_at
    assert [w["message"] for w in warnings if w["field"] == "occurred_at" and warning in w["message"]] \
        if warning else warnings == []
    assert dated.attributes() == ({"occurred_at": sent} if occurred_at is None else {})


@pytest.mark.parametrize(("sent", "type_"), [
    ("Call", "call"), ("Phone Call", "call"), ("E-mail", "email"), ("Text Message", "sms"), ("opt out", "opt_out"),
    ("Unsubscribe", "opt_out"), ("Live Chat", "chat"), ("meeting", "meeting"),
])
def test_activity_types_are_read_in_the_spellings_crms_use(sent: str, type_: str) -> None:
    assert ActivityIn.model_validate({"type": sent}).type == type_


@pytest.mark.parametrize(("sent", "outcome"), [
    ("EMAIL_OPEN", "opened"), ("Email Opened", "opened"), ("email_click", "clicked"), ("Email Link Click", "clicked"),
])
def test_open_and_click_tracking_is_an_email_with_that_outcome_not_a_422(sent: str, outcome: str) -> None:
    """Engagement tools post opens and clicks as activity types of their own: they were refused
    (422 naming the type); they are emails whose outcome the SLA policies do not count as a touch."""
    activity = ActivityIn.model_validate({"type": sent, "occurred_at": "2026-11-26T14:05:00Z"})
    assert (activity.type, activity.outcome) == ("email", outcome)
    assert ActivityIn.model_validate({"type": "email", "outcome": "Opened"}).outcome == "opened"


@pytest.mark.parametrize(("sent", "zone"), [("0001-01-01 00:30", "Europe/Berlin"),
                                            ("9999-12-31 23:00", "America/Los_Angeles")])
def test_a_local_occurred_at_that_its_source_s_zone_takes_outside_the_years_1_to_9999_is_kept_as_sent(
        sent: str, zone: str) -> None:
    """Read in the source's zone, a local time at the calendar's edge has no instant in UTC: the
    touch answered 500 (OverflowError putting it on the wire) or 422 'in the future', and was lost.
    Like any unreadable occurred_at it is kept under attributes, named in warnings, and the touch
    dated when intake accepts it."""
    activity = ActivityIn.model_validate({"type": "call", "occurred_at": sent})
    assert [w["field"] for w in activity.warnings(zone)] == ["occurred_at"]
    assert "kept in attributes" in activity.warnings(zone)[0]["message"]
    dated = activity.dated(zone)
    assert dated.occurred_at is None and dated.attributes() == {"occurred_at": sent}
    # A local time with an instant in UTC is read in the zone, as before.
    assert ActivityIn.model_validate({"type": "call", "occurred_at": "2026-11-17 08:30"}).dated(
        zone).occurred_at.utcoffset() is not None


def test_an_upgrade_names_each_changed_intent_field_as_a_patch_does() -> None:
    from services.intake.domain import upgrade
    from shared.config import parse_config
    tiers = parse_config("tiers: {default: C, rules: [{tier: A, when: {intent: [demo_request]}}]}").tiers
    lead = KnownLead(lead_id="l1", source="web", tier="C", correlation_id="c",
                     record={"intent": {"type": "content_download", "message": None, "product": None}})
    update = upgrade(lead, {"type": "demo_request", "product": "cloud"}, "A", tiers)
    assert update.changed == {"intent.product": {"old": None, "new": "cloud"},
                              "intent.type": {"old": "content_download", "new": "demo_request"},
                              "tier": {"old": "C", "new": "A"}}


@pytest.mark.parametrize("extra", [
    {"crm_note": "a\x00b"}, {"crm": {"id": "\ud800"}}, {"\x00key": 1}, {"big": 2**80}, {"ratio": float("nan")},
    {"disposition": {"status": "disqualified", "crm_code": "x\x00"}},
], ids=["nul", "lone-surrogate", "nul-in-name", "huge-int", "nan", "in-disposition"])
def test_an_activity_s_unknown_fields_are_kept_storable_not_refused(extra: dict) -> None:
    """Found by fuzzing: an unknown field with a NUL, a lone surrogate or an integer past 64 bits
    reached the insert as it was, and the touch was lost to a 500."""
    body = {"type": "call", **extra}
    if "disposition" in extra:
        body = {"type": "disposition", "disposition": extra["disposition"]}
    kept = ActivityIn.model_validate(body).attributes()
    assert storable(kept) == kept
    assert orjson.loads(orjson.dumps(kept)) == kept  # what the jsonb column gets back, unchanged
    assert kept.keys() == {clean_text(k) for k in (extra if "disposition" not in extra else {"disposition": 1})}


def test_a_contact_country_kept_as_sent_gives_way_to_the_company_s_for_tiering() -> None:
    """'Deutchland' (kept as sent, with a warning) hid the company's DE from a tier rule on countries."""
    config = parse_config("tiers: {default: C, rules: [{tier: A, when: {countries: [DE]}}]}")
    sub = read_submission({"contact": {"email": "a@b.example", "country": "Deutchland"}, "company": {"country": "DE"}},
                          config.intake.source("web"))
    assert classify_tier(sub, "web", config.tiers) == "A"


def test_a_suppressed_phone_written_as_people_write_numbers_suppresses_the_lead() -> None:
    # Leads' phones are compared in E.164; the file's were compared as written, so "+1 (415)
    # 555-2671" suppressed nobody and a do-not-contact number was routed and called.
    config = parse_config("intake:\n  default_region: GB\n"
                          "  suppression: {phones: ['+1 (415) 555-2671', '020 7946 0018', 0044 20 7946 0019]}\n")
    suppression = config.intake.suppression
    for phone in ("+14155552671", "+442079460018", "+442079460019"):
        assert not is_contactable(submission(contact={"phone": phone}), suppression), phone
    assert is_contactable(submission(contact={"phone": "+442079460020"}), suppression)


def test_a_suppressed_phone_is_read_as_intake_reads_the_lead_s() -> None:
    # In a US file, '0044 20 7946 0958' was read as a US national number (+100442079460958) while a
    # US form's lead with the same digits is +442079460958: the do-not-contact number suppressed
    # nobody. '+0044 ...' (accepted on leads) refused the whole file.
    config = parse_config("intake:\n  default_region: US\n"
                          "  suppression: {phones: ['0044 20 7946 0958', '+0044 20 7946 0959']}\n")
    us_forms = config.intake.source("web")
    for typed in ("0044 20 7946 0958", "+44 20 7946 0959"):
        lead = read_submission({"contact": {"email": "a@b.example", "phone": typed}}, us_forms)
        assert not is_contactable(lead, config.intake.suppression), typed


@pytest.mark.parametrize(("sent", "outcome"), [
    # Call results as HubSpot, Salesloft and Outreach name them.
    ({"type": "call", "outcome": "Answered"}, "connected"), ({"type": "call", "outcome": "Left Voicemail"}, "voicemail"),
    ({"type": "call", "outcome": "Left VM"}, "voicemail"), ({"type": "call", "outcome": "Not Answered"}, "no_answer"),
    ({"type": "call", "outcome": "Bad Number"}, "wrong_number"),
    # Meeting outcomes as HubSpot names them (SCHEDULED, COMPLETED, CANCELED).
    ({"type": "meeting", "outcome": "SCHEDULED"}, "booked"), ({"type": "meeting", "outcome": "Completed"}, "held"),
    ({"type": "meeting", "outcome": "Attended"}, "held"), ({"type": "meeting", "outcome": "noshow"}, "no_show"),
    ({"type": "meeting", "outcome": "CANCELED"}, "cancelled"),
    ({"type": "email", "outcome": "Reply"}, "replied"), ({"type": "email", "outcome": "Hard Bounce"}, "bounced"),
])
def test_outcomes_are_read_in_the_spellings_crms_use(sent: dict, outcome: str) -> None:
    """A HubSpot meeting COMPLETED or a Salesloft "Left Voicemail" call was kept as sent: a policy
    counting `{type: call, outcomes: [connected]}` missed an answered call, and a SCHEDULED meeting
    did not end the cadence as booked."""
    activity = ActivityIn.model_validate(sent)
    assert activity.outcome == outcome and activity.warnings("UTC") == []


def test_an_outcome_no_policy_can_name_is_kept_and_named_in_the_warnings() -> None:
    """Kept as sent (it never refuses the touch), and said, so an integrator sees a misspelt
    outcome at once instead of a touch that no policy counts."""
    activity = ActivityIn.model_validate({"type": "call", "outcome": "left a note"})
    assert activity.outcome == "left a note"
    [warning] = activity.warnings("UTC")
    assert warning["field"] == "outcome" and "connected" in warning["message"]
    assert ActivityIn.model_validate({"type": "note", "outcome": "anything"}).warnings("UTC") == []


@pytest.mark.parametrize(("sent", "type_", "outcome"), [
    ("Outbound Call", "call", None), ("Logged Call", "call", None), ("Inbound Call", "call", None),
    ("Emails", "email", None), ("Email Sent", "email", None), ("Notes", "note", None), ("Meetings", "meeting", None),
    ("Appointment", "meeting", None), ("Meeting Booked", "meeting", "booked"), ("Meeting Completed", "meeting", "held"),
    ("Voicemail", "call", "voicemail"), ("Email Reply", "email", "replied"), ("SMS Message", "sms", None),
    ("Snooze", "pause", None), ("Unpause", "resume", None), ("Opted Out", "opt_out", None),
])
def test_more_activity_types_are_read_in_the_spellings_crms_use(sent: str, type_: str, outcome: str | None) -> None:
    """These were 422 naming `type`: the touch was lost and the SLA breached for a call made."""
    activity = ActivityIn.model_validate({"type": sent})
    assert (activity.type, activity.outcome) == (type_, outcome)


def test_numeric_ids_of_a_crm_are_read_as_text_as_a_lead_s_external_id_is() -> None:
    """HubSpot's engagement and owner ids are numbers: a touch with `external_id: 9123456` or
    `actor: 51234` was a 422 naming the field and lost, though a lead's numeric external_id is read."""
    activity = ActivityIn.model_validate({"type": "call", "external_id": 9123456, "actor": 51234,
                                         "disposition": {"status": 3, "reason": 7}, "occurred_at": 1795701900})
    assert (activity.external_id, activity.actor) == ("9123456", "51234")
    assert (activity.disposition.status, activity.disposition.reason) == ("3", "7")
    assert activity.occurred_at == datetime(2026, 11, 26, 14, 5, tzinfo=UTC)
    with pytest.raises(ValidationError, match="actor"):
        ActivityIn.model_validate({"type": "call", "actor": True})


def test_a_call_s_disposition_as_text_is_kept_not_a_reason_to_refuse_the_call() -> None:
    """Salesloft and Outreach name a call's result its `disposition` ("Connected"): the call was a
    422 naming `disposition` and lost. It is kept in attributes, said in the warnings; a
    disposition activity's text is its status."""
    call = ActivityIn.model_validate({"type": "call", "disposition": "Connected", "outcome": "connected"})
    assert call.disposition is None and call.attributes() == {"disposition": "Connected"}
    assert [w["field"] for w in call.warnings("UTC")] == ["disposition"]
    closed = ActivityIn.model_validate({"type": "Disposition", "disposition": "Qualified"})
    assert closed.disposition.status == "Qualified" and closed.attributes() == {}
    with pytest.raises(ValidationError, match="disposition"):
        ActivityIn.model_validate({"type": "disposition", "disposition": ["x"]})


def test_an_activity_s_fields_in_a_crm_s_spelling_are_read() -> None:
    """'occurredAt' was kept in attributes and the touch dated when intake took it: a call made
    before the deadline and sent late counted as late."""
    activity = ActivityIn.model_validate({"Activity Type": "Call", "occurredAt": "2026-11-17T09:03:00Z",
                                          "ownerId": "alice", "callResult": "No Answer", "id": 42,
                                          "timestamp": "2026-11-17T09:10:00Z"})
    assert (activity.type, activity.actor, activity.outcome, activity.external_id) == (
        "call", "alice", "no_answer", "42")
    assert activity.occurred_at == datetime(2026, 11, 17, 9, 3, tzinfo=UTC)
    assert activity.attributes() == {"timestamp": "2026-11-17T09:10:00Z"}  # a second spelling: kept as sent


def test_an_actor_named_by_an_owner_s_email_is_that_owner() -> None:
    """HubSpot and Salesloft name the rep by email: `touch_actors: owner` and the routing report
    compared it with the owner id and never matched."""
    config = parse_config("owners: [{id: alice, email: Alice@Example.com}, {id: bob}]")
    assert actor_id("alice@example.COM ", config) == "alice"
    assert actor_id("carol@example.com", config) == "carol@example.com"
    assert actor_id("bob", config) == "bob" and actor_id(None, config) is None


def test_a_local_occurred_at_that_its_source_s_zone_puts_in_the_future_is_warned_as_kept_not_as_read() -> None:
    """08:09 without an offset, sent at 08:10 UTC by a New York source: read there it is 13:09
    UTC, in the future, so the touch is dated when accepted and the time kept in attributes; the
    warning said it was read in New York's zone."""
    activity = ActivityIn.model_validate({"type": "call", "occurred_at": "2026-11-27T08:09:12"})
    latest = datetime(2026, 11, 27, 8, 15, tzinfo=UTC)  # accepted at 08:10, five minutes' tolerance
    [warning] = activity.warnings("America/New_York", latest=latest)
    assert warning["field"] == "occurred_at" and "future; kept in attributes" in warning["message"]
    kept = activity.dated("America/New_York").undated_if_after(latest)
    assert kept.occurred_at is None and kept.attributes() == {"occurred_at": "2026-11-27T08:09:12"}
    # Read in London's zone it is in the past: read so, as the warning says.
    [read] = activity.warnings("Europe/London", latest=latest)
    assert read["message"] == "has no UTC offset; read in the source's time zone Europe/London"


def test_intake_beats_only_while_every_raw_topic_consumer_is_caught_up() -> None:
    from services.intake.domain import raw_topics_taken_in
    assert raw_topics_taken_in([100.0, 101.5], now=102.0, within=2.0)
    assert not raw_topics_taken_in([100.0, 97.0], now=102.0, within=2.0)  # one behind a backlog for 5 s
    assert not raw_topics_taken_in([None, 101.0], now=102.0, within=2.0)  # one not fetching yet since its start
    assert raw_topics_taken_in([], now=102.0, within=2.0)  # no raw consumers (a test's intake): nothing to wait for
