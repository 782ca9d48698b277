import pytest
from pydantic import ValidationError

from leadsla.services.intake.domain import (
    ActivityIn,
    DispositionIn,
    LeadSubmission,
    classify_tier,
    disposition_problem,
    identity_keys,
    missing_fields,
)
from leadsla.shared.config import parse_config

TIERS = parse_config("""
tiers:
  default: C
  rules:
    - {tier: A, when: {intent: [demo_request]}}
    - {tier: B, when: {min_score: 70}}
    - {tier: B, when: {source: [partner], countries: [DE]}}
""").tiers


def submission(**overrides) -> LeadSubmission:
    body = {"contact": {"email": "ada@example.com"}, "intent": {"type": "newsletter"}, **overrides}
    return LeadSubmission.model_validate(body)


def bad_fields(**overrides) -> set[str]:
    with pytest.raises(ValidationError) as info:
        submission(**overrides)
    return {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_contact_data_is_normalized() -> None:
    sub = submission(contact={"email": " Ada.Lovelace@Example.COM ", "phone": "030 1234567", "country": "Germany"})
    assert sub.contact.email == "ada.lovelace@example.com"
    assert sub.contact.country == "DE"
    assert sub.contact.phone == "+49301234567"
    assert sub.contact.timezone == "Europe/Berlin"  # inferred from the phone


@pytest.mark.parametrize(("given", "code"), [("de", "DE"), ("DEU", "DE"), ("United Kingdom", "GB"), ("uk", "GB")])
def test_countries_become_iso_codes(given: str, code: str) -> None:
    assert submission(contact={"email": "a@example.com", "country": given}).contact.country == code


def test_international_phone_needs_no_country() -> None:
    assert submission(contact={"phone": "+1 415 555 2671"}).contact.phone == "+14155552671"


@pytest.mark.parametrize(
    ("contact", "field"),
    [
        ({"email": "not-an-email"}, "contact.email"),
        ({"phone": "12"}, "contact.phone"),
        ({"email": "a@example.com", "country": "Atlantis"}, "contact.country"),
        ({"email": "a@example.com", "timezone": "Mars/Base"}, "contact.timezone"),
        ({"first_name": "Ada"}, "contact"),  # neither email nor phone
    ],
)
def test_bad_contact_fields_are_named(contact: dict, field: str) -> None:
    assert field in bad_fields(contact=contact)


def test_unknown_top_level_fields_are_refused() -> None:
    assert "emial" in bad_fields(emial="x")


def test_submitted_at_needs_an_offset() -> None:
    assert "submitted_at" in bad_fields(submitted_at="2026-11-22T10:00:00")


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
    assert disposition_problem(DispositionIn(status=status, reason=reason), REASONS) == problem


def test_a_disposition_activity_needs_its_disposition() -> None:
    with pytest.raises(ValidationError, match="disposition"):
        ActivityIn.model_validate({"type": "disposition"})


def test_blank_fields_from_forms_mean_not_given() -> None:
    sub = submission(external_id="  ", contact={"email": "a@example.com", "phone": "", "country": ""})
    assert sub.external_id is None and sub.contact.phone is None and sub.contact.country is None


@pytest.mark.parametrize("text", ["nul\x00byte", "lone \ud800 surrogate"])
def test_text_postgres_cannot_store_is_refused_by_field(text: str) -> None:
    assert "intent.message" in bad_fields(intent={"type": "trial", "message": text})
    assert "custom_fields" in bad_fields(custom_fields={"note": [text]})
