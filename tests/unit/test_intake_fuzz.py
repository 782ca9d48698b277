"""Property tests of intake's reading of what senders send (services/intake/normalize.py
`read_submission`, services/intake/domain.py `ActivityIn`): on any JSON, a lead is either kept
(normalized, everything else under attributes, storable) or refused with errors naming fields;
nothing else ever escapes. The plain regressions of what these found are in test_intake_normalize.py
and test_intake_domain.py.

Fast by default (a few hundred examples in all, derandomized: the same run each time). A longer,
random run: `LEADSLA_FUZZ_EXAMPLES=5000 pytest tests/unit/test_intake_fuzz.py tests/unit/test_routing_fuzz.py`
(examples per property; the run is then random, and hypothesis prints a failing example to copy).
"""
from __future__ import annotations

import os
import re
from typing import Any
from zoneinfo import available_timezones

import orjson
import phonenumbers
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat
from pydantic import ValidationError

from services.intake.country_names import NAMES as COUNTRY_NAMES
from services.intake.domain import ActivityIn, classify_tier, identity_keys, missing_fields
from services.intake.normalize import (
    COMPANY_FIELDS,
    CONTACT_FIELDS,
    COUNTRY_ALIASES,
    FLAT_FIELDS,
    INTENT_FIELDS,
    LANGUAGE_NAMES,
    TOP_ALIASES,
    TOP_FIELDS,
    ZONE_ALIASES,
    Refused,
    Submission,
    read_submission,
)
from shared.config import IntakeSource, Tiers
from shared.text import storable

