"""The YAML configuration: tiers, dedupe, teams and owners, calendars, routing, SLA policies,
disposition reasons, escalations and channels. Validated as a whole at load time; every
error names the path of the bad field (e.g. `sla_policies.0.metrics.first_response.target`).
"""
from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from email.utils import parseaddr
from itertools import pairwise
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .clock import is_time_zone

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


_SECONDS = re.compile(r"^\d+(?:\.\d*)?$")
_CLOCK_TIME = re.compile(r"^(\d+):\d\d(?::\d\d)?$")
# Ten years: longer is a typo, and a deadline that far would overflow the dates it is added to.
MAX_DURATION = 3650 * 86400.0


def parse_duration(value: str | int | float) -> float:
    """'90s', '5m', '1h30m', '2d' or a number of seconds (also in quotes: '300') -> seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):  # also blank (null), a list
        raise ValueError("a duration like '5m', '1h30m' or a number of seconds is required")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif _SECONDS.match(value.strip()):
        seconds = float(value.strip())
    else:
        match = _DURATION.match(value.strip())
        if not value.strip() or not match:
            clock = _CLOCK_TIME.match(value.strip())
            hint = (f"; write {int(clock.group(1))}m for minutes or {int(clock.group(1))}h for hours"
                    if clock else "")
            raise ValueError(f"{value!r} is not a duration like '5m', '1h30m', '2d' or '45s'{hint}")
        d, h, m, s = (int(g or 0) for g in match.groups())
        seconds = float(((d * 24 + h) * 60 + m) * 60 + s)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than ten years (3650d)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _country_code(value: str) -> str:
    """An ISO 3166-1 alpha-2 code, as intake reads leads' countries: 'UK' or 'Germany' here
    would match no lead."""
    import phonenumbers  # here: most services never read a country, and these load large tables
    import pycountry

    code = value.strip().upper()  # 'us' means US: leads' countries are read to upper-case codes
    if len(code) == 2 and (code in phonenumbers.SUPPORTED_REGIONS or pycountry.countries.get(alpha_2=code) is not None):
        return code
    try:
        hint = f"; did you mean {pycountry.countries.lookup(value).alpha_2!r}?"
    except LookupError:
        hint = "; the United Kingdom is 'GB'" if value.upper() == "UK" else ""
    raise ValueError(f"{value!r} is not an ISO 3166 alpha-2 country code like 'GB', 'DE' or 'US'{hint}")


CountryCode = Annotated[str, AfterValidator(_country_code)]


def lead_country(contact: str | None, company: str | None) -> str | None:
    """The country a lead is tiered and routed by: the contact's, else the company's. A value
    intake kept as sent ('Deutchland': not an upper-case ISO code) gives way to a code the other
    has, and is used only when neither has one (no rule names it, so it matches none)."""
    for value in (contact, company):
        if is_country_code(value):
            return value
    return contact or company


def is_country_code(value: str | None) -> bool:
    """A country as intake normalizes it (ISO 3166-1 alpha-2), not one it kept as sent."""
    return value is not None and len(value) == 2 and value.isalpha() and value.isupper()


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host, no blanks and a port in range: anything else fails at
    every send, after it was accepted (a webhook, a CRM subscription), and a link leads nowhere."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value.strip()):
        return False
    try:
        return parts.port is None or 0 < parts.port
    except ValueError:  # not a number, or beyond 65535
        return False


def _http_url(value: str | None) -> str | None:
    if value is not None and not is_http_url(value):
        raise ValueError(f"{value!r} is not an http(s) URL like 'https://hooks.example.com/leadsla'")
    return value


def _email_address(value: str | None) -> str | None:
    """An address, bare or with a name ('leadsla <alerts@example.com>'): mail to anything else is
    refused by the server at every send."""
    if value is not None:
        _, address = parseaddr(value)
        local, at, domain = address.rpartition("@")
        if not (local and at and domain) or " " in address:
            raise ValueError(f"{value!r} is not an email address like 'alerts@example.com'")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
EmailAddress = Annotated[str, AfterValidator(_email_address)]


class Strict(BaseModel):
    # allow_inf_nan=False: YAML reads .inf and .nan as numbers; no setting means either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _errors_at(model: type, problems: list[tuple[tuple[str | int, ...], Any, str]]) -> ValidationError:
    """Errors of a model's check named by the paths of the fields inside it (loc, input, message),
    as a field's own validator would name them: a check across fields knows the exact one."""
    return ValidationError.from_exception_data(model.__name__, [
        {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}
        for loc, value, message in problems])


def _matches_something(values: list[Any] | None) -> list[Any] | None:
    if values is not None and not values:
        raise ValueError("an empty list matches no lead; leave the condition out to match any")
    return values


_T = TypeVar("_T")
# A condition's accepted values: left out, it accepts anything; an empty list would accept nothing.
Condition = Annotated[list[_T] | None, AfterValidator(_matches_something)]


# ---- tiers and dedupe -----------------------------------------------------------------------


class TierCondition(Strict):
    intent: Condition[str] = None
    source: Condition[str] = None
    min_score: float | None = None
    countries: Condition[CountryCode] = None


class TierRule(Strict):
    tier: str
    when: TierCondition = TierCondition()


class Tiers(Strict):
    default: str = "C"
    rules: list[TierRule] = Field(default_factory=list)

    @property
    def order(self) -> tuple[str, ...]:
        """The tiers, most urgent first: in the order the rules first name them, the default last
        (kept per configuration). Names mean nothing by themselves: `hot, warm, cold` and
        `high, medium, low` are ordered by the rules, not alphabetically."""
        return _tier_order(self)

    def rank(self, tier: str) -> int:
        """Lower is more urgent: the tier's place in `order`; a tier the configuration does not
        name (a lead queued under an older configuration) ranks after all of them."""
        return _tier_ranks(self).get(tier, len(self.order))

    def key(self, tier: str) -> tuple[int, str]:
        """Where a tier's leads go in the router's queue: by rank, and between tiers the
        configuration does not name (equal rank), by name. `key(a) <= key(b)`: a lead of `a`
        drains before or with one of `b`."""
        return (self.rank(tier), tier)


class Dedupe(Strict):
    window: Duration = 30 * 86400
    match_on: list[Literal["email", "phone"]] = Field(default_factory=lambda: ["email", "phone"])


# ---- calendars ------------------------------------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = get_args(Weekday)
_SPAN = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")  # 9:00-17:30 too


def _parse_span(text: str) -> tuple[time, time | None]:
    match = _SPAN.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a span like '09:00-17:30'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ValueError(f"{text!r} has an impossible time")
    end = None if h2 == 24 else time(h2, m2)  # None: until midnight
    if end is not None and end <= time(h1, m1):
        raise ValueError(f"{text!r} ends before it starts (split spans that cross midnight)")
    return time(h1, m1), end


def _span(text: str) -> str:
    _parse_span(text)
    return text


# Checked one by one, so an error names the span's own path (hours.mon.0).
Span = Annotated[str, AfterValidator(_span)]


def _apart(spans: list[str]) -> list[str]:
    """A day's spans may touch (09:00-12:00, 12:00-17:00) but not overlap: an overlap is a typo
    (11:00 for 13:00) that would otherwise quietly open the day longer than meant."""
    ordered = sorted(((_parse_span(text), i, text) for i, text in enumerate(spans)), key=lambda s: s[0][0])
    for ((_, end), i, text), ((start, _), j, other) in pairwise(ordered):
        if end is None or start < end:
            first, second = sorted([(i, text), (j, other)])
            raise ValueError(f"{first[1]!r} ({{day}}.{first[0]}) and {second[1]!r} ({{day}}.{second[0]}) overlap")
    return spans


