"""Intake's pure domain: the submission schema, normalization, tiering and dedupe keys.
No I/O here; the same rules serve HTTP and Kafka input."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email
from phonenumbers import timezone as phone_timezones
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leadsla.shared.config import Tiers

Short = Annotated[str, Field(max_length=200)]


def normalize_email(value: str) -> str:
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return result.normalized.lower()


# Codes people use that ISO 3166 spells differently.
COUNTRY_ALIASES = {"UK": "GB", "EL": "GR", "USA": "US", "ENGLAND": "GB", "SCOTLAND": "GB", "WALES": "GB"}


def normalize_country(value: str) -> str:
    """ISO 3166-1 alpha-2 from an alpha-2, alpha-3 or English name ('de', 'DEU', 'Germany', 'UK')."""
    text = COUNTRY_ALIASES.get(value.strip().upper(), value.strip())
    try:
        country = pycountry.countries.lookup(text)
    except LookupError:
        raise ValueError(f"{value!r} is not a known country (use ISO 3166 codes like 'DE')") from None
    return country.alpha_2


def normalize_phone(value: str, country: str | None) -> str:
    """E.164; a national number needs the contact's country to be read."""
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        hint = "" if country else " (add a + and country code, or the contact's country)"
        raise ValueError(f"{value!r} is not a phone number{hint}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{value!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def validate_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone like 'Europe/Berlin'") from None
    return value


def timezone_from_phone(e164: str) -> str | None:
    """The phone's time zone when the number pins it down to exactly one."""
    zones = phone_timezones.time_zones_for_number(phonenumbers.parse(e164))
    return zones[0] if len(zones) == 1 and zones[0] != "Etc/Unknown" else None


def storable(value: Any) -> Any:
    """Refuse text Postgres cannot store (NUL, lone surrogates), however deep in the value."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key)
            storable(item)
    elif isinstance(value, list):
        for item in value:
            storable(item)
    return value


class FormInput(BaseModel):
    """Input from forms and CRMs: unknown fields refused, blank fields absent, text storable."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        # Forms send "" for fields left empty; that means "not given", not "an empty identifier".
        # Nested models check their own fields, so errors name the innermost field.
        if isinstance(value, str):
            return storable(value) if value.strip() else None
        return value


class ContactIn(FormInput):
    first_name: Short | None = None
    last_name: Short | None = None
    email: Annotated[str, AfterValidator(normalize_email)] | None = None
    # country comes before phone: a national phone number is read in the contact's country.
    country: Annotated[str, AfterValidator(normalize_country)] | None = None
    phone: Short | None = None
    timezone: Annotated[str, AfterValidator(validate_timezone)] | None = None
    language: Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] | None = None

    @field_validator("phone")
    @classmethod
    def _e164(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else normalize_phone(value, info.data.get("country"))

    @model_validator(mode="after")
    def _reachable(self) -> ContactIn:
        if not self.email and not self.phone:
            raise ValueError("a contact needs an email or a phone")
        if self.phone and self.timezone is None:
            self.timezone = timezone_from_phone(self.phone)
        return self


class CompanyIn(FormInput):
    name: Short | None = None
    domain: Short | None = None
    size: Short | None = None
    country: Annotated[str, AfterValidator(normalize_country)] | None = None


class IntentIn(FormInput):
    type: Annotated[str, Field(min_length=1, max_length=60)]
    product: Short | None = None
    message: Annotated[str, Field(max_length=5000)] | None = None


class ConsentIn(FormInput):
    marketing: bool = False
    contact: bool = True


class LeadSubmission(FormInput):
    """The body of POST /v1/leads (and of a bare record on leads.submissions.raw)."""

    source: Annotated[str, Field(min_length=1, max_length=60)] | None = None
    external_id: Short | None = None
    submitted_at: datetime | None = None
    contact: ContactIn
    company: CompanyIn = CompanyIn()
    intent: IntentIn
    score: Annotated[float, Field(ge=0, le=100)] | None = None
    consent: ConsentIn = ConsentIn()
    custom_fields: dict[str, Any] = Field(default_factory=dict)

    @field_validator("custom_fields")
    @classmethod
    def _storable_custom_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        return storable(value)

    @field_validator("submitted_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-11-22T10:00:00Z")
        return value


RECOMMENDED_FIELDS = ("contact.email", "contact.phone", "contact.country", "company.name")


def missing_fields(sub: LeadSubmission) -> list[str]:
    present = {
        "contact.email": sub.contact.email,
        "contact.phone": sub.contact.phone,
        "contact.country": sub.contact.country or sub.company.country,
        "company.name": sub.company.name,
    }
    return [name for name in RECOMMENDED_FIELDS if not present[name]]


def is_contactable(sub: LeadSubmission) -> bool:
    return sub.consent.contact and bool(sub.contact.email or sub.contact.phone)


def classify_tier(sub: LeadSubmission, source: str, tiers: Tiers) -> str:
    """First matching rule wins; the default tier otherwise."""
    country = sub.contact.country or sub.company.country
    for rule in tiers.rules:
        when = rule.when
        if when.intent is not None and sub.intent.type not in when.intent:
            continue
        if when.source is not None and source not in when.source:
            continue
        if when.min_score is not None and (sub.score is None or sub.score < when.min_score):
            continue
        if when.countries is not None and country not in when.countries:
            continue
        return rule.tier
    return tiers.default


def identity_keys(sub: LeadSubmission, match_on: list[str]) -> list[tuple[str, str]]:
    """(kind, normalized value) pairs a repeat submission from the same person would share."""
    keys = []
    if "email" in match_on and sub.contact.email:
        keys.append(("email", sub.contact.email))
    if "phone" in match_on and sub.contact.phone:
        keys.append(("phone", sub.contact.phone))
    return keys


class DispositionIn(FormInput):
    status: Annotated[str, Field(min_length=1, max_length=60)]
    reason: Short | None = None


class ActivityIn(FormInput):
    """The body of POST /v1/leads/{lead_id}/activities."""

    external_id: Short | None = None
    type: Literal["call", "email", "meeting", "sms", "chat", "note", "disposition"]
    actor: Short | None = None
    occurred_at: datetime | None = None
    channel: Short | None = None
    outcome: Short | None = None
    disposition: DispositionIn | None = None

    @model_validator(mode="after")
    def _disposition_present(self) -> ActivityIn:
        if self.type == "disposition" and self.disposition is None:
            raise ValueError("a disposition activity needs `disposition: {status, reason}`")
        if self.occurred_at is not None and self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at needs a UTC offset")
        return self


def disposition_problem(disposition: DispositionIn | None, reasons: dict[str, list[str]]) -> str | None:
    """Why a disposition is not acceptable under the configured reasons, or None."""
    if disposition is None:
        return None
    if disposition.status not in reasons:
        known = ", ".join(sorted(reasons)) or "none configured"
        return f"unknown disposition status {disposition.status!r} (known: {known})"
    allowed = reasons[disposition.status]
    if allowed and disposition.reason not in allowed:
        return f"reason must be one of: {', '.join(allowed)}"
    return None
