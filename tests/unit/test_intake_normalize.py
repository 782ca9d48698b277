"""Lenient intake: each normalization rule table-tested, then realistic payloads as real senders
(form builders, chat widgets, webinar tools, lead-ad platforms, CRM imports) send them."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.intake.normalize import (
    Refused,
    classify_intent,
    flawed,
    normalize_country,
    normalize_language,
    normalize_size,
    normalize_timezone,
    parse_number,
    parse_timestamp,
    read_submission,
)
from shared.config import IntakeSource
from shared.phones import normalize_phone

US_FORMS = IntakeSource(default_region="US", timezone="America/New_York", default_intent="inquiry")
NO_DEFAULTS = IntakeSource(default_intent="inquiry", timezone="UTC")


@pytest.mark.parametrize(
    ("given", "code"),
    [("de", "DE"), ("DEU", "DE"), ("Germany", "DE"), ("Deutschland", "DE"), ("deutschland ", "DE"),
     ("United Kingdom", "GB"), ("uk", "GB"), ("U.K.", "GB"), ("Great Britain", "GB"), ("England", "GB"),
     ("USA", "US"), ("U.S.A.", "US"), ("United States of America", "US"), ("España", "ES"),
     ("Espana", "ES"), ("Österreich", "AT"), ("Schweiz", "CH"), ("Suisse", "CH"), ("Nederland", "NL"),
     ("Holland", "NL"), ("Brasil", "BR"), ("México", "MX"), ("日本", "JP"), ("中国", "CN"),
     ("South Korea", "KR"), ("Russia", "RU"), ("Czech Republic", "CZ"), ("Türkiye", "TR"),
     ("Turkey", "TR"), ("UAE", "AE"), ("Ivory Coast", "CI"), ("Polska", "PL"), ("Italia", "IT")],
)
def test_countries_are_read_from_codes_names_and_own_language_names(given: str, code: str) -> None:
    assert normalize_country(given) == code


@pytest.mark.parametrize("given", ["Atlantis", "Europe", "xx"])
def test_unknown_countries_are_named(given: str) -> None:
    with pytest.raises(ValueError):
        normalize_country(given)


@pytest.mark.parametrize(
    ("given", "region", "e164", "extension"),
    [("+1 415 555 2671", None, "+14155552671", None), ("(415) 555-2671", "US", "+14155552671", None),
     ("415.555.2671 x204", "US", "+14155552671", "204"), ("+1-415-555-2671 ext. 12", None, "+14155552671", "12"),
     ("030 1234567", "DE", "+49301234567", None), ("0049 30 1234567", None, "+49301234567", None),
     ("020 7946 0958", "GB", "+442079460958", None), ("+44 (0)20 7946 0958", None, "+442079460958", None)],
)
def test_phones_become_e164_with_extensions_kept(given: str, region: str | None, e164: str,
                                                 extension: str | None) -> None:
    phone = normalize_phone(given, region)
    assert (phone.e164, phone.extension) == (e164, extension)


@pytest.mark.parametrize(("given", "region"), [("415 555 2671", None), ("12", "US"), ("call me", "US")])
def test_phones_that_cannot_be_read_are_named(given: str, region: str | None) -> None:
    with pytest.raises(ValueError):
        normalize_phone(given, region)


@pytest.mark.parametrize(
    ("given", "tag"),
    [("en", "en"), ("EN", "en"), ("en-us", "en-US"), ("en_US", "en-US"), ("EN-gb", "en-GB"),
     ("zh_CN", "zh-CN"), ("zh-hans-cn", "zh-Hans-CN"), ("de_DE.UTF-8", "de-DE"), ("es-419", "es-419"),
     ("English", "en"), ("german", "de"), ("Deutsch", "de"), ("Français", "fr"), ("eng", "en")],
)
def test_language_tags_in_any_common_spelling(given: str, tag: str) -> None:
    assert normalize_language(given) == tag


@pytest.mark.parametrize(
    ("given", "zone"),
    [("Europe/Berlin", "Europe/Berlin"), ("europe/berlin", "Europe/Berlin"), ("PST", "America/Los_Angeles"),
     ("EST", "America/New_York"), ("CET", "Europe/Paris"), ("IST", "Asia/Kolkata"), ("UTC", "UTC"),
     ("GMT", "UTC"), ("Eastern Time (US & Canada)", "America/New_York"), ("UTC+2", "Etc/GMT-2"),
     ("GMT-05:00", "Etc/GMT+5"), ("Berlin", "Europe/Berlin"), ("Pacific Standard Time", "America/Los_Angeles")],
)
def test_time_zones_from_iana_names_and_common_abbreviations(given: str, zone: str) -> None:
    assert normalize_timezone(given) == zone


@pytest.mark.parametrize(
    ("given", "band", "employees", "low", "high"),
    [(250, "201-500", 250, 201, 500), ("250", "201-500", 250, 201, 500), ("1,200", "1001-5000", 1200, 1001, 5000),
     ("201-500", "201-500", None, 201, 500), ("201 - 500 employees", "201-500", None, 201, 500),
     ("1,001-5,000", "1001-5000", None, 1001, 5000), ("10k+", "10000+", None, 10000, None),
     ("500+", "500+", None, 500, None), ("<10", "1-9", None, 1, 9), ("20000", "10001+", 20000, 10001, None),
     ("Self-employed", "1-10", 1, 1, 10)],
)
def test_company_size_as_a_number_or_a_band_becomes_both(given: Any, band: str, employees: int | None,
                                                         low: int, high: int | None) -> None:
    size = normalize_size(given)
    assert (size.band, size.employees, size.low, size.high) == (band, employees, low, high)


@pytest.mark.parametrize(("given", "number"), [(85, 85.0), ("85", 85.0), (" 85.5 ", 85.5), ("85%", 85.0),
                                               ("8,5", 8.5), ("1,200", 1200.0)])
def test_scores_may_be_numeric_strings(given: Any, number: float) -> None:
    assert parse_number(given) == number


@pytest.mark.parametrize("given", ["high", True, "", None, "nan"])
def test_non_numbers_are_not_scores(given: Any) -> None:
    with pytest.raises(ValueError):
        parse_number(given)


@pytest.mark.parametrize(
    ("given", "utc", "assumed"),
    [("2026-11-22T10:00:00Z", "2026-11-22T10:00:00", False),
     ("2026-11-22T10:00:00+01:00", "2026-11-22T09:00:00", False),
     ("2026-11-22T10:00:00", "2026-11-22T15:00:00", True),
     ("2026-11-22 10:00:00", "2026-11-22T15:00:00", True),
     ("11/22/2026 10:00 AM", "2026-11-22T15:00:00", True),
     ("Sun, 22 Nov 2026 10:00:00 +0000", "2026-11-22T10:00:00", False),
     (1795341600, "2026-11-22T10:00:00", False), (1795341600000, "2026-11-22T10:00:00", False),
     # A zone named after the time, as Rails ("... UTC") and many exports write it: no assumption.
     ("2026-11-22 10:00:00 UTC", "2026-11-22T10:00:00", False),
     ("2026-11-22 10:00 PST", "2026-11-22T18:00:00", False),
     ("11/22/2026 10:00 AM Europe/Berlin", "2026-11-22T09:00:00", False)],
)
def test_timestamps_without_an_offset_are_read_in_the_sources_zone(given: Any, utc: str, assumed: bool) -> None:
    parsed, was_assumed = parse_timestamp(given, "America/New_York")
    assert parsed.astimezone(UTC).replace(tzinfo=None).isoformat() == utc and was_assumed is assumed


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("demo_request", "demo_request"), ("Demo Request", "demo_request"), ("DEMO-REQUEST", "demo_request"),
     ("  demo  request ", "demo_request"), ("Request a demo", "demo_request"), ("Book a Demo!", "demo_request"),
     ("Website - Demo Request Form", "demo_request"), ("Contact Sales", "contact_sales"),
     ("Talk to sales", "contact_sales"), ("Free Trial", "trial"), ("Whitepaper download", "content_download"),
     ("eBook", "content_download"), ("Webinar Registration", "webinar"), ("Newsletter", "newsletter"),
     ("Get a quote", "quote_request"), ("something else", None)],
)
def test_intent_types_match_case_and_space_insensitively(given: str, canonical: str | None) -> None:
    assert classify_intent(given) == canonical


def test_configured_intent_aliases_come_first() -> None:
    aliases = {"demo_request": ["Hand raiser"], "partner": ["Become a partner"]}
    assert classify_intent("hand-raiser", aliases) == "demo_request"
    assert classify_intent("Become a Partner", aliases) == "partner"


# ---- whole submissions ----------------------------------------------------------------------

EMAIL = "ada@example.com"


def read(body: Any, source: IntakeSource = US_FORMS):
    return read_submission(body, source)


def dig(sub, path: str) -> Any:
    value: Any = sub.snapshot()
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@pytest.mark.parametrize(
    "body",
    [[], "lead", 42, None, {}, {"contact": {"first_name": "Ada"}}, {"contact": {"email": "nope", "phone": "12"}},
     {"contact": None, "company": {"name": "Acme"}}, {"contact": {"email": "ada@", "phone": "call me"}}],
)
def test_only_a_non_object_or_a_lead_without_usable_email_or_phone_is_refused(body: Any) -> None:
    with pytest.raises(Refused) as info:
        read(body)
    assert info.value.errors[0]["field"] in ("(body)", "contact")


def test_refusals_name_the_unusable_fields() -> None:
    with pytest.raises(Refused) as info:
        read({"contact": {"email": "nope", "phone": "12"}})
    assert {e["field"] for e in info.value.errors} == {"contact", "contact.email", "contact.phone"}


@pytest.mark.parametrize(("sent", "kept"), [
    ('"john doe"@example.com', '"john doe"@example.com'), ('"J.R."@Example.com', '"j.r."@example.com'),
    ('"ada"@example.com', "ada@example.com"),  # quotes nothing needs: the plain address
])
def test_a_quoted_local_part_is_a_usable_email_not_a_refusal(sent: str, kept: str) -> None:
    """Found by fuzzing: '"john doe"@example.com' is deliverable, but a lead with it alone was refused."""
    sub = read({"contact": {"email": sent}})
    assert sub.contact.email == kept and sub.warnings == []
    assert read({"contact": {"email": kept}}).contact.email == kept  # read again, unchanged


def test_unknown_fields_at_any_level_are_kept_verbatim_under_attributes() -> None:
    sub = read({"contact": {"email": EMAIL, "linkedin": {"url": "x", "n": [1, 2]}}, "company": {"name": "A", "ticker": "ACME"},
                "intent": {"type": "trial", "campaign_id": 7}, "utm_source": "google", "source": "typeform",
                "attributes": {"plan": "pro"}, "custom_fields": {"q1": "yes"}})
    assert sub.attributes == {
        "contact": {"linkedin": {"url": "x", "n": [1, 2]}}, "company": {"ticker": "ACME"},
        "intent": {"campaign_id": 7}, "utm_source": "google", "source": "typeform", "plan": "pro", "q1": "yes",
    }
    assert sub.warnings == []


@pytest.mark.parametrize(("body", "kept"), [
    # A second spelling of a flat field: the first is used, the second kept.
    ({"email": EMAIL, "E-Mail": "ada@work.example"}, {"E-Mail": "ada@work.example"}),
    # A flat field beside the nested object's: the nested one is used, the flat one kept.
    ({"contact": {"email": EMAIL}, "email": "ada@work.example"}, {"email": "ada@work.example"}),
    ({"contact": {"email": EMAIL, "name": "Ada Lovelace"}, "full_name": "Augusta Ada King"},
     {"full_name": "Augusta Ada King"}),
    # A top-level field and a custom field of the same name: both kept, the second suffixed.
    ({"contact": {"email": EMAIL}, "plan": "pro", "custom_fields": {"plan": "team"}}, {"plan": "pro", "plan_2": "team"}),
    ({"contact": {"email": EMAIL}, "attributes": {"contact": "crm-7"}, "Contact": {"x": 1}},
     {"contact": "crm-7", "Contact": {"x": 1}}),
    ({"contact": {"email": EMAIL, "linkedin": "in/ada"}, "custom_fields": {"contact": "crm-7"}},
     {"contact": "crm-7", "contact_2": {"linkedin": "in/ada"}}),
    # Objects of the same name merge; an equal value is kept once.
    ({"contact": {"email": EMAIL}, "utm": {"source": "ads"}, "custom_fields": {"utm": {"medium": "cpc"}, "x": 1},
      "attributes": {"x": 1}}, {"utm": {"source": "ads", "medium": "cpc"}, "x": 1}),
    # The same value twice is not a conflict.
    ({"contact": {"email": EMAIL}, "email": " ada@example.com "}, {}),
], ids=["flat-twice", "flat-and-nested", "name-flat-and-nested", "top-and-custom", "custom-and-top-object",
        "custom-and-section", "objects-merge", "same-value"])
def test_a_value_given_twice_is_kept_not_dropped(body: dict, kept: dict) -> None:
    """Found by fuzzing: a second spelling of a field, a flat field beside the nested one, or a custom
    field named like a top-level one was dropped (or overwrote the other) without a trace."""
    assert read(body).attributes == kept


@pytest.mark.parametrize("size", ["9" * 400 + "k", "9" * 310 + "m", "1" + "0" * 30, "1" + "0" * 30 + " - " + "9" * 31,
                                  10**30, "over " + "9" * 40, float("inf"), float("nan")],
                         ids=["400-digit-k", "310-digit-m", "30-digit", "30-digit-band", "int-10e30", "over-40-digits",
                              "inf", "nan"])
def test_a_company_size_past_any_head_count_is_kept_as_sent_not_a_crash(size: Any) -> None:
    """Found by fuzzing: '999…k' (400 digits) raised OverflowError (a 500, the lead lost), and a
    30-digit count became an `employees` integer past 64 bits that the store could not write."""
    sub = read({"contact": {"email": EMAIL}, "company": {"size": size}})
    assert [w["field"] for w in sub.warnings] == ["company.size"]
    assert sub.company.employees is None and sub.company.employees_min is None
    orjson.dumps(sub.snapshot())  # as the event store writes it


@pytest.mark.parametrize(("contact", "email", "phone"), [
    ({"email": "n/a", "work_email": "ada@acme.com"}, "ada@acme.com", None),
    ({"E-Mail": False, "email": "Ada@Example.com"}, "ada@example.com", None),
    ({"phone": "see below", "mobile": "+1 415 555 2671"}, None, "+14155552671"),
    ({"phone": "", "tel": None, "mobile": ["n/a"], "cell": "+44 20 7946 0958"}, None, "+442079460958"),
], ids=["email-na", "email-false", "phone-words", "phone-fourth"])
def test_a_usable_email_or_phone_under_another_spelling_is_read_before_a_junk_one(contact, email, phone) -> None:
    """Found by fuzzing: the first spelling was used even when it held no address ('n/a', false)
    and the usable one under a second spelling was only kept: a lead giving only those was refused."""
    sub = read({"contact": contact})
    assert (sub.contact.email, sub.contact.phone) == (email, phone)
    assert sub.warnings == []


@pytest.mark.parametrize(("body", "email", "phone", "kept"), [
    ({"email": "ada@acme.com", "contact": {"email": "n/a"}}, "ada@acme.com", None, {"contact": {"email": "n/a"}}),
    ({"Work_Email": "Ada@Acme.com", "contact": {"E-Mail": False, "mail": "-"}}, "ada@acme.com", None,
     {"contact": {"E-Mail": False, "mail": "-"}}),
    ({"phone": "+1 415 555 2671", "contact": {"email": "n/a", "tel": "none"}}, "n/a", "+14155552671",
     {"contact": {"tel": "none"}}),
    # Both usable: the nested object's value is used, the flat one kept (as before).
    ({"email": "ada@acme.com", "contact": {"email": "ada@home.example"}}, "ada@home.example", None,
     {"email": "ada@acme.com"}),
], ids=["email-na", "email-all-junk", "phone-words", "both-usable"])
def test_a_usable_flat_email_or_phone_is_read_before_junk_in_the_contact(body, email, phone, kept) -> None:
    """Found by fuzzing: a usable flat top-level email lost to junk under `contact` (the nested
    value always won), and the lead was refused. The junk is kept in attributes."""
    sub = read(body)
    assert (sub.contact.email, sub.contact.phone) == (email, phone)
    assert sub.attributes == kept


def test_a_missing_intent_takes_the_sources_default() -> None:
    source = IntakeSource(default_intent="webinar", timezone="UTC")
    assert read({"contact": {"email": EMAIL}}, source).intent.type == "webinar"
    assert read({"contact": {"email": EMAIL}, "intent": None}, US_FORMS).intent.type == "inquiry"


def test_national_phones_are_read_in_contact_then_company_then_source_country() -> None:
    assert read({"contact": {"phone": "030 1234567", "country": "DE"}, "company": {"country": "US"}}
                ).contact.phone == "+49301234567"
    assert read({"contact": {"phone": "030 1234567"}, "company": {"country": "Deutschland"}}
                ).contact.phone == "+49301234567"
    assert read({"contact": {"phone": "(415) 555-2671"}}).contact.phone == "+14155552671"
    kept = read({"contact": {"email": EMAIL, "phone": "(415) 555-2671"}}, NO_DEFAULTS)
    assert kept.contact.phone == "(415) 555-2671" and kept.warnings[0]["field"] == "contact.phone"


def test_text_postgres_cannot_store_is_cleaned_not_refused_and_named_in_the_warnings() -> None:
    """Postgres stores no NUL and no lone surrogate, so such text is cleaned, not kept as sent: the
    lead is taken, and its warnings and data quality say which fields were changed and how."""
    sub = read({"contact": {"email": EMAIL, "first_name": "A\x00da"}, "intent": {"message": "lone \ud800 x"},
                "crm\x00id": "7\x00", "tags": ["ok", "b\x00"]})
    assert sub.contact.first_name == "Ada" and sub.intent.message == "lone ? x"
    assert sub.attributes["crmid"] == "7" and sub.attributes["tags"] == ["ok", "b"]
    assert sub.warnings == [
        {"field": "contact.first_name", "message": "NUL characters removed"},
        {"field": "intent.message", "message": "characters that are not valid Unicode (lone surrogates) replaced with '?'"},
        {"field": "crmid", "message": "field name: NUL characters removed"},
        {"field": "crmid", "message": "NUL characters removed"},
        {"field": "tags[1]", "message": "NUL characters removed"},
    ]
    assert sub.data_quality[0] == {"field": "contact.first_name", "message": "NUL characters removed",
                                   "value": "Ada", "kept_as_sent": False}
    assert flawed(sub.issues) == set()  # cleaned text fills its field: not "kept as sent", not missing
    clean = read({"contact": {"email": EMAIL, "first_name": "Ada"}})
    assert clean.warnings == []


# Vendors' own webhook envelopes, as they send them (the contact nowhere the contract names it).
VENDOR_ENVELOPES = {
    "hubspot form": ({"submittedAt": "1732723200000", "context": {"pageUri": "https://x.example/demo"},
                      "fields": [{"name": "email", "value": "Ada.Lovelace@Example.com"},
                                 {"name": "firstname", "value": "Ada"}, {"name": "phone", "value": "+1 (415) 555-0132"}]},
                     "ada.lovelace@example.com", "+14155550132"),
    "hubspot properties": ({"objectId": 1234, "properties": {"email": {"value": "grace@hopper.io"},
                                                             "phone": {"value": "2025550143"}}},
                           "grace@hopper.io", "+12025550143"),
    "typeform": ({"event_type": "form_response", "form_response": {"answers": [
        {"type": "text", "text": "Linus", "field": {"ref": "first_name"}},
        {"type": "email", "email": "linus@kernel.org", "field": {"id": "f2", "ref": "9b1c"}},
        {"type": "phone_number", "phone_number": "+358401234567", "field": {"id": "f3"}}]}},
        "linus@kernel.org", "+358401234567"),
    "meta lead ads": ({"id": "444", "field_data": [{"name": "full_name", "values": ["Hedy Lamarr"]},
                                                   {"name": "email", "values": ["hedy@lamarr.at"]},
                                                   {"name": "phone_number", "values": ["+436641234567"]}]},
                      "hedy@lamarr.at", "+436641234567"),
    "google ads": ({"lead_id": "T", "user_column_data": [
        {"column_name": "User Email", "string_value": "barbara@mit.edu", "column_id": "EMAIL"},
        {"column_name": "User Phone", "string_value": "+16175550100", "column_id": "PHONE_NUMBER"}]},
        "barbara@mit.edu", "+16175550100"),
    "intercom": ({"topic": "contact.lead.created", "data": {"item": {"role": "lead", "email": "dorothy@vaughan.org"}}},
                 "dorothy@vaughan.org", None),
    "zoom": ({"event": "webinar.registration_created", "payload": {"object": {
        "host_email": "host@zoom.example", "registrant": {"email": "ida@rhodes.org"}}}}, "ida@rhodes.org", None),
    "pipedrive": ({"name": "P", "email": [{"value": "pd@x.com", "primary": True}]}, "pd@x.com", None),
}


@pytest.mark.parametrize("name", list(VENDOR_ENVELOPES))
def test_a_contact_inside_a_vendors_envelope_is_found_not_refused(name: str) -> None:
    """Found by an acceptance sweep: HubSpot, Typeform, Meta, Google Ads, Intercom, Zoom... post
    their own envelopes, and the contact's email and phone sat where no field name reached them:
    422, a lead lost at the edge. Before refusing, the envelope is searched (a field or a {name,
    value} pair whose name says email or phone), the whole body kept in attributes, and the
    warning names where each was found. Not a host's or an owner's email."""
    body, email, phone = VENDOR_ENVELOPES[name]
    sub = read(body)
    assert (sub.contact.email, sub.contact.phone) == (email, phone)
    assert {w["message"] for w in sub.warnings} >= {"read as contact.email; kept here too"}
    assert sub.attributes  # the envelope itself, kept


def test_an_envelope_with_only_someone_elses_email_or_several_people_is_still_refused() -> None:
    with pytest.raises(Refused):
        read({"data": {"note": "call back", "host_email": "host@zoom.example", "owner": {"email": "rep@crm.example"}}})
    with pytest.raises(Refused):  # two records: taking one would drop the other without a word
        read({"input": [{"email": "kathy@nasa.gov"}, {"email": "dorothy@nasa.gov"}], "action": "createOrUpdate"})


def test_huge_integers_are_kept_as_text() -> None:
    sub = read({"contact": {"email": EMAIL}, "crm_id": 10**30})
    assert sub.attributes["crm_id"] == str(10**30)


# Realistic payloads: (sender, source defaults, body, warned fields, expected normalized values).
REAL_SENDERS: list[tuple[str, IntakeSource, dict[str, Any], set[str], dict[str, Any]]] = [
    # -- form builders --
    ("typeform flat fields, camelCase", US_FORMS,
     {"firstName": "Ada", "lastName": "Lovelace", "email": "Ada@Example.com", "phoneNumber": "(415) 555-2671",
      "company": "Analytical Engines", "jobTitle": "CTO", "form_id": "abc123", "hidden": {"utm_source": "google"}},
     set(), {"contact.phone": "+14155552671", "contact.title": "CTO", "company.name": "Analytical Engines",
             "attributes.form_id": "abc123", "attributes.hidden": {"utm_source": "google"}}),
    ("hubspot-style form with US national phone and only the company's country", NO_DEFAULTS,
     {"contact": {"email": "bo@acme.com", "phone": "415-555-2671"}, "company": {"name": "Acme", "country": "US"},
      "intent": {"type": "Demo Request"}},
     set(), {"contact.phone": "+14155552671", "intent.type": "demo_request"}),
    ("webflow form with integer employee count and utm fields", US_FORMS,
     {"contact": {"email": "cy@corp.io"}, "company": {"name": "Corp", "size": 250},
      "utm_source": "linkedin", "utm_campaign": "q4", "intent": {"type": "contact_sales"}},
     set(), {"company.size": "201-500", "company.employees": 250, "attributes.utm_campaign": "q4"}),
    ("gravity forms with custom question answers", US_FORMS,
     {"contact": {"email": "dee@x.org", "first_name": "Dee"}, "intent": {"type": "Request a demo"},
      "questions": [{"q": "Budget?", "a": "$10k"}, {"q": "Timeline", "a": "Q1"}]},
     set(), {"intent.type": "demo_request", "attributes.questions": [{"q": "Budget?", "a": "$10k"},
                                                                    {"q": "Timeline", "a": "Q1"}]}),
    ("wordpress form with an unreadable optional phone next to a valid email", US_FORMS,
     {"contact": {"email": "ed@shop.com", "phone": "n/a"}, "intent": {"type": "pricing"}},
     {"contact.phone"}, {"contact.email": "ed@shop.com", "contact.phone": "n/a"}),
    ("german form with Deutschland and a national number", NO_DEFAULTS,
     {"contact": {"email": "fritz@firma.de", "phone": "030 1234567", "country": "Deutschland",
                  "language": "de-de"}, "intent": {"type": "Demo anfordern"}},
     set(), {"contact.country": "DE", "contact.phone": "+49301234567", "contact.language": "de-DE",
             "contact.timezone": "Europe/Berlin", "intent.type": "demo_request"}),
    ("form with en-us language tag and a time zone abbreviation", US_FORMS,
     {"contact": {"email": "gil@a.com", "language": "en-us", "timezone": "PST"}, "intent": "trial"},
     set(), {"contact.language": "en-US", "contact.timezone": "America/Los_Angeles", "intent.type": "trial"}),
    ("jotform with numeric-string score and blank optional fields", US_FORMS,
     {"contact": {"email": "hal@b.com", "phone": "", "country": ""}, "score": "85", "company": {"name": ""}},
     set(), {"score": 85.0, "contact.phone": None, "intent.type": "inquiry"}),
    ("form with a company band and website only", US_FORMS,
     {"contact": {"email": "ida@c.com"}, "company": {"website": "https://www.c.com/about", "size": "51-200"}},
     set(), {"company.domain": "c.com", "company.size_band": "51-200", "company.employees_min": 51}),
    # -- chat widgets --
    ("intercom chat with a name and a phone only", US_FORMS,
     {"contact": {"name": "Jo Smith", "phone": "+1 415 555 2671"}, "intent": {"type": "chat"},
      "conversation_id": "c-1"},
     {"intent.type"}, {"contact.first_name": "Jo", "contact.last_name": "Smith",
                       "attributes.conversation_id": "c-1"}),
    ("drift chat with a free-text intent", US_FORMS,
     {"contact": {"email": "kim@d.com"}, "intent": {"type": "Talk to Sales", "message": "Need pricing for 50 seats"}},
     set(), {"intent.type": "contact_sales", "intent.message": "Need pricing for 50 seats"}),
    ("chat widget with null optional objects", US_FORMS,
     {"contact": {"email": "lou@e.com"}, "company": None, "intent": None, "consent": None, "score": None},
     set(), {"intent.type": "inquiry", "consent.contact": True}),
    ("chat with a Windows time zone and an unknown language", US_FORMS,
     {"contact": {"email": "max@f.com", "timezone": "Eastern Standard Time", "language": "Klingonese"}},
     {"contact.language"}, {"contact.timezone": "America/New_York", "contact.language": "Klingonese"}),
    # -- webinar tools --
    ("zoom webinar registrant with a local timestamp", US_FORMS,
     {"contact": {"email": "ned@g.com", "first_name": "Ned"}, "intent": {"type": "Webinar Registration"},
      "submitted_at": "2026-11-22 10:00:00", "webinar_id": 987654321},
     {"submitted_at"}, {"intent.type": "webinar", "submitted_at": "2026-11-22T15:00:00+00:00",
                        "attributes.webinar_id": 987654321}),
    ("on24 attendee with an epoch timestamp and country name", US_FORMS,
     {"contact": {"email": "oda@h.com", "country": "United Kingdom"}, "intent": {"type": "webinar attended"},
      "submitted_at": 1795341600},
     set(), {"contact.country": "GB", "submitted_at": "2026-11-22T10:00:00+00:00"}),
    ("goto webinar with an unreadable timestamp", US_FORMS,
     {"contact": {"email": "pia@i.com"}, "intent": {"type": "webinar"}, "submitted_at": "yesterday"},
     {"submitted_at"}, {"submitted_at": None, "attributes.submitted_at": "yesterday"}),
    ("webinar tool with an unknown country", US_FORMS,
     {"contact": {"email": "quin@j.com", "country": "Atlantis"}, "intent": {"type": "webinar"}},
     {"contact.country"}, {"contact.country": "Atlantis"}),
    # -- lead-ad platforms --
    ("facebook lead ad with flat full_name and phone_number", US_FORMS,
     {"full_name": "Ray Charles", "email": "ray@k.com", "phone_number": "+14155552671", "ad_id": "23851",
      "form_id": "77", "platform": "fb"},
     set(), {"contact.first_name": "Ray", "contact.last_name": "Charles", "attributes.ad_id": "23851"}),
    ("linkedin lead gen with company size band and job title", US_FORMS,
     {"contact": {"email": "sue@l.com", "title": "VP Sales", "country": "us"},
      "company": {"name": "L Inc", "size": "1,001-5,000 employees", "industry": "Software"},
      "intent": {"type": "Download whitepaper"}, "campaign": {"id": 5, "name": "Q4"}},
     set(), {"company.size_band": "1001-5000", "company.industry": "Software", "intent.type": "content_download",
             "attributes.campaign": {"id": 5, "name": "Q4"}}),
    ("google lead form with a non-numeric score", US_FORMS,
     {"contact": {"email": "tom@m.com"}, "score": "hot", "gclid": "abc"},
     {"score"}, {"score": None, "attributes.score": "hot", "attributes.gclid": "abc"}),
    ("lead ad with a phone in international format with 00", NO_DEFAULTS,
     {"contact": {"phone": "0044 20 7946 0958", "first_name": "Uma"}},
     set(), {"contact.phone": "+442079460958"}),
    # Marketing automation scores have no cap (Pardot, Marketo, HubSpot: 850, or -15 after negative
    # scoring): a tier rule's min_score of 150 must see them, not a score dropped as "out of range".
    ("marketing automation score past 100", US_FORMS,
     {"contact": {"email": "val@n.com"}, "score": 850},
     set(), {"score": 850.0, "attributes.score": None}),
    ("marketing automation score below 0 as text", US_FORMS,
     {"contact": {"email": "val@n.com"}, "lead_score": "-15"},
     set(), {"score": -15.0, "attributes.score": None}),
    # -- CRM imports --
    ("salesforce export with CRM field names", US_FORMS,
     {"external_id": "00Q5e00000ABC", "contact": {"FirstName": "Wes", "LastName": "Lee", "Email": "wes@o.com",
                                                   "MobilePhone": "415 555 2671", "Custom__c": "x"},
      "company": {"Name": "O Corp", "NumberOfEmployees": 1200}, "LeadSource": "Web"},
     set(), {"external_id": "00Q5e00000ABC", "contact.phone": "+14155552671", "company.employees": 1200,
             "attributes.contact": {"Custom__c": "x"}, "attributes.LeadSource": "Web"}),
    ("hubspot import with integer external id and consent strings", US_FORMS,
     {"external_id": 12345, "contact": {"email": "xia@p.com"}, "consent": {"marketing": "yes", "contact": "true",
                                                                          "gdpr_basis": "legitimate_interest"}},
     set(), {"external_id": "12345", "consent.marketing": True, "consent.gdpr_basis": "legitimate_interest",
             "attributes.consent": {"gdpr_basis": "legitimate_interest"}}),
    ("pipedrive import with a phone given as a number", US_FORMS,
     {"contact": {"email": "yan@q.com", "phone": 4155552671}, "intent": {"type": "Contact Sales"}},
     set(), {"contact.phone": "+14155552671", "intent.type": "contact_sales"}),
    ("zoho import with a mailto email and language name", US_FORMS,
     {"contact": {"email": "mailto:Zed@R.com", "language": "English"}},
     set(), {"contact.email": "zed@r.com", "contact.language": "en"}),
    ("CRM import of a contact who refused contact", US_FORMS,
     {"contact": {"email": "amy@s.com"}, "consent": {"contact": False}},
     set(), {"consent.contact": False}),
    ("csv import with an unusable email but a dialable national number and no country", NO_DEFAULTS,
     {"contact": {"email": "ben at t dot com", "phone": "555 0100 4477"}},
     {"contact.email", "contact.phone"}, {"contact.email": "ben at t dot com", "contact.phone": "555 0100 4477"}),
    ("csv import with the country in its own language and a zh_CN tag", NO_DEFAULTS,
     {"contact": {"email": "li@u.cn", "country": "中国", "language": "zh_CN", "timezone": "asia/shanghai"}},
     set(), {"contact.country": "CN", "contact.language": "zh-CN", "contact.timezone": "Asia/Shanghai"}),
    ("marketo export with an unreadable company size", US_FORMS,
     {"contact": {"email": "mo@v.com"}, "company": {"name": "V", "size": "enterprise"}},
     {"company.size"}, {"company.size": "enterprise"}),
    ("CRM import with an offset-less submitted time and a source zone", IntakeSource(timezone="Europe/Berlin"),
     {"contact": {"email": "nia@w.de"}, "submitted_at": "2026-11-22T10:00:00"},
     {"submitted_at"}, {"submitted_at": "2026-11-22T09:00:00+00:00"}),
]


@pytest.mark.parametrize(("sender", "source", "body", "warned", "expected"), REAL_SENDERS,
                         ids=[s[0] for s in REAL_SENDERS])
def test_what_real_senders_send_is_accepted_with_the_right_warnings(
    sender: str, source: IntakeSource, body: dict, warned: set[str], expected: dict[str, Any]
) -> None:
    sub = read(body, source)
    assert {w["field"] for w in sub.warnings} == warned
    for path, value in expected.items():
        assert dig(sub, path) == value, path
    assert {q["field"] for q in sub.data_quality} == warned


def test_the_table_covers_every_kind_of_sender() -> None:
    assert len(REAL_SENDERS) >= 30


def test_a_realistic_accepted_lead_keeps_its_timestamp_aware() -> None:
    sub = read({"contact": {"email": EMAIL}, "submitted_at": "2026-11-22T10:00:00Z"})
    assert sub.submitted_at == datetime(2026, 11, 22, 10, tzinfo=UTC)


@pytest.mark.parametrize(("sent", "used"), [
    ("ADA@Example.com.", "ada@example.com"),  # the sentence's full stop
    ("ada@example.com;", "ada@example.com"),
    ("ada @ example.com", "ada@example.com"),
    ("mailto:ada@example.com?subject=Demo", "ada@example.com"),  # a pasted mailto link
    ("ada@example.com; bob@example.com", "ada@example.com"),  # CRM exports join a contact's addresses
    ("ada@example.com, bob@example.com", "ada@example.com"),
    ("nope@; ada@example.com", "ada@example.com"),
])
def test_an_email_field_with_punctuation_or_several_addresses_is_usable_not_a_refusal(sent: str, used: str) -> None:
    """A lead with only such an email was refused (422) though anyone could write to it."""
    sub = read({"contact": {"email": sent}})
    assert sub.contact.email == used and sub.warnings == []
    if sent.count("@") > 1:  # the other addresses are kept, as sent
        assert sub.attributes == {"contact": {"email": sent}}


@pytest.mark.parametrize(("given", "region"), [
    ("+00 44 20 7946 0958", None), ("+0044 20 7946 0958", None), ("0044 20 7946 0958", "US"),
    ("0044-20-7946-0958", "JP"), ("+ 44 20 7946 0958", "DE"),
])
def test_a_00_international_prefix_is_read_wherever_the_number_is_read(given: str, region: str | None) -> None:
    """'00' is how most of the world dials abroad, and form users type it after a '+' too: a
    number with it was refused in a country that dials abroad otherwise (the US: 011)."""
    assert normalize_phone(given, region).e164 == "+442079460958"


@pytest.mark.parametrize(("name", "first", "last"), [
    ("Ada Lovelace", "Ada", "Lovelace"), ("Lovelace, Ada", "Ada", "Lovelace"),
    ("van Rossum, Guido", "Guido", "van Rossum"), ("Cher", "Cher", None), ("Lovelace,", "Lovelace", None),
    ("Ada Lovelace, PhD", "Ada", "Lovelace"), ("Martin Luther King, Jr.", "Martin Luther", "King"),
])
def test_a_full_name_is_split_in_either_order_crms_write_it(name: str, first: str, last: str | None) -> None:
    """'Lovelace, Ada' (CRM exports, directories) became first name 'Lovelace,' and last name 'Ada'."""
    contact = read({"contact": {"email": EMAIL, "name": name}}).contact
    assert (contact.first_name, contact.last_name) == (first, last)


def test_flat_fields_sent_as_one_value_lists_are_read_as_their_value() -> None:
    """Unbounce (and other tools posting every field as a list) sent {"email": ["ada@..."]}:
    a flat field given as a list was kept in attributes, and the lead refused without an email."""
    sub = read({"email": ["Ada@Example.com"], "phone_number": ["(415) 555-2671"], "page_name": ["Demo"]})
    assert (sub.contact.email, sub.contact.phone) == ("ada@example.com", "+14155552671")
    assert sub.attributes == {"page_name": ["Demo"]} and sub.warnings == []
    several = read({"email": ["ada@example.com", "ada@work.example"]})
    assert several.contact.email == "ada@example.com"
    assert several.attributes == {"email": ["ada@example.com", "ada@work.example"]}


# ---- payloads an audit with real senders' habits found mishandled (tenth session) ----------


@pytest.mark.parametrize("email", ["ada@@acme.com", "ada@acme.com@", "a@b@c.com", "@@", "@" * 60000])
def test_an_email_with_an_at_too_many_is_kept_as_sent_beside_a_usable_phone(email: str) -> None:
    """Two '@' that no separator splits made `normalize_email` read the same text again until
    RecursionError: a 500 for a lead with a good phone (and a whole batch failed with it)."""
    sub = read({"email": email, "phone": "+1 415 555 2671"})
    assert sub.contact.phone == "+14155552671"
    assert [w["field"] for w in sub.warnings] == ["contact.email"]


@pytest.mark.parametrize(("sent", "used"), [
    ("ada@example.com\u200b", EMAIL), ("\ufeffada@example.com", EMAIL), ("ada＠example.com", EMAIL),
    ("ada@example.com (Ada)", EMAIL), ("[ada@example.com]", EMAIL), ("mailto:Ada%40Example.com", EMAIL),
    ("'ada@example.com", EMAIL), ("bob@@y.example; ada@example.com", EMAIL),
])
def test_an_email_pasted_with_invisible_or_wrapping_characters_is_usable(sent: str, used: str) -> None:
    assert read({"contact": {"email": sent}}).contact.email == used


@pytest.mark.parametrize(("body", "email", "phone"), [
    ({"email": "", "work_email": EMAIL}, EMAIL, None),
    ({"email": None, "Email": EMAIL}, EMAIL, None),
    ({"Phone": "", "MobilePhone": "+14155552671"}, None, "+14155552671"),
    ({"phone": "n/a", "mobile_phone": "(415) 555-2671"}, None, "+14155552671"),
    ({"contact": {"email": "ada@", "work_email": EMAIL}}, EMAIL, None),
    ({"contact": {"email": "ada@"}, "email": EMAIL}, EMAIL, None),
])
def test_an_unfilled_first_spelling_does_not_hide_a_usable_later_one(body: dict, email, phone) -> None:
    """CRM exports send every field, unfilled ones empty: the first spelling was read whatever it
    held, the usable one only kept in attributes, and the lead refused."""
    sub = read(body)
    assert (sub.contact.email, sub.contact.phone) == (email, phone)


def test_unfilled_top_level_fields_do_not_hide_their_aliases() -> None:
    sub = read({"email": EMAIL, "score": "", "lead_score": 85, "external_id": "", "id": "123",
                "submitted_at": None, "created_at": "2026-11-22T10:00:00Z"})
    assert (sub.score, sub.external_id) == (85, "123")
    assert sub.submitted_at == datetime(2026, 11, 22, 10, tzinfo=UTC)


@pytest.mark.parametrize("label", ["\ufeffEmail", "Email *", "Email (required)", "Your Email", "your-email",
                                   "contact_email", "Company Email", "Business Email Address", "E-Mail-Adresse"])
def test_an_email_under_a_form_label_is_the_contact_s(label: str) -> None:
    sub = read({label: "Ada@Example.com"})
    assert sub.contact.email == EMAIL and sub.warnings == []


@pytest.mark.parametrize("label", ["Phone *", "Tel.", "Telephone Number", "Direct Phone", "Phone No", "workphone",
                                   "Contact Number"])
def test_a_phone_under_a_form_label_is_the_contact_s(label: str) -> None:
    assert read({label: "(415) 555-2671"}).contact.phone == "+14155552671"


def test_a_lead_about_to_be_refused_takes_its_email_from_a_field_named_for_one() -> None:
    """Form labels are endless ('Mail', 'email_1', 'EmailAddr1'): before refusing a lead with no
    known email or phone field, a field whose name says so and whose value is usable is read,
    named in a warning, and kept where it was sent."""
    sub = read({"first_name": "Ada", "email_1": "Ada@Example.com", "referrer": "bob"})
    assert sub.contact.email == EMAIL
    assert sub.warnings == [{"field": "email_1", "message": "read as contact.email; kept here too"}]
    assert sub.attributes == {"email_1": "Ada@Example.com", "referrer": "bob"}
    with pytest.raises(Refused):
        read({"first_name": "Ada", "referrer": "bob@example.com"})  # a name that does not say email


@pytest.mark.parametrize("sent", ["+1 415 555 2671, +1 212 555 0100", "+14155552671 / +12125550100",
                                  "(415) 555-2671 or (212) 555-0100", "4155552671;2125550100",
                                  "(415) 555-2671\n(212) 555-0100"])
def test_several_phones_in_one_field_give_the_first_and_keep_the_field(sent: str) -> None:
    """Refused without an email; ';' read the second number as the first one's extension."""
    sub = read({"phone": sent})
    assert (sub.contact.phone, sub.contact.phone_extension) == ("+14155552671", None)
    assert sub.attributes == {"phone": sent}


