"""Intake's pure domain: tiering, dedupe identity, consent, and the activity schema.
Submissions are read by `normalize`. No I/O here; the same rules serve HTTP and Kafka input."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.config import Config, Suppression, Tiers
from shared.events import Contact

from .normalize import Submission

Short = Annotated[str, Field(max_length=200)]


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
    """Input from CRMs (activities): unknown fields refused, blank fields absent, text storable."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        # Forms send "" for fields left empty; that means "not given", not "an empty identifier".
        # Nested models check their own fields, so errors name the innermost field.
        if isinstance(value, str):
            return storable(value) if value.strip() else None
        return value


RECOMMENDED_FIELDS = ("contact.email", "contact.phone", "contact.country", "company.name")


def missing_fields(sub: Submission) -> list[str]:
    """Recommended fields without a usable value (a value kept as sent with a warning is missing)."""
    flawed = {i.field for i in sub.issues}
    present = {
        "contact.email": sub.contact.email and "contact.email" not in flawed,
        "contact.phone": sub.contact.phone and "contact.phone" not in flawed,
        "contact.country": (sub.contact.country and "contact.country" not in flawed)
        or (sub.company.country and "company.country" not in flawed),
        "company.name": sub.company.name,
    }
    return [name for name in RECOMMENDED_FIELDS if not present[name]]


def is_suppressed(contact: Contact, suppression: Suppression) -> bool:
    """On the configured do-not-contact list by email, email domain or phone."""
    email = (contact.email or "").lower()
    if email and email in {e.strip().lower() for e in suppression.emails}:
        return True
    domain = email.rpartition("@")[2]
    if domain and domain in {d.strip().lower().lstrip("@") for d in suppression.domains}:
        return True
    return bool(contact.phone) and contact.phone in set(suppression.phones)


def is_contactable(sub: Submission, suppression: Suppression) -> bool:
    return sub.consent.contact and not is_suppressed(sub.contact, suppression)


def classify_tier(sub: Submission, source: str, tiers: Tiers) -> str:
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


def intent_vocabulary(config: Config) -> dict[str, list[str]]:
    """Intent types the configuration names (tier rules, aliases): matched exactly before any
    built-in spelling, so a configured 'event_demo' is not read as a demo request."""
    vocabulary: dict[str, list[str]] = {}
    for rule in config.tiers.rules:
        for intent in rule.when.intent or []:
            vocabulary.setdefault(intent, [])
    for canonical, aliases in config.intake.intent_aliases.items():
        vocabulary.setdefault(canonical, []).extend(aliases)
    return vocabulary


def tier_rank(tier: str, tiers: Tiers) -> int:
    """Lower is more urgent: tiers rank in the order the rules first name them, the default last."""
    order: list[str] = []
    for rule in tiers.rules:
        if rule.tier not in order:
            order.append(rule.tier)
    if tiers.default not in order:
        order.append(tiers.default)
    return order.index(tier) if tier in order else len(order)


def identity_keys(sub: Submission, match_on: list[str]) -> list[tuple[str, str]]:
    """(kind, normalized value) pairs a repeat submission from the same person would share.
    Values kept as sent (not normalized) never identify anyone."""
    flawed = {i.field for i in sub.issues}
    keys = []
    if "email" in match_on and sub.contact.email and "contact.email" not in flawed:
        keys.append(("email", sub.contact.email))
    if "phone" in match_on and sub.contact.phone and "contact.phone" not in flawed:
        keys.append(("phone", sub.contact.phone))
    return keys


def _differ(a: str | None, b: str | None) -> bool:
    return bool(a and b and a.strip().casefold() != b.strip().casefold())


def same_person(existing: dict[str, Any], new: Contact, match_on: list[str]) -> str | None:
    """What identifies `new` as the person of an existing lead's contact, or None.
    A shared phone alone is not an identity: colleagues share switchboards, so a phone match
    counts only when emails and names do not contradict it."""
    email = existing.get("email")
    if "email" in match_on and email and new.email and email == new.email:
        return "email"
    if "phone" not in match_on or not existing.get("phone") or existing.get("phone") != new.phone:
        return None
    if _differ(email, new.email):
        return None
    if _differ(existing.get("first_name"), new.first_name) or _differ(existing.get("last_name"), new.last_name):
        return None
    if existing.get("phone_extension") and new.phone_extension and existing["phone_extension"] != new.phone_extension:
        return None
    return "phone"


class DispositionIn(FormInput):
    status: Annotated[str, Field(min_length=1, max_length=60)]
    reason: Short | None = None


# The contract's outcomes per activity type; other outcomes are kept as sent.
OUTCOMES = {
    "call": ("connected", "no_answer", "voicemail", "busy", "wrong_number"),
    "meeting": ("booked", "held", "no_show", "cancelled", "rescheduled"),
    "email": ("sent", "replied", "bounced"),
}


class ActivityIn(FormInput):
    """The body of POST /v1/leads/{lead_id}/activities."""

    # The sender's own activity id: a repeat with the same id changes nothing.
    external_id: Annotated[Short | None, Field(validation_alias=AliasChoices("external_id", "activity_id"))] = None
    type: Literal["call", "email", "meeting", "sms", "chat", "note", "disposition", "pause", "resume", "opt_out"]
    actor: Short | None = None
    occurred_at: datetime | None = None
    channel: Short | None = None
    outcome: Short | None = None
    disposition: DispositionIn | None = None
    reason: Short | None = None  # why a pause (or an opt-out)

    @field_validator("type", mode="before")
    @classmethod
    def _type_spelling(cls, value: Any) -> Any:
        # "Call", "Opt-Out", "opt out": CRMs spell types their own way.
        return re.sub(r"[\s-]+", "_", value.strip().lower()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _disposition_present(self) -> ActivityIn:
        if self.outcome:
            spelled = re.sub(r"[\s-]+", "_", self.outcome.lower())
            if spelled in OUTCOMES.get(self.type, ()):
                self.outcome = spelled
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


class TokenBucket:
    """Rate limit for one key: `rate` tokens a second, at most `burst` saved up. Pure: the
    caller passes `now` (monotonic seconds)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float, cost: int = 1) -> float:
        """0 if allowed (tokens spent), else the seconds until `cost` tokens are there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (min(cost, self.burst) - self.tokens) / self.rate