LONG_RUN = int(os.environ.get("LEADSLA_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    """Hypothesis settings: `examples` (modest) by default, derandomized; LEADSLA_FUZZ_EXAMPLES for more."""
    return settings(max_examples=LONG_RUN or examples, derandomize=not LONG_RUN, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SOURCES = st.sampled_from([
    IntakeSource(default_intent="inquiry", timezone="UTC"),
    IntakeSource(),
    IntakeSource(default_region="US", timezone="America/New_York", default_intent="inquiry"),
    IntakeSource(default_region="GB", timezone="Pacific/Kiritimati"),  # UTC+14: edge of the years 1 to 9999
])

# ---- strategies ---------------------------------------------------------------------------

ODD_TEXT = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "🙂", "e\u0301", "\u202eevil", "مرحبا", "שלום", "ＡＢＣ", "\u200b",
    "null", "NaN", "Infinity", "1e309", "-0", "9" * 400, "9" * 400 + "k", "9" * 5000, " " * 50,
])
NUMBERS = (st.integers() | st.integers(min_value=-2**80, max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([2**63, -2**63 - 1, 1e308, 5e-324]))
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=20) | ODD_TEXT

KNOWN_NAMES = sorted(
    set(CONTACT_FIELDS) | set(COMPANY_FIELDS) | set(INTENT_FIELDS) | set(FLAT_FIELDS) | TOP_FIELDS | set(TOP_ALIASES)
    | {"firstName", "E-Mail", "Phone Number", "source", "marketing", "contact", "\x00", "\ud800"}
)
KEYS = st.text(max_size=8) | st.sampled_from(KNOWN_NAMES)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON value (and what Python's json reads beyond JSON: NaN, Infinity, huge integers)."""
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                        max_leaves=max_leaves)


def deep(depth: int) -> Any:
    value: Any = {"email": "ada@example.com"}
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


@st.composite
def phones(draw) -> tuple[str, str]:
    """(a valid number of any country in any format, its region)."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from(list(phonenumbers.PhoneNumberType.values())))
    number = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
    fmt = draw(st.sampled_from([PhoneNumberFormat.E164, PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.NATIONAL,
                                PhoneNumberFormat.RFC3966]))
    text = phonenumbers.format_number(number, fmt)
    if fmt == PhoneNumberFormat.INTERNATIONAL and draw(st.booleans()):
        text = "00" + text[1:]  # the international prefix most of the world dials
    return text + draw(st.sampled_from(["", " x12", " ext. 7"])), region


VALID_EMAILS = st.emails() | st.sampled_from([
    "Ada.Lovelace@Example.COM", "josé@bücher.de", "用户@例子.广告", "user@пример.рф", "user@xn--bcher-kva.de",
    '"john doe"@example.com', "Ada <ada@example.com>", "mailto:ada@example.com", "a+tag@sub.example.co.uk",
    "e\u0301@example.com",
])
COUNTRIES = st.sampled_from(sorted(COUNTRY_NAMES)[::5] + sorted(COUNTRY_ALIASES) + ["DE", "deu", "Deutschland",
                                                                                   "Allemagne", "日本", "xx"])
ZONES = st.sampled_from(sorted(available_timezones())[::3] + sorted(ZONE_ALIASES) + ["UTC+2", "GMT-5", "utc+14", "Mars"])
LANGUAGES = st.sampled_from(sorted(LANGUAGE_NAMES) + ["en-us", "EN_US", "zh_CN", "en_US.UTF-8", "pt-BR", "eng",
                                                      "sr-Latn-RS", "English", "klingon"])
TIMESTAMPS = st.sampled_from([
    "2026-11-17T09:00:00Z", "2026-11-17T09:00:00+05:30", "2026-11-17 09:00:00", "11/17/2026 9:00 AM",
    "17.11.2026 09:00", "Tue, 17 Nov 2026 09:00:00 +0000", "1795701900", "1795701900000", "0001-01-01T00:00:00",
    "9999-12-31T23:59:59", "0001-01-01T00:30:00+01:00", "yesterday", "2026-02-30", "",
]) | NUMBERS | st.datetimes().map(lambda d: d.isoformat())
TEXT = st.text(max_size=15) | ODD_TEXT


def field_or_odd(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return strategy | SCALARS | st.lists(strategy, min_size=1, max_size=3) | json_values(6)


FORMS = st.fixed_dictionaries({}, optional={
    "contact": st.fixed_dictionaries({}, optional={
        "email": field_or_odd(VALID_EMAILS), "phone": field_or_odd(phones().map(lambda p: p[0])),
        "first_name": field_or_odd(TEXT), "lastName": field_or_odd(TEXT), "name": field_or_odd(TEXT),
        "country": field_or_odd(COUNTRIES), "timezone": field_or_odd(ZONES), "language": field_or_odd(LANGUAGES),
        "job_title": field_or_odd(TEXT), "linkedin": json_values(6),
    }) | json_values(8),
    "company": st.fixed_dictionaries({}, optional={
        "name": field_or_odd(TEXT), "website": field_or_odd(st.sampled_from(["https://www.acme.com/x", "acme", ""])),
        "size": field_or_odd(st.sampled_from(["201-500", "10k+", "<10", "1,001 - 5,000 employees", "just me"])),
        "country": field_or_odd(COUNTRIES), "industry": field_or_odd(TEXT),
    }) | json_values(8),
    "intent": st.fixed_dictionaries({}, optional={
        "type": field_or_odd(st.sampled_from(["Demo Request", "Book a demo!", "webinar", "x"])),
        "product": field_or_odd(TEXT), "message": field_or_odd(TEXT)}) | json_values(8),
    "consent": field_or_odd(st.fixed_dictionaries({}, optional={"marketing": SCALARS, "contact": SCALARS,
                                                                 "gdpr": SCALARS})),
    "score": field_or_odd(st.sampled_from(["85", "85%", "8,5", "1,200", "high"])),
    "submitted_at": field_or_odd(TIMESTAMPS),
    "external_id": field_or_odd(TEXT), "source": SCALARS, "attributes": json_values(8),
    "custom_fields": json_values(8), "email": SCALARS, "Phone Number": SCALARS, "utm_source": SCALARS,
})
BODIES = json_values() | FORMS


# ---- checks -------------------------------------------------------------------------------


def read_or_refuse(body: Any, source: IntakeSource, *, partial: bool = False) -> Submission | None:
    """The submission, or None for a refusal whose errors each name a field. Any other
    exception fails the property."""
    try:
        return read_submission(body, source, partial=partial)
    except Refused as refused:
        assert refused.errors
        for error in refused.errors:
            assert isinstance(error["field"], str) and error["field"], refused.errors
            assert isinstance(error["message"], str) and error["message"], refused.errors
        return None


def assert_storable(sub: Submission) -> None:
    """What the lead.received event carries can be written as the event store writes it (orjson:
    no integer past 64 bits, no lone surrogate) and kept in jsonb (no NUL)."""
    stored = [sub.snapshot(), sub.data_quality, sub.warnings]
    assert storable(stored) == stored
    orjson.dumps(stored)
    assert all(isinstance(issue.field, str) and issue.field for issue in sub.issues)


def assert_read_by_the_rest_of_intake(sub: Submission) -> None:
    tiers = Tiers.model_validate({"rules": [{"tier": "A", "when": {"intent": ["demo_request"], "min_score": 50}},
                                            {"tier": "B", "when": {"countries": ["DE", "US"]}}]})
    assert classify_tier(sub, "web", tiers) in ("A", "B", "C")
    missing_fields(sub)
    identity_keys(sub, ["email", "phone"])


# ---- read_submission ----------------------------------------------------------------------


@fuzz(150)
@given(body=BODIES, source=SOURCES, partial=st.booleans())
def test_any_json_is_read_or_refused_naming_fields_and_never_raises_anything_else(body, source, partial) -> None:
    sub = read_or_refuse(body, source, partial=partial)
    if sub is not None:
        assert_storable(sub)
        assert_read_by_the_rest_of_intake(sub)
    elif partial:
        assert not isinstance(body, dict)  # a PATCH is refused only when it is not an object


@pytest.mark.parametrize("depth", [10, 200, 5000])
def test_a_deeply_nested_body_is_read_or_refused_by_name(depth: int) -> None:
    sub = read_or_refuse({"contact": {"email": "ada@example.com"}, "custom_fields": deep(depth)}, IntakeSource())
    if sub is not None:
        assert_storable(sub)


@fuzz(60)
@given(body=FORMS, email=VALID_EMAILS, source=SOURCES)
def test_a_body_with_a_valid_email_is_never_refused(body, email, source) -> None:
    contact = body.get("contact") if isinstance(body.get("contact"), dict) else {}
    body = {**body, "contact": {**contact, "email": email}}
    note(ascii(body))
    sub = read_submission(body, source)
    assert sub.contact.email and "contact.email" not in {i.field for i in sub.issues}


@fuzz(60)
@given(body=FORMS, phone=phones(), with_country=st.booleans(), source=SOURCES)
def test_a_body_with_a_valid_phone_of_any_country_is_never_refused(body, phone, with_country, source) -> None:
    text, region = phone
    contact = body.get("contact") if isinstance(body.get("contact"), dict) else {}
    contact = {k: v for k, v in contact.items() if k != "email"}
    # A national number needs its country; an international one is read whatever the country says.
    national = not text.startswith(("+", "00", "tel:"))
    body = {**body, "contact": {**contact, "phone": text, **({"country": region} if with_country or national else {})}}
    sub = read_submission(body, source)
    if text.startswith("00") and source.default_region and not body["contact"].get("country"):
        return  # '00…' read in a region that dials out otherwise (the US: 011): kept as sent, not refused
    assert sub.contact.phone == phonenumbers.format_number(phonenumbers.parse(text, region), PhoneNumberFormat.E164)


def contact_again(sub: Submission) -> dict[str, Any]:
    """The normalized contact as a sender would send it again (the extension apart, as E.164 has none)."""
    return {k: v for k, v in sub.contact.model_dump(exclude_none=True).items() if k != "phone_extension"}


@fuzz(80)
@given(body=FORMS, source=SOURCES)
def test_normalizing_a_normalized_contact_again_changes_nothing(body, source) -> None:
    sub = read_or_refuse(body, source)
    if sub is None:
        return
    first = contact_again(sub)
    note(ascii(body))
    again = read_submission({"contact": first, "company": sub.company.model_dump(exclude_none=True)}, source,
                            partial=True)
    assert contact_again(again) == first

    def company(s: Submission) -> dict[str, Any]:  # a head count read again as its band has no exact count
        return s.company.model_dump(exclude_none=True, exclude={"employees", "employees_min", "employees_max"})

    assert company(again) == company(sub)


UNKNOWN = st.text(alphabet="qxz", min_size=3, max_size=6).map(lambda s: f"zz_{s}")  # named by no alias


@fuzz(60)
@given(body=FORMS, extra=st.dictionaries(UNKNOWN, json_values(6), min_size=1, max_size=4),
       nested=st.dictionaries(UNKNOWN, json_values(4), max_size=3), source=SOURCES)
def test_fields_no_one_names_come_out_under_attributes(body, extra, nested, source) -> None:
    contact = body.get("contact") if isinstance(body.get("contact"), dict) else {}
    body = {**body, **extra, "contact": {**contact, "email": "ada@example.com", **nested}}
    sub = read_submission(body, source)
    cleaned = orjson.loads(orjson.dumps(sub.attributes, option=orjson.OPT_NON_STR_KEYS))
    for name in extra:
        assert name in cleaned
    # Under `contact`, or `contact_2` when a custom field named `contact` holds a value that cannot
    # merge with them (kept first, it keeps the name).
    kept = [v for k, v in cleaned.items() if re.fullmatch(r"contact(_\d+)?", k) and isinstance(v, dict)]
    for name in nested:
        assert any(name in section for section in kept)


# ---- activities ---------------------------------------------------------------------------

ACTIVITIES = st.fixed_dictionaries({"type": st.sampled_from(["call", "Phone Call", "email", "meeting", "Opt-Out",
                                                             "disposition", "note"]) | SCALARS}, optional={
    "actor": field_or_odd(TEXT), "occurred_at": field_or_odd(TIMESTAMPS), "channel": field_or_odd(TEXT),
    "outcome": field_or_odd(st.sampled_from(["No Answer", "connected", "left a note"])),
    "disposition": st.fixed_dictionaries({"status": SCALARS}, optional={"reason": SCALARS, "crm": SCALARS})
    | json_values(4),
    "reason": SCALARS, "external_id": SCALARS, "activity_id": SCALARS, "crm_fields": json_values(6),
    "duration": SCALARS, "\x00": SCALARS,
})


@fuzz(150)
@given(body=ACTIVITIES | json_values(10), zone=st.sampled_from(["UTC", "Pacific/Kiritimati", "Etc/GMT+12",
                                                                "America/New_York"]))
def test_any_activity_body_is_read_or_refused_naming_fields_and_what_is_kept_is_storable(body, zone) -> None:
    try:
        activity = ActivityIn.model_validate(body)
    except ValidationError as invalid:
        for error in invalid.errors():
            assert isinstance(error["loc"], tuple)  # the HTTP layer names the field from it
        return
    warnings = activity.warnings(zone)
    dated = activity.dated(zone)
    kept = [dated.attributes(), dated.model_dump(mode="json"), warnings]
    assert storable(kept[:2]) == kept[:2]
    orjson.dumps(kept)
    assert all(w["field"] for w in warnings)