@pytest.mark.parametrize(("size", "employees"), [("250.0", 250), ("250.00", 250), ("1000.0", 1000), ("1,5k", 1500),
                                                 ("1.5k", 1500), ("1.200", 1200), ("1,200", 1200)])
def test_a_head_count_with_a_decimal_point_is_not_ten_times_larger(size: str, employees: int) -> None:
    assert normalize_size(size).employees == employees


@pytest.mark.parametrize("size", ["1.5", 1.5, "12,5"])
def test_a_fraction_of_a_person_is_no_head_count(size: Any) -> None:
    with pytest.raises(ValueError):
        normalize_size(size)


@pytest.mark.parametrize(("sent", "utc"), [
    ("Sun Nov 22 2026 10:00:00 GMT+0200 (Central European Summer Time)", "2026-11-22T08:00:00+00:00"),
    ("Sun, 22 Nov 2026 10:00:00 CET", "2026-11-22T09:00:00+00:00"),
    ("Sun, 22 Nov 2026 10:00:00 JST", "2026-11-22T01:00:00+00:00"),
    ("Sun, 22 Nov 2026 10:00:00 -0000", "2026-11-22T10:00:00+00:00"),
])
def test_a_timestamp_with_a_zone_the_mail_parser_does_not_know_is_read_in_that_zone(sent: str, utc: str) -> None:
    """They were read in the source's zone, with a warning that they had no offset."""
    parsed, assumed = parse_timestamp(sent, "America/New_York")
    assert (parsed.astimezone(UTC).isoformat(), assumed) == (utc, False)