class PublicHolidays(Strict):
    """A country's public holidays, from the `holidays` package, closed like the calendar's own
    `holidays` dates (which still count): no list to keep up to date every year."""

    # ISO 3166 alpha-2: US, DE, GB ('gb' is GB, as everywhere else in the file)
    country: Annotated[str, AfterValidator(lambda code: code.strip().upper())]
    subdivision: str | None = None  # a state or province where holidays differ: CA in the US, BY in DE

    @model_validator(mode="after")
    def _known(self) -> PublicHolidays:
        import holidays  # here: most configurations name no public holidays, and its tables are large

        supported = holidays.list_supported_countries()
        if self.country not in supported:
            raise ValueError(f"{self.country!r} is not a country with known public holidays; use an ISO 3166 "
                             "alpha-2 code like 'US', 'DE' or 'GB'")
        if self.subdivision is not None and self.subdivision not in supported[self.country]:
            raise ValueError(f"{self.subdivision!r} is not a subdivision of {self.country}; known: "
                             f"{', '.join(supported[self.country][:20])}{' ...' if len(supported[self.country]) > 20 else ''}")
        return self


class CalendarConfig(Strict):
    timezone: str = "UTC"
    # weekday -> spans like "09:00-17:30"; a calendar without hours is open around the clock.
    hours: dict[Weekday, list[Span]] | None = None
    holidays: list[date] = Field(default_factory=list)
    public_holidays: PublicHolidays | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_time_zone(value):
            raise ValueError(f"{value!r} is not an IANA time zone")
        return value

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is None:
            return value
        if not any(value.values()):
            raise ValueError("a calendar with hours needs at least one open span (omit `hours` for 24x7)")
        return value

    @field_validator("hours")
    @classmethod
    def _spans_apart(cls, value: dict[str, list[str]] | None, info: ValidationInfo) -> dict[str, list[str]] | None:
        if (info.context or {}).get("stored"):
            return value  # hours stored before this check: business hours count an overlap once
        problems = []
        for day, spans in (value or {}).items():
            try:
                _apart(spans)
            except ValueError as exc:
                # Named by the day's path: hours.mon, as an error in one span is hours.mon.0.
                problems.append(((day,), spans, str(exc).format(day=day)))
        if problems:
            raise _errors_at(cls, problems)
        return value

    def weekly_spans(self) -> dict[int, list[tuple[time, time | None]]]:
        """Weekday number (Monday=0) -> sorted open spans; None when always open."""
        hours = self.hours or {}
        return {i: sorted((_parse_span(s) for s in hours.get(day, [])), key=lambda span: span[0])
                for i, day in enumerate(WEEKDAYS)}


# How far ahead business-hours arithmetic looks for open time (shared.business_hours): a calendar
# with no open hours in that long is taken as never open.
BUSINESS_HORIZON_DAYS = 3 * 366


# ---- people and routing ---------------------------------------------------------------------


def _language_code(value: str) -> str:
    """An ISO 639 code as the primary language of the tags leads carry ('DE', 'de-AT', 'deu' -> 'de'):
    the router compares a lead's primary language with these, so `DE` matched no German lead."""
    import pycountry  # here: most configurations name no languages, and its tables are large

    primary = re.split(r"[-_]", value.strip())[0].lower()
    found = None
    if len(primary) == 2:
        found = pycountry.languages.get(alpha_2=primary)
    elif len(primary) == 3:
        found = pycountry.languages.get(alpha_3=primary)
    if found is not None:
        return getattr(found, "alpha_2", None) or found.alpha_3
    try:
        named = pycountry.languages.lookup(value.strip())
        hint = f"; did you mean {getattr(named, 'alpha_2', None) or named.alpha_3!r}?"
    except LookupError:
        hint = " like 'en', 'de' or 'pt'"
    raise ValueError(f"{value!r} is not a language code{hint}")


OwnerStatus = Literal["active", "away", "offline", "out_of_office"]


def _status_alias(value: object) -> object:
    return "active" if value == "available" else value  # the first configs said "available"