@pytest.mark.parametrize("country", ["EU", "XX", "N/A", "n.a."])
def test_a_contact_country_kept_as_sent_gives_way_to_the_company_s_for_the_phone(country: str) -> None:
    sub = read({"contact": {"phone": "020 7946 0958", "country": country}, "company": {"country": "GB"}})
    assert sub.contact.phone == "+442079460958"
    assert [w["field"] for w in sub.warnings] == ["contact.country"]


@pytest.mark.parametrize(("consent", "contact", "marketing"), [
    ({"contact": "unsubscribed"}, False, False), ({"contact": "Do not contact"}, False, False),
    ({"marketing": "Subscribed"}, True, True), ({"contact": None}, True, False),
])
def test_consent_words_crms_use_are_read(consent: dict, contact: bool, marketing: bool) -> None:
    """'unsubscribed' left the lead contactable (only a warning), and a null was warned about."""
    sub = read({"email": EMAIL, "consent": consent})
    assert (sub.consent.contact, sub.consent.marketing, sub.warnings) == (contact, marketing, [])


def test_a_consent_given_twice_keeps_the_second_and_says_so() -> None:
    sub = read({"email": EMAIL, "consent": {"marketing": "Yes", "Marketing": "No"}})
    assert sub.consent.marketing is True and sub.attributes == {"consent": {"Marketing": "No"}}
    assert [w["field"] for w in sub.warnings] == ["consent.marketing"]


@pytest.mark.parametrize(("company", "domain"), [
    ({"domain": "ACME.COM."}, "acme.com"), ({"domain": "@acme.com"}, "acme.com"), ({"domain": "ada@acme.com"}, "acme.com"),
    ({"website": "http://acme.com#pricing"}, "acme.com"), ({"website": "https://user@www.acme.com:8443/x"}, "acme.com"),
    ({"website": "//acme.com"}, "acme.com"), ({"website": "Acme"}, None),
])
def test_a_company_domain_is_the_host_however_it_was_written(company: dict, domain: str | None) -> None:
    """The domain matches a lead to its account's owner: 'acme.com#pricing' or 'acme.com.' matched nobody."""
    sub = read({"email": EMAIL, "company": company})
    assert (sub.company.domain, sub.warnings) == (domain, [])


def test_a_domain_that_is_none_is_kept_as_sent_and_named() -> None:
    sub = read({"email": EMAIL, "company": {"domain": "Acme Inc"}})
    assert sub.company.domain == "Acme Inc" and [w["field"] for w in sub.warnings] == ["company.domain"]


@pytest.mark.parametrize(("text", "intent"), [
    ("Not interested in a demo", None), ("No demo, thanks", None),
    ("I don't want a demo, just pricing", "pricing"), ("Not now, but send the ebook", "content_download"),
    ("Request a demo", "demo_request"), ("Book a demo!", "demo_request"),
])
def test_a_phrase_just_after_a_negation_is_not_asked_for(text: str, intent: str | None) -> None:
    """"Not interested in a demo" was a demo request: tier A, and a 5-minute SLA for a lead who said no."""
    assert classify_intent(text) == intent