class Owner(Strict):
    id: str
    name: str | None = None
    email: EmailAddress | None = None
    manager_id: str | None = None
    status: Annotated[OwnerStatus, BeforeValidator(_status_alias)] = "active"
    until: datetime | None = None  # when out_of_office ends; the owner is active again from then
    capacity: int | None = Field(default=None, ge=0)  # open leads at once
    daily_cap: int | None = Field(default=None, ge=0)  # assignments per day in the owner's calendar
    weight: int = Field(default=1, ge=1)  # share under the `weighted` method
    # Languages the owner speaks, read as the primary language of a lead's tag ('de' for de-AT).
    languages: list[Annotated[str, AfterValidator(_language_code)]] = Field(default_factory=list)
    calendar: str | None = None
    working_hours: CalendarConfig | None = None  # the owner's own hours; wins over `calendar`

    @field_validator("until")
    @classmethod
    def _aware_until(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-11-30T09:00:00Z")
        return value


class Team(Strict):
    id: str
    name: str | None = None
    manager_id: str | None = None
    members: list[str]
    calendar: str | None = None  # the team's hours and time zone


class RuleMatch(Strict):
    tiers: Condition[str] = None
    countries: Condition[CountryCode] = None
    regions: Condition[str] = None  # names from `routing.regions`
    sources: Condition[str] = None
    intents: Condition[str] = None
    products: Condition[str] = None
    languages: Condition[Annotated[str, AfterValidator(_language_code)]] = None  # as owners' are read
    company_sizes: Condition[str] = None  # bands like "1-50", "201-500", "1000+"
    industries: Condition[str] = None
    # any attribute of the lead -> accepted values
    attributes: dict[str, Annotated[list[str], AfterValidator(_matches_something)]] | None = None

    @field_validator("company_sizes")
    @classmethod
    def _bands(cls, value: list[str] | None) -> list[str] | None:
        for band in value or []:
            if size_band(band) is None:
                raise ValueError(f"{band!r} is not a size band like '51-200' or '1000+'")
        return value

    @property
    def is_catch_all(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


# At most 18 digits a bound (64-bit): a lead's size kept as sent can be any text, and int() of
# more than 4,300 digits raises, which stopped the router on the lead.
_BAND = re.compile(r"^\s*(\d{1,18})\s*(?:-\s*(\d{1,18})|\+)?\s*$")


def size_band(text: str | int | float) -> tuple[int, int | None] | None:
    """'201-500' -> (201, 500); '1000+' -> (1000, None); '42' -> (42, 42); else None."""
    match = _BAND.match(str(text))
    if not match:
        return None
    low = int(match.group(1))
    if match.group(2) is not None:
        return (low, int(match.group(2))) if int(match.group(2)) >= low else None
    return (low, None) if str(text).strip().endswith("+") else (low, low)


# Lead fields a rule may require; `attributes.<name>` is accepted too.
REQUIRABLE_FIELDS = (
    "contact.country", "contact.language", "contact.email", "contact.phone", "company.name",
    "company.domain", "company.size", "company.industry", "intent.product",
)


class RoutingRule(Strict):
    id: str
    match: RuleMatch = RuleMatch()
    team: str | None = None
    method: Literal["round_robin", "weighted", "least_loaded", "owner"] = "round_robin"
    owner: str | None = None  # the named owner of method `owner`
    # Fields the team needs to work the lead; a lead without them goes to the fallback owner
    # with reason `missing_data`.
    requires: list[str] = Field(default_factory=list)
    fallback_owner: str | None = None  # this rule's fallback; routing.fallback_owner otherwise

    @field_validator("requires")
    @classmethod
    def _requirable(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in REQUIRABLE_FIELDS and not (name.startswith("attributes.") and len(name) > 11):
                raise ValueError(f"{name!r} is not one of {', '.join(REQUIRABLE_FIELDS)} or attributes.<name>")
        return value

    @model_validator(mode="after")
    def _target(self) -> RoutingRule:
        if self.method == "owner" and not self.owner:
            raise ValueError("method `owner` needs `owner`")
        if self.method != "owner" and not self.team:
            raise ValueError(f"method `{self.method}` needs `team`")
        return self


class Routing(Strict):
    rules: list[RoutingRule] = Field(default_factory=list)
    fallback_owner: str | None = None
    # region -> ISO country codes
    regions: dict[str, Annotated[list[CountryCode], AfterValidator(_matches_something)]] = Field(default_factory=dict)
    # An open lead of the same company domain sends a new lead to that lead's owner, if eligible.
    account_match: bool = True
    # Tiers that may go to an owner outside their working hours (urgent leads).
    off_hours_tiers: list[str] = Field(default_factory=list)
    # What an owner's open, untouched leads do when the owner goes out of office.
    on_out_of_office: Literal["keep", "reroute_untouched"] = "keep"
    # How often the queue is checked for leads someone can now take (working hours starting,
    # an absence ending); status and capacity changes drain it at once.
    queue_check_seconds: float = Field(default=5.0, gt=0)


# ---- SLA policies ---------------------------------------------------------------------------


class MetricTarget(Strict):
    target: Duration
    warn_at: list[int] = Field(default_factory=lambda: [50, 80])
    # next_action only: the cadence is `touches` follow-ups, each due `target` after the previous
    # touch, all within `within` of the first response; then the lead goes to nurture.
    touches: int = Field(default=3, ge=1)
    within: Duration | None = None
    # Per-metric overrides of the policy's settings (None: the policy's).
    calendar: str | None = None
    start_on: Literal["received", "assigned"] | None = None
    on_reassign: Literal["continue", "reset"] | None = None
    # Whose time zone the calendar's hours are read in: the calendar's own, or the owner's (their
    # calendar's zone), the lead's (contact.timezone) or the team's (its calendar's zone).
    timezone: Literal["calendar", "owner", "lead", "team"] = "calendar"

    @field_validator("warn_at")
    @classmethod
    def _percents(cls, value: list[int]) -> list[int]:
        if any(not 0 < p < 100 for p in value):
            raise ValueError("warning percents must be between 1 and 99")
        return sorted(set(value))


class PolicyFilter(Strict):
    tiers: Condition[str] = None
    sources: Condition[str] = None


SlaMetric = Literal["first_response", "next_action", "qualification"]


# Outcomes that record the buyer's engagement (open and click tracking), not anyone reaching out:
# a rule without `outcomes` does not count them; a rule that lists them in `outcomes` does.
ENGAGEMENT_OUTCOMES = frozenset({"opened", "clicked"})
# The activity types that are someone reaching the buyer (a note is none; a disposition or an
# opt-out closes the lead).
TOUCH_TYPES = frozenset({"call", "email", "meeting", "sms", "chat"})

# A touch its sender dates more than this before a clock began (a timer, an assignment, an escalation)
# is history: a CRM back-filling a lead's past, no response. Less is the senders' clocks drifting.
HISTORY_DRIFT = timedelta(minutes=5)


def is_history(occurred_at: datetime, began: datetime) -> bool:
    """Whether a touch dated `occurred_at` was made before a clock that began at `began` (beyond the
    clocks' drift): the one rule the SLA clock, the router and the notifier judge history by."""
    return occurred_at < began - HISTORY_DRIFT


# How far a sender's occurred_at may precede intake's acceptance and still date a touch (the
# default of LEADSLA_SLA_TOUCH_SKEW_SECONDS).
TOUCH_SKEW = timedelta(minutes=5)


def touch_time(occurred_at: datetime, accepted_at: datetime, now: datetime, skew: timedelta) -> datetime:
    """When a touch counts as made: the sender's occurred_at, kept within `skew` before intake
    accepted it, and never after the acceptance (nor after `now`, if the clocks disagree). The SLA
    clock judges by it, and reporting measures time to first response by it."""
    return max(min(occurred_at, accepted_at, now), min(accepted_at, now) - skew)


def metric_calendar(policy: SlaPolicy, metric: str) -> str:
    """The calendar a policy's metric is timed by: its own, else the policy's (the SLA clock times
    it so; reporting measures business time on it)."""
    return policy.metrics[metric].calendar or policy.calendar  # type: ignore[index]


def keeps_owner(state: str, due_at: datetime | str | None, as_of: datetime | None) -> bool:
    """Whether a live timer stays with its owner through an owner change made at `as_of`: one
    already past its deadline then (not judged yet) stays with the owner who missed it. The SLA
    clock and reporting's per-owner views hand timers over by this one rule."""
    if as_of is None or due_at is None or state != "open":
        return False
    due = datetime.fromisoformat(due_at) if isinstance(due_at, str) else due_at
    return due < as_of


# The contract's activity types; intake reads other names CRMs and engagement tools give them as these.
ActivityType = Literal["call", "email", "meeting", "sms", "chat", "note", "disposition", "pause", "resume", "opt_out"]
ACTIVITY_TYPES: tuple[str, ...] = get_args(ActivityType)
ACTIVITY_TYPE_ALIASES = {
    "phone": "call", "phone_call": "call", "calls": "call", "e_mail": "email", "mail": "email",
    "text": "sms", "text_message": "sms", "live_chat": "chat", "unsubscribe": "opt_out", "unsubscribed": "opt_out",
    "do_not_contact": "opt_out", "optout": "opt_out", "opted_out": "opt_out",
    # Plurals, directions and CRM object names (Salesforce logs a call as "Logged Call", books a
    # meeting as an "Appointment"; engagement tools say "Outbound Call", "Email Sent").
    "outbound_call": "call", "inbound_call": "call", "logged_call": "call", "call_logged": "call",
    "emails": "email", "email_sent": "email", "sent_email": "email", "outbound_email": "email",
    "meetings": "meeting", "appointment": "meeting", "notes": "note", "sms_message": "sms",
    "chats": "chat", "snooze": "pause", "unpause": "resume", "unsnooze": "resume",
}
# The contract's outcomes per activity type; other outcomes are kept as sent.
OUTCOMES = {
    "call": ("connected", "no_answer", "voicemail", "busy", "wrong_number"),
    "meeting": ("booked", "held", "no_show", "cancelled", "rescheduled"),
    "email": ("sent", "replied", "bounced", "opened", "clicked"),
}
# Outcomes as CRMs and engagement tools spell them (HubSpot meetings: SCHEDULED, COMPLETED,
# CANCELED; Salesloft and Outreach calls: Answered, Left Voicemail, Bad Number), read as the
# contract's, so a policy's `outcomes` and the cadence's "booked meeting" see them.
OUTCOME_ALIASES = {
    "call": {"answered": "connected", "connect": "connected", "left_voicemail": "voicemail",
             "left_vm": "voicemail", "voice_mail": "voicemail", "left_voice_mail": "voicemail", "vm": "voicemail",
             "not_answered": "no_answer", "unanswered": "no_answer", "noanswer": "no_answer",
             "bad_number": "wrong_number", "invalid_number": "wrong_number", "line_busy": "busy"},
    "meeting": {"scheduled": "booked", "meeting_booked": "booked", "completed": "held", "attended": "held",
                "occurred": "held", "noshow": "no_show", "did_not_attend": "no_show", "canceled": "cancelled"},
    "email": {"reply": "replied", "bounce": "bounced", "hard_bounce": "bounced", "soft_bounce": "bounced",
              "open": "opened", "click": "clicked"},
}
# Activities that never count as a touch, whatever a policy lists: they pause, resume or close.
NEVER_TOUCHES = {"pause": "it pauses the clocks", "resume": "it resumes the clocks",
                 "opt_out": "it closes the lead"}


class TouchRule(Strict):
    """An activity type that counts as a touch, only with these outcomes (None: any outcome) and
    only for these metrics (None: all). E.g. a no_answer call as a cadence attempt only."""

    type: str
    outcomes: list[str] | None = None
    metrics: list[SlaMetric] | None = None


class SlaPolicy(Strict):
    id: str
    filter: PolicyFilter = PolicyFilter()
    start_on: Literal["received", "assigned"] = "assigned"
    on_reassign: Literal["continue", "reset"] = "continue"
    calendar: str = "always"
    metrics: dict[SlaMetric, MetricTarget] = Field(min_length=1)
    qualifying_touches: list[str | TouchRule] = Field(default_factory=lambda: ["call", "email", "meeting", "sms"])
    # Whose activities count: anyone's, or only the lead's current owner's.
    touch_actors: Literal["anyone", "owner"] = "anyone"

    @field_validator("qualifying_touches")
    @classmethod
    def _touches_are_activities(cls, value: list[str | TouchRule]) -> list[str | TouchRule]:
        """A touch names an activity type intake records (as it reads them: 'phone' is a call);
        anything else would never count, and the clock would breach leads that were answered."""
        problems = []
        for i, rule in enumerate(value):
            kind, loc = (rule, (i,)) if isinstance(rule, str) else (rule.type, (i, "type"))
            if kind in NEVER_TOUCHES:
                problems.append((loc, kind, f"{'an' if kind[0] in 'aeiou' else 'a'} {kind.replace('_', '-')} is never a touch: {NEVER_TOUCHES[kind]}"))
            elif kind not in ACTIVITY_TYPES:
                near = ACTIVITY_TYPE_ALIASES.get(kind) or next(iter(difflib.get_close_matches(
                    kind, ACTIVITY_TYPES, n=1, cutoff=0.6)), None)
                problems.append((loc, kind, f"{kind!r} is not an activity type"
                                 + (f"; did you mean {near!r}?" if near else f" ({', '.join(ACTIVITY_TYPES)})")))
        if problems:
            raise _errors_at(cls, problems)
        return value

    def counts_as_touch(self, metric: str, activity_type: str, outcome: str | None, actor: str | None,
                        owner_id: str | None) -> bool:
        """Whether an activity is a touch for `metric` under this policy: type, outcome and actor.
        The one rule for everyone who judges touches (the SLA clock, reporting's time to first response)."""
        if self.touch_actors == "owner" and owner_id is not None and actor != owner_id:
            return False
        engagement = outcome in ENGAGEMENT_OUTCOMES
        for rule in self.qualifying_touches:
            if isinstance(rule, str):
                if rule == activity_type and not engagement:
                    return True
            elif (rule.type == activity_type
                  and (outcome in rule.outcomes if rule.outcomes is not None else not engagement)
                  and (rule.metrics is None or metric in rule.metrics)):
                return True
        return False


# ---- escalation and channels ----------------------------------------------------------------


class ChannelRateLimit(Strict):
    """At most `max` sends per `per` on one channel; the rest wait their turn (nothing is dropped)."""

    max: int = Field(ge=1)
    per: Duration = 60.0


def _env_name(value: str) -> str:
    """The name of an environment variable, never its value: a URL or a password pasted into a
    `*_env` field was printed in every delivery error ('environment variable https://… is not set')."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("is the name of an environment variable (letters, digits and _), not its value")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


def _no_reference(value: SecretStr | None) -> SecretStr | None:
    if value is not None and re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", value.get_secret_value()):
        raise ValueError("looks like a reference to an environment variable, which the file does not "
                         "expand: name it in `secret_env` instead")
    return value


class WebhookChannel(Strict):
    type: Literal["webhook"] = "webhook"
    url: HttpUrl
    secret: Annotated[SecretStr | None, AfterValidator(_no_reference)] = None
    secret_env: EnvName | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    rate_limit: ChannelRateLimit | None = None

    @model_validator(mode="after")
    def _has_secret(self) -> WebhookChannel:
        if not (self.secret or self.secret_env):
            raise ValueError("a webhook channel needs `secret` or `secret_env` to sign its requests")
        return self

    def signing_secret(self) -> bytes:
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        value = os.environ.get(self.secret_env or "")
        if not value:
            raise MissingSecret(f"environment variable {self.secret_env} (webhook secret) is not set")
        return value.encode()


class MissingSecret(RuntimeError):
    """A channel's secret is referenced by an environment variable that is not set."""


def _env_secret(name: str | None, what: str) -> str:
    value = os.environ.get(name or "")
    if not value:
        raise MissingSecret(f"environment variable {name} ({what}) is not set")
    return value


class SlackChannel(Strict):
    """A Slack-compatible incoming webhook. Its URL is the secret, so it comes from the environment."""

    type: Literal["slack"]
    url_env: EnvName
    timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    rate_limit: ChannelRateLimit | None = None

    def webhook_url(self) -> str:
        return _env_secret(self.url_env, "Slack webhook URL")


class EmailChannel(Strict):
    """Email over SMTP. `tls`: starttls (upgrade on the submission port), tls (implicit, 465) or
    none (a local relay). The password comes from the environment only."""

    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["starttls", "tls", "none"] = "starttls"
    validate_certs: bool = True
    username: str | None = None
    password_env: EnvName | None = None
    from_address: EmailAddress = Field(alias="from")
    reply_to: EmailAddress | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    rate_limit: ChannelRateLimit | None = None

    @model_validator(mode="after")
    def _login_complete(self) -> EmailChannel:
        if bool(self.username) != bool(self.password_env):
            raise ValueError("`username` and `password_env` go together")
        return self

    def password(self) -> str | None:
        return _env_secret(self.password_env, "SMTP password") if self.password_env else None


def _channel_type(value: Any) -> str:
    # `type` may be left out for webhooks: configurations written before other channels existed.
    if isinstance(value, dict):
        return value.get("type", "webhook")
    return getattr(value, "type", "webhook")


Channel = Annotated[
    Annotated[WebhookChannel, Tag("webhook")] | Annotated[SlackChannel, Tag("slack")]
    | Annotated[EmailChannel, Tag("email")],
    Discriminator(_channel_type, custom_error_type="channel_type",
                  custom_error_message="`type` must be webhook, slack or email (or left out for a webhook)"),
]


class QuietHours(Strict):
    # Messages to people (Slack, email) wait until the recipient's calendar (owners.*.calendar)
    # opens, except for leads of these tiers. Webhooks go to systems and are never held.
    urgent_tiers: list[str] = Field(default_factory=list)


class Digest(Strict):
    # After `after` messages to one person on one people channel within `window`, the rest of
    # that window's messages go as one digest at the window's end.
    window: Duration = 300
    after: int = Field(default=10, ge=1)


class NotifierSettings(Strict):
    # Messages link to the lead at `<link_base_url>/v1/leads/<lead_id>` (e.g. your reporting URL
    # or a CRM deep link base); without it they carry no link.
    link_base_url: HttpUrl | None = None
    # Or any link with the lead's id in it, a CRM's for one: `https://crm.example.com/x?id={lead_id}`
    # (wins over link_base_url for the lead; a digest still links to `<link_base_url>/board`).
    link_template: str | None = None

    @field_validator("link_template")
    @classmethod
    def _template_has_lead_id(cls, value: str | None) -> str | None:
        if value is not None:
            if "{lead_id}" not in value:
                raise ValueError(f"{value!r} has no {{lead_id}} (where the lead's id goes)")
            try:
                _http_url(value.replace("{lead_id}", "x"))  # a URL once the id is in
            except ValueError:
                raise ValueError(f"{value!r} is not an http(s) URL like "
                                 "'https://crm.example.com/leads/{lead_id}'") from None
        return value
    # CRM subscriptions: how long one POST may take and how many tries before giving up.
    subscription_timeout_seconds: float = Field(default=5.0, gt=0)
    subscription_max_attempts: int = Field(default=8, ge=1)
    # A delivery leased for sending is retried after this long if its sender vanished (a crash).
    lease_seconds: float = Field(default=60.0, gt=0)
    quiet_hours: QuietHours | None = None
    digest: Digest | None = Digest()
    # CRM deliveries that went out (or were cancelled) are kept this long; failed ones until removed.
    keep_delivered: Duration = 7 * 86400


def _some_channel(channels: list[str]) -> list[str]:
    if not channels:
        raise ValueError("a step needs at least one channel (a step without one would tell nobody)")
    return channels


def _step_delay(value: Any) -> float:
    """A step's delay: a duration, or none at all in any spelling ('0', '0s', '0m')."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    if isinstance(value, str) and re.fullmatch(r"\s*0+\s*[smhd]?\s*", value):
        return 0.0
    return parse_duration(value)


class EscalationStep(Strict):
    step: int = Field(ge=1)
    after: Annotated[float, BeforeValidator(_step_delay)] = 0.0
    notify: list[Literal["owner", "manager", "lead_ops"]] = Field(default_factory=lambda: ["owner"])
    channels: Annotated[list[str], AfterValidator(_some_channel)]
    reassign: bool = False  # when the step fires, the router also routes the lead to someone else


class EscalationPolicy(Strict):
    id: str
    triggers: list[Literal["sla.breached", "sla.warning"]] = Field(default_factory=lambda: ["sla.breached"])
    steps: list[EscalationStep] = Field(min_length=1)


# ---- intake ---------------------------------------------------------------------------------


class RateLimit(Strict):
    """A token bucket per key: `rate` requests a second on average, bursts up to `burst`."""

    rate: float = Field(default=50.0, gt=0)
    burst: int = Field(default=200, ge=1)


class IntakeSource(Strict):
    """Defaults for one source (the name a source key is bound to)."""

    default_region: CountryCode | None = None  # ISO 3166 country for national phone numbers
    timezone: str | None = None  # IANA zone for timestamps sent without an offset
    default_intent: str | None = None
    rate_limit: RateLimit | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return None if value is None else CalendarConfig._known_zone(value)


def _e164(text: str, region: str | None) -> str:
    """A suppressed phone as intake writes a lead's (`shared.phones`), so the two compare equal."""
    # Imported here: most services never read a phone, and its tables are large.
    from .phones import normalize_phone

    try:
        return normalize_phone(text, region).e164
    except ValueError:
        if region is None and not text.strip().startswith("+"):
            raise ValueError("has no country code (+44 ...) and there is no intake.default_region to read "
                             "it in") from None
        raise


class Suppression(Strict):
    """Contacts nobody may contact: leads matching these are accepted but not contactable."""

    emails: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)
    phones: list[str] = Field(default_factory=list)


class IntakeConfig(Strict):
    default_region: CountryCode | None = None
    timezone: str = "UTC"
    default_intent: str = "inquiry"
    # canonical intent type -> other spellings senders use ("Book a demo" -> demo_request)
    intent_aliases: dict[str, list[str]] = Field(default_factory=dict)
    rate_limit: RateLimit = RateLimit()
    sources: dict[str, IntakeSource] = Field(default_factory=dict)
    # how long an activity read from Kafka waits for a lead that has not arrived yet
    activity_wait: Duration = 600
    suppression: Suppression = Suppression()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return IntakeSource._known_zone(value)  # refused when the file is read, not per request

    @field_validator("suppression")
    @classmethod
    def _suppressed_phones_in_e164(cls, value: Suppression, info: ValidationInfo) -> Suppression:
        """Suppressed phones as intake writes leads' phones (E.164, a national number read in
        `default_region`): compared as written, '+1 (415) 555-2671' suppressed nobody."""
        region = info.data.get("default_region")
        phones, problems = [], []
        for i, text in enumerate(value.phones):
            try:
                phones.append(_e164(text, region))
            except ValueError as exc:
                problems.append((("phones", i), text, f"{text!r} {exc}"))
        if problems:
            raise _errors_at(Suppression, problems)
        return value.model_copy(update={"phones": phones})

    def source(self, name: str) -> IntakeSource:
        """The source's settings with the global defaults filled in. Every value was validated
        when the configuration was read, so the merge is not validated again (it runs for every
        request and every raw record), and each source's merge is kept with this configuration."""
        merged = _merged_sources(self)
        found = merged.get(name)
        if found is None:
            own = self.sources.get(name) or IntakeSource()
            found = IntakeSource.model_construct(
                default_region=own.default_region or self.default_region,
                timezone=own.timezone or self.timezone,
                default_intent=own.default_intent or self.default_intent,
                rate_limit=own.rate_limit or self.rate_limit,
            )
            if len(merged) < 1000:  # names come from keys: bounded however many there are
                merged[name] = found
        return found


# ---- the whole file -------------------------------------------------------------------------


class Config(Strict):
    tiers: Tiers = Tiers()
    dedupe: Dedupe = Dedupe()
    calendars: dict[str, CalendarConfig] = Field(default_factory=dict)
    owners: list[Owner] = Field(default_factory=list)
    teams: list[Team] = Field(default_factory=list)
    lead_ops: list[str] = Field(default_factory=list)
    routing: Routing = Routing()
    sla_policies: list[SlaPolicy] = Field(default_factory=list)
    disposition_reasons: dict[str, list[str]] = Field(default_factory=dict)
    escalation_policies: list[EscalationPolicy] = Field(default_factory=list)
    channels: dict[str, Channel] = Field(default_factory=dict)
    intake: IntakeConfig = IntakeConfig()
    notifier: NotifierSettings = NotifierSettings()

    @model_validator(mode="after")
    def _references_resolve(self) -> Config:
        problems: list[str] = []
        owners = {o.id for o in self.owners}
        teams = {t.id for t in self.teams}
        calendars = set(self.calendars) | {"always"}
        problems.extend(self._duplicate_ids())
        for i, team in enumerate(self.teams):
            if not team.members:
                problems.append(f"teams.{i}.members: team {team.id!r} has no members")
            for j, member in enumerate(team.members):
                if member not in owners:
                    problems.append(f"teams.{i}.members.{j}: unknown owner {member!r}")
                elif member in team.members[:j]:
                    problems.append(f"teams.{i}.members.{j}: {member!r} is listed twice (also members."
                                    f"{team.members.index(member)}); for a larger share use the owner's `weight`")
            if team.manager_id and team.manager_id not in owners:
                problems.append(f"teams.{i}.manager_id: unknown owner {team.manager_id!r}")
        for i, owner in enumerate(self.owners):
            if owner.calendar and owner.calendar not in calendars:
                problems.append(f"owners.{i}.calendar: unknown calendar {owner.calendar!r}")
            if owner.manager_id and owner.manager_id not in owners:
                problems.append(f"owners.{i}.manager_id: unknown owner {owner.manager_id!r}")
        for i, owner_id in enumerate(self.lead_ops):
            if owner_id not in owners:
                problems.append(f"lead_ops.{i}: unknown owner {owner_id!r}")
        problems.extend(self._routing_problems(owners, teams))
        if self.routing.fallback_owner and self.routing.fallback_owner not in owners:
            problems.append(f"routing.fallback_owner: unknown owner {self.routing.fallback_owner!r}")
        for i, policy in enumerate(self.sla_policies):
            if policy.calendar not in calendars:
                problems.append(f"sla_policies.{i}.calendar: unknown calendar {policy.calendar!r}")
            for metric, target in policy.metrics.items():
                if target.calendar is not None and target.calendar not in calendars:
                    problems.append(
                        f"sla_policies.{i}.metrics.{metric}.calendar: unknown calendar {target.calendar!r}")
        problems.extend(self._targets_beyond_horizon())
        for i, team in enumerate(self.teams):
            if team.calendar and team.calendar not in calendars:
                problems.append(f"teams.{i}.calendar: unknown calendar {team.calendar!r}")
        for i, policy in enumerate(self.escalation_policies):
            numbers = [step.step for step in policy.steps]
            for j, number in enumerate(numbers):
                if number in numbers[:j]:
                    # Steps are found by number: the second would send the first's messages again.
                    problems.append(f"escalation_policies.{i}.steps.{j}.step: step {number} is already "
                                    f"steps.{numbers.index(number)}; number each step once")
            for j, step in enumerate(policy.steps):
                for k, channel in enumerate(step.channels):
                    if channel not in self.channels:
                        problems.append(
                            f"escalation_policies.{i}.steps.{j}.channels.{k}: unknown channel {channel!r}"
                        )
        if problems:
            raise ValueError("\n".join(problems))  # one per line: a message may hold "; " itself
        return self

    def _targets_beyond_horizon(self) -> list[str]:
        """A target (or cadence window) longer than the open time its calendar has within the three
        years business-hours arithmetic looks ahead can never come due: the clock raised instead."""
        problems = []
        for i, policy in enumerate(self.sla_policies):
            for metric, target in policy.metrics.items():
                name = target.calendar or policy.calendar
                calendar = self.calendars.get(name)
                if calendar is None or calendar.hours is None:
                    continue
                weekly = sum(_open_minutes(spans) for spans in calendar.weekly_spans().values()) * 60
                for field, seconds in (("target", target.target), ("within", target.within)):
                    if seconds is not None and seconds > weekly * (BUSINESS_HORIZON_DAYS // 7):
                        problems.append(
                            f"sla_policies.{i}.metrics.{metric}.{field}: {seconds / 3600:g}h of open time is more than "
                            f"calendar {name!r} opens in three years ({weekly / 3600:g}h a week)")
        return problems

    def _duplicate_ids(self) -> list[str]:
        problems = []
        for path, items in (("owners", self.owners), ("teams", self.teams), ("routing.rules", self.routing.rules),
                            ("sla_policies", self.sla_policies), ("escalation_policies", self.escalation_policies)):
            first: dict[str, int] = {}
            for i, item in enumerate(items):
                if item.id in first:
                    problems.append(f"{path}.{i}.id: duplicate id {item.id!r} (also {path}.{first[item.id]})")
                first.setdefault(item.id, i)
        return problems

    def _routing_problems(self, owners: set[str], teams: set[str]) -> list[str]:
        problems = []
        rules = self.routing.rules
        for i, rule in enumerate(rules):
            if rule.team is not None and rule.team not in teams:
                problems.append(f"routing.rules.{i}.team: unknown team {rule.team!r}")
            for field in ("owner", "fallback_owner"):
                if getattr(rule, field) and getattr(rule, field) not in owners:
                    problems.append(f"routing.rules.{i}.{field}: unknown owner {getattr(rule, field)!r}")
            for j, region in enumerate(rule.match.regions or []):
                if region not in self.routing.regions:
                    problems.append(f"routing.rules.{i}.match.regions.{j}: unknown region {region!r}")
        # Every lead must match some rule: the last rule matches everything and requires nothing.
        if rules and not (rules[-1].match.is_catch_all and not rules[-1].requires):
            problems.append(f"routing.rules: the last rule ({rules[-1].id!r}) must be a catch-all "
                            "(no `match`, no `requires`) so that every lead has a rule")
        for i, rule in enumerate(rules[:-1]):
            # `requires` does not pass a lead on: one without the fields goes to the fallback owner.
            if rule.match.is_catch_all:
                problems.append(f"routing.rules.{i + 1}: unreachable, rule {rule.id!r} before it matches every lead")
                break
        return problems

    def calendar(self, name: str) -> CalendarConfig:
        return self.calendars.get(name) or CalendarConfig()

    def sla_policy(self, tier: str, source: str) -> SlaPolicy | None:
        """The SLA policy of a lead of this tier and source: the first whose filter matches."""
        for policy in self.sla_policies:
            f = policy.filter
            if (f.tiers is None or tier in f.tiers) and (f.sources is None or source in f.sources):
                return policy
        return None

    def sla_policy_by_id(self, policy_id: str | None) -> SlaPolicy | None:
        """The SLA policy a timer names (None for one the configuration no longer has)."""
        return next((p for p in self.sla_policies if p.id == policy_id), None)

    def owner(self, owner_id: str) -> Owner | None:
        return next((o for o in self.owners if o.id == owner_id), None)

    def owner_hours(self, owner: Owner) -> CalendarConfig | None:
        """The owner's hours: their own `working_hours`, which win over their `calendar`."""
        if owner.working_hours is not None:
            return owner.working_hours
        return self.calendar(owner.calendar) if owner.calendar else None


def config_warnings(config: Config, builtin_intents: Iterable[str] = ()) -> list[str]:
    """What is valid but almost certainly not meant, by path; `config apply` shows these and applies
    the file anyway. A tier no lead can have (a lead's tier is `tiers.default` or a rule's) picks
    nothing where it is named. An intent type a rule names that is not a known one but nearly is
    ('trail') is a typo: rules may name intent types of their own, and a lead matches those only
    when sent with exactly that type."""
    warnings = []
    tiers = {config.tiers.default} | {rule.tier for rule in config.tiers.rules}
    named = [(f"sla_policies.{i}.filter.tiers", p.filter.tiers) for i, p in enumerate(config.sla_policies)]
    named += [(f"routing.rules.{i}.match.tiers", r.match.tiers) for i, r in enumerate(config.routing.rules)]
    named += [("routing.off_hours_tiers", config.routing.off_hours_tiers)]
    if config.notifier.quiet_hours is not None:
        named += [("notifier.quiet_hours.urgent_tiers", config.notifier.quiet_hours.urgent_tiers)]
    warnings += [f"{path}.{k}: no lead can have tier {tier!r} (leads get {', '.join(sorted(tiers))}: "
                 "`tiers.default` or a tier of `tiers.rules`)"
                 for path, named_tiers in named for k, tier in enumerate(named_tiers or []) if tier not in tiers]
    warnings += _shadowed_tier_rules(config.tiers)
    warnings += _unmailable_people(config)
    warnings += _shadowed_policies(config.sla_policies)
    warnings += _shadowed_rules(config.routing.rules, config.routing.regions)
    for i, policy in enumerate(config.sla_policies):
        cadence = policy.metrics.get("next_action")
        if cadence is not None and cadence.within is not None and cadence.within < cadence.target:
            warnings.append(f"sla_policies.{i}.metrics.next_action.within: shorter than one follow-up's target: "
                            "a follow-up made when due is already past the window, so the cadence ends there")
    warnings += _day_targets_on_business_calendars(config)
    warnings += _misspelt_outcomes(config.sla_policies)
    known = {*builtin_intents, *config.intake.intent_aliases, config.intake.default_intent,
             *(s.default_intent for s in config.intake.sources.values() if s.default_intent)}
    configured = {intent for rule in config.tiers.rules for intent in rule.when.intent or []}
    intents = [(f"tiers.rules.{i}.when.intent", r.when.intent, known) for i, r in enumerate(config.tiers.rules)]
    # The tier rules' own types are the configuration's vocabulary (intake matches them exactly).
    intents += [(f"routing.rules.{i}.match.intents", r.match.intents, known | configured)
                for i, r in enumerate(config.routing.rules)]
    for path, types, vocabulary in intents:
        for k, intent in enumerate(types or []):
            near = difflib.get_close_matches(intent, sorted(vocabulary - {intent}), n=1, cutoff=0.8)
            if intent not in vocabulary and near:
                warnings.append(f"{path}.{k}: intent type {intent!r} is not a known one; did you mean {near[0]!r}? "
                                "(as written it matches only leads sent with exactly that type)")
    return warnings


def _misspelt_outcomes(policies: list[SlaPolicy]) -> list[str]:
    """An outcome a touch rule names that is one letter from one of the contract's ('conected'):
    senders' own outcomes are kept as sent, so a rule may name them, but a typo never matches."""
    warnings = []
    for i, policy in enumerate(policies):
        for j, rule in enumerate(policy.qualifying_touches):
            if isinstance(rule, str):
                continue
            known = {*OUTCOMES.get(rule.type, ()), *ENGAGEMENT_OUTCOMES}
            for k, outcome in enumerate(rule.outcomes or []):
                near = difflib.get_close_matches(outcome, sorted(known), n=1, cutoff=0.8)
                if outcome not in known and near:
                    warnings.append(f"sla_policies.{i}.qualifying_touches.{j}.outcomes.{k}: outcome {outcome!r} is "
                                    f"not a known {rule.type} outcome; did you mean {near[0]!r}? (as written it "
                                    "matches only activities sent with exactly that outcome)")
    return warnings


def _open_minutes(spans: list[tuple[time, time | None]]) -> int:
    """The minutes a day's spans are open, overlaps once."""
    minutes: set[int] = set()
    for start, end in spans:
        minutes.update(range(start.hour * 60 + start.minute, 24 * 60 if end is None else end.hour * 60 + end.minute))
    return len(minutes)


def _working_day_hours(calendar: CalendarConfig) -> float:
    """The open hours of a calendar's usual working day: the most common length among the days
    it opens (the longest of equally common ones); spans of a day that overlap count once."""
    lengths = [minutes / 60 for spans in calendar.weekly_spans().values() if (minutes := _open_minutes(spans))]
    return max(lengths, key=lambda length: (lengths.count(length), length))


def _day_targets_on_business_calendars(config: Config) -> list[str]:
    """A target in whole days on a calendar with opening hours: durations count the calendar's
    open time, so `1d` there is 24 open hours (about three working days of an office calendar),
    not "within a working day", which is what a sales-ops admin writing it nearly always means."""
    warnings = []
    for i, policy in enumerate(config.sla_policies):
        for metric, target in policy.metrics.items():
            name = target.calendar or policy.calendar
            calendar = config.calendars.get(name)
            days = target.target / 86400
            if calendar is None or calendar.hours is None or days < 1 or not days.is_integer():
                continue
            day = _working_day_hours(calendar)
            hours, minutes = divmod(round(days * day * 60), 60)
            meant = f"{hours}h" + (f"{minutes}m" if minutes else "")
            warnings.append(
                f"sla_policies.{i}.metrics.{metric}.target: {int(days)}d counts {int(days) * 24} open hours of "
                f"calendar {name!r}, about {days * 24 / day:.1f} of its {day:g}-hour working days; for "
                f"{'one working day' if days == 1 else f'{int(days)} working days'} write {meant} (or use "
                f"`calendar: always` for {int(days) * 24} hours around the clock)")
    return warnings


def shown(config: Config) -> dict[str, Any]:
    """The configuration as `GET /v1/config` shows it: under the names a file takes (a mail
    channel's `from`, not the field behind it), secrets masked."""
    return config.model_dump(mode="json", by_alias=True)


def _shadowed_tier_rules(tiers: Tiers) -> list[str]:
    """A lead gets the first tier rule that fits: a rule whose every lead an earlier rule already
    takes never applies (`demo_request` after a rule for `[demo_request, contact_sales]`,
    `min_score: 80` after `min_score: 70`). A rule without conditions gives every lead its tier:
    the rules after it and the default never apply (a `when` easy to leave empty when editing)."""
    first = next((i for i, rule in enumerate(tiers.rules) if rule.when == TierCondition()), None)
    warnings = []
    for j, later in enumerate(tiers.rules[:first]):
        for i, earlier in enumerate(tiers.rules[:j]):
            if _tier_covers(earlier.when, later.when):
                warnings.append(f"tiers.rules.{j}: never applies: tiers.rules.{i} (tier {earlier.tier!r}) comes "
                                "first and takes every lead it fits (a lead gets the first rule that fits)")
                break
    if first is None:
        return warnings
    why = (f"never applies: tiers.rules.{first} has no `when` and gives every lead tier {tiers.rules[first].tier!r} "
           "first (a lead gets the first rule that fits)")
    return [*warnings, *(f"tiers.rules.{i}: {why}" for i in range(first + 1, len(tiers.rules))),
            f"tiers.default: {why}"]


def _tier_covers(earlier: TierCondition, later: TierCondition) -> bool:
    """Whether every lead `later` fits, `earlier` fits too, as intake classifies (values exact)."""
    return (_takes_all(earlier.intent, later.intent) and _takes_all(earlier.source, later.source)
            and _takes_all(earlier.countries, later.countries)
            and (earlier.min_score is None or (later.min_score is not None and later.min_score >= earlier.min_score)))


def _takes_all(mine: list[str] | None, theirs: list[str] | None) -> bool:
    """Whether a condition list takes every value `theirs` does (None: any value), values exact."""
    return mine is None or (theirs is not None and set(theirs) <= set(mine))


def _shadowed_policies(policies: list[SlaPolicy]) -> list[str]:
    """A lead gets the first policy whose filter it passes: one whose every lead an earlier
    policy already takes never applies."""
    warnings = []
    for j, later in enumerate(policies):
        for i, earlier in enumerate(policies[:j]):
            if (_takes_all(earlier.filter.tiers, later.filter.tiers)
                    and _takes_all(earlier.filter.sources, later.filter.sources)):
                warnings.append(f"sla_policies.{j}: never applies: sla_policies.{i} ({earlier.id!r}) comes first "
                                f"and takes every lead its filter passes (a lead gets the first policy that fits)")
                break
    return warnings


def _covers(earlier: RuleMatch, later: RuleMatch, regions: dict[str, list[str]]) -> bool:
    """Whether every lead `later` matches, `earlier` matches too: each of its conditions is left
    out or accepts all that `later`'s accepts, as the router reads them: values folded; a rule's
    countries are those of its `countries` and its `regions` together (a region's rule covers a
    rule for one of its countries); sizes by the numbers their bands take in."""
    def folded(values: Iterable[str]) -> set[str]:
        return {str(v).strip().casefold() for v in values}

    def wider(mine: list[str] | None, theirs: list[str] | None) -> bool:
        return mine is None or (theirs is not None and folded(theirs) <= folded(mine))

    def countries(m: RuleMatch) -> set[str] | None:
        named = [folded(m.countries)] if m.countries is not None else []
        if m.regions is not None:
            named.append(folded(c for name in m.regions for c in regions.get(name, [])))
        return set.intersection(*named) if named else None

    mine_countries, their_countries = countries(earlier), countries(later)
    if mine_countries is not None and (their_countries is None or not their_countries <= mine_countries):
        return False
    if not _bands_cover(earlier.company_sizes, later.company_sizes):
        return False
    fields = [name for name in type(earlier).model_fields
              if name not in ("attributes", "regions", "countries", "company_sizes")]
    if not all(wider(getattr(earlier, name), getattr(later, name)) for name in fields):
        return False
    theirs = later.attributes or {}
    return all(key in theirs and wider(values, theirs[key]) for key, values in (earlier.attributes or {}).items())


def _bands_cover(mine: list[str] | None, theirs: list[str] | None) -> bool:
    """Whether the size bands `mine` take in every size `theirs` do (None: any size, and leads
    without one). The router places a lead's size by its lower bound."""
    if mine is None:
        return True
    if theirs is None:
        return False
    merged: list[list[int | None]] = []  # the bands' numbers as disjoint runs, lowest first
    for low, high in sorted(b for band in mine if (b := size_band(band)) is not None):
        last = merged[-1] if merged else None
        if last is not None and (last[1] is None or low <= last[1] + 1):
            last[1] = None if last[1] is None or high is None else max(last[1], high)
        else:
            merged.append([low, high])
    bands = [b for band in theirs if (b := size_band(band)) is not None]
    return all(any(low >= run_low and (run_high is None or (high is not None and high <= run_high))  # type: ignore[operator]
                   for run_low, run_high in merged) for low, high in bands)


def _shadowed_rules(rules: list[RoutingRule], regions: dict[str, list[str]]) -> list[str]:
    """A lead goes by the first rule it matches: one whose every lead an earlier rule already
    matches never routes anything. (A rule after a catch-all is an error, not this warning.)"""
    warnings = []
    for j, later in enumerate(rules):
        for i, earlier in enumerate(rules[:j]):
            if earlier.match.is_catch_all:
                break
            if _covers(earlier.match, later.match, regions) and not later.match.is_catch_all:
                warnings.append(f"routing.rules.{j}: never matches: routing.rules.{i} ({earlier.id!r}) comes first "
                                "and takes every lead it matches (a lead goes by the first rule that matches)")
                break
    return warnings


def _unmailable_people(config: Config) -> list[str]:
    """People an escalation step mails who have no `email`: each such mail fails at once (the
    recipient has no address) into dead letters. Who a role can reach: `owner` any team member
    or fallback owner, `manager` any manager named, `lead_ops` those listed; and any step can reach
    lead ops (a `system_delay` breach, or a lead nobody owns, goes to them instead)."""
    owners = {config.routing.fallback_owner} | {r.fallback_owner for r in config.routing.rules}
    owners |= {member for team in config.teams for member in team.members}
    managers = {o.manager_id for o in config.owners} | {t.manager_id for t in config.teams}
    reach = {"owner": owners, "manager": managers, "lead_ops": set(config.lead_ops)}
    warned = []
    for i, person in enumerate(config.owners):
        if person.email:
            continue
        found = next(((p, s, role, channel) for p, policy in enumerate(config.escalation_policies)
                      for s, step in enumerate(policy.steps)
                      for channel in step.channels
                      if getattr(config.channels.get(channel), "type", None) == "email"
                      for role in [*step.notify, "lead_ops"] if person.id in reach[role]), None)
        if found is not None:
            p, s, role, channel = found
            warned.append(f"owners.{i} ({person.id!r}): no email, but escalation_policies.{p}.steps.{s} reaches "
                          f"them as {role} by email channel {channel!r}: each such mail fails at once")
    return warned


class ConfigError(ValueError):
    """The configuration file is not valid; the message names every bad field by its path."""


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML whose dates stay text for the models to read: YAML's own reading of a date
    like 2026-12-32 raised out of the parser with no path to the field. Booleans are only
    true/false and there are no base-60 or octal numbers, as in YAML 1.2: YAML 1.1 read Norway's `NO`,
    Ontario's `ON` or a reason `no` as booleans, and `5:00` as the number 300 (5 minutes or
    5 hours?). Boolean fields still take yes/no/on/off, as text."""


_RETYPED = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float"}
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _RETYPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# YAML 1.1's numbers less the base-60 forms (190:20:30) and octal: 010 is ten, as in YAML 1.2
# (a `target: 0300` was 192 seconds).
_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
    r"""^(?:[-+]?0b[0-1_]+|[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+)$""", re.X),
    list("-+0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    if text.lstrip("+-")[:2].lower() in ("0b", "0x"):
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    return int(text, 10)  # '010' is ten: YAML 1.1 read a leading zero as octal (8)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _keys_given_twice(node: yaml.Node, path: str = "", seen: set[int] | None = None) -> list[str]:
    """Every mapping key written twice, by path: YAML keeps the last silently, so a second
    `owners:` at the end of a long file would drop every owner above it."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked
        return []
    seen.add(id(node))
    problems = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[object, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            where = f"{path}.{name}" if path else str(name)
            if name is not None and name != "<<" and name in lines:
                problems.append(f"{where}: given twice (lines {lines[name]} and {key.start_mark.line + 1}); "
                                "YAML would keep only the last")
            lines.setdefault(name, key.start_mark.line + 1)
            problems += _keys_given_twice(value, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _keys_given_twice(item, f"{path}.{i}" if path else str(i), seen)
    return problems


def load_yaml(text: str) -> Any:
    """The file's YAML document (None when it holds none), read as the configuration is read."""
    try:
        loader = _ConfigLoader(text)  # it refuses a control character (pasted from Word) at once
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {_yaml_problem(exc)}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if problems := _keys_given_twice(node):
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the quoted line PyYAML adds: it may hold a secret."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"{exc.context + ', ' if exc.context else ''}{exc.problem or 'unreadable'}{where}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{exc.reason} (character #x{exc.character:04x} at position {exc.position})" if isinstance(
            exc.character, int) else str(exc.reason)
    return type(exc).__name__


def parse_config(text: str) -> Config:
    raw = load_yaml(text)
    if raw is None:
        raise ConfigError("the configuration is empty (a blank or commented-out file): nothing to apply")
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a mapping at the top level")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            path = _path(err["loc"], raw)
            msg = _in_admin_words(err["msg"].removeprefix("Value error, "))
            if not err["loc"]:  # cross-reference checks already name their paths
                lines.extend(msg.split("\n"))
            else:
                lines.append(f"{path}: {msg}{_yaml_typing_hint(err)}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _path(loc: tuple[int | str, ...], raw: Any) -> str:
    """The error's location as the admin wrote the file: the keys and indexes found in it, walking
    down from the top. Pydantic adds names the file does not hold (the union member it tried,
    `str` or `TouchRule`; a channel's type), which are left out; a calendar named `Team` or
    `none` is a key of the file and stays. A last name not in the file is a field missing there."""
    parts, node = [], raw
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif i < len(loc) - 1 or (isinstance(part, str) and _UNION_MEMBER.match(part) and _is_type_name(part)):
            continue
        parts.append(str(part))
    return ".".join(parts) or "(root)"


# Pydantic's wording, as an admin reads a YAML file (it named the models' classes).
_ADMIN_WORDS = (
    (re.compile(r"Input should be a valid dictionary or instance of \w+"),
     "should be a mapping of fields (key: value lines or {key: value}), not a single value"),
    (re.compile(r"^Extra inputs are not permitted$"), "is not a field here (a typo, or in the wrong section?)"),
    (re.compile(r"^Datetimes provided to dates should have zero time.*"), "should be a date like 2026-12-25"),
)


def _in_admin_words(message: str) -> str:
    for pattern, words in _ADMIN_WORDS:
        message = pattern.sub(words, message)
    return message


# Pydantic's names for the member of a union it tried: `str`, `function-after[...]`, a model's name.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|[A-Z][A-Za-z]*)$")


def _is_type_name(part: str) -> bool:
    return part[0].islower() or isinstance(globals().get(part), type)  # a model of this module, not an id


def _yaml_typing_hint(err: Any) -> str:
    """Text was expected but YAML read a bare NO (Norway), yes, off or 007 as a boolean or number."""
    value = err.get("input")
    if err["type"] != "string_type" or not isinstance(value, (bool, int, float)):
        return ""
    secret = any(isinstance(p, str) and ("secret" in p or "password" in p) for p in err["loc"])
    read_as = "true or false" if isinstance(value, bool) else "a number" if secret else f"the number {value!r}"
    return f"; YAML read the value as {read_as}: put it in quotes"


def changed_sections(old_text: str | None, new_text: str) -> list[str]:
    """The top-level sections whose values differ between two valid configuration files (comments
    and layout aside), in the new file's order; every section of the new one when there is no old."""
    def sections(text: str) -> dict:
        try:
            return load_yaml(text) or {}
        except ConfigError:  # a version stored before a check its text fails was added
            return yaml.safe_load(text) or {}

    old, new = (sections(old_text) if old_text is not None else {}), sections(new_text)
    return [key for key in [*new, *(k for k in old if k not in new)] if old.get(key) != new.get(key)]


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_Built = TypeVar("_Built")


def per_config(build: Callable[[Any], _Built]) -> Callable[[Any], _Built]:
    """`build(config)`, kept per configuration object: what is derived from a configuration (compiled
    rules, calendars with their caches) is built once, not on every call. A handful of versions live
    at a time; ids are checked against the object, so a reused id never returns another one's."""
    kept: dict[int, tuple[Any, _Built]] = {}

    def derived(config: Any) -> _Built:
        found = kept.get(id(config))
        if found is None or found[0] is not config:
            if len(kept) >= 8:
                kept.clear()
            found = kept[id(config)] = (config, build(config))
        return found[1]

    return derived


_merged_sources: Callable[[IntakeConfig], dict[str, IntakeSource]] = per_config(lambda _: {})


@per_config
def _tier_order(tiers: Tiers) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*(rule.tier for rule in tiers.rules), tiers.default]))


@per_config
def _tier_ranks(tiers: Tiers) -> dict[str, int]:
    return {tier: rank for rank, tier in enumerate(_tier_order(tiers))}


@per_config
def named_sources(config: Config) -> frozenset[str]:
    """Every source the configuration names: intake's sources, and those tier rules, routing rules
    and SLA policies match on. A source outside it can match nothing, and stays out of metric
    labels (their values must stay bounded whatever senders write)."""
    return frozenset({*config.intake.sources,
                      *(s for rule in config.tiers.rules for s in rule.when.source or ()),
                      *(s for rule in config.routing.rules for s in rule.match.sources or ()),
                      *(s for policy in config.sla_policies for s in policy.filter.sources or ())})
