"""Intake's pure domain: tiering, dedupe identity and precedence, consent, updates, the activity
schema, and the service's internal events. Submissions are read by `normalize`. No I/O here; the
same rules serve HTTP and Kafka input, and facts and `now` come in as arguments."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.clock import as_utc
from shared.config import (
    ACTIVITY_TYPE_ALIASES,
    OUTCOME_ALIASES,
    OUTCOMES,
    ActivityType,
    Config,
    Suppression,
    Tiers,
    lead_country,
    per_config,
)
from shared.events import Contact, LeadUpdated, WireModel
from shared.text import spelled, storable

from .normalize import (
    Issue,
    Submission,
    clean_text,
    flawed,
    parse_timestamp,
    read_submission,
    snake,
)

Short = Annotated[str, Field(max_length=200)]


class FormInput(BaseModel):
    """Input from CRMs (activities): blank fields absent, text storable; unknown fields (a call's
    duration, the CRM's own ids) kept verbatim as `model_extra`: refusing a touch for them would
    lose it, and the SLA would breach for a call that was made."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any, info: ValidationInfo) -> Any:
        # Forms send "" for fields left empty; that means "not given", not "an empty identifier".
        # Nested models check their own fields, so errors name the innermost field.
        if isinstance(value, str):
            return storable(value) if value.strip() else None
        # CRMs number their records and users (HubSpot's engagement and owner ids): an id sent as
        # a number is its text, as a lead's numeric external_id is (a bool is no id).
        if isinstance(value, int) and not isinstance(value, bool) and info.field_name != "occurred_at":
            return str(value)
        return value


RECOMMENDED_FIELDS = ("contact.email", "contact.phone", "contact.country", "company.name")
MAX_SOURCE = 100  # a source name a body gives, as a lead's source


def given_source(value: Any) -> str | None:
    """The source a body names (an admin key's over HTTP, a raw record's on Kafka), trimmed; None
    when it names none usable (not text, blank, longer than MAX_SOURCE)."""
    if isinstance(value, str) and value.strip() and len(value.strip()) <= MAX_SOURCE:
        return value.strip()
    return None


def missing_fields(sub: Submission) -> list[str]:
    """Recommended fields without a usable value (a value kept as sent with a warning is missing)."""
    kept = flawed(sub.issues)
    present = {
        "contact.email": sub.contact.email and "contact.email" not in kept,
        "contact.phone": sub.contact.phone and "contact.phone" not in kept,
        "contact.country": (sub.contact.country and "contact.country" not in kept)
        or (sub.company.country and "company.country" not in kept),
        "company.name": sub.company.name,
    }
    return [name for name in RECOMMENDED_FIELDS if not present[name]]


def is_suppressed(contact: Contact, suppression: Suppression) -> bool:
    """On the configured do-not-contact list by email, email domain or phone."""
    emails, domains, phones = _suppressed(suppression)
    email = (contact.email or "").lower()
    if email and email in emails:
        return True
    domain = email.rpartition("@")[2]
    if domain and domain in domains:
        return True
    return bool(contact.phone) and contact.phone in phones


@per_config  # the lists as sets, once per configuration (not twice per lead)
def _suppressed(suppression: Suppression) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    return (frozenset(e.strip().lower() for e in suppression.emails),
            frozenset(d.strip().lower().lstrip("@") for d in suppression.domains), frozenset(suppression.phones))


def is_contactable(sub: Submission, suppression: Suppression) -> bool:
    return sub.consent.contact and not is_suppressed(sub.contact, suppression)


def classify_tier(sub: Submission, source: str, tiers: Tiers) -> str:
    """First matching rule wins; the default tier otherwise."""
    country = lead_country(sub.contact.country, sub.company.country)
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


@per_config
def intent_vocabulary(config: Config) -> dict[str, list[str]]:
    """Intent types the configuration names (tier rules, aliases): matched exactly before any
    built-in spelling, so a configured 'event_demo' is not read as a demo request. Built once per
    configuration: callers only read it."""
    vocabulary: dict[str, list[str]] = {}
    for rule in config.tiers.rules:
        for intent in rule.when.intent or []:
            vocabulary.setdefault(intent, [])
    for canonical, aliases in config.intake.intent_aliases.items():
        vocabulary.setdefault(canonical, []).extend(aliases)
    return vocabulary


def identity_keys(sub: Submission, match_on: list[str]) -> list[tuple[str, str]]:
    """(kind, normalized value) pairs a repeat submission from the same person would share.
    Values kept as sent (not normalized) never identify anyone."""
    kept = flawed(sub.issues)
    keys = []
    if "email" in match_on and sub.contact.email and "contact.email" not in kept:
        keys.append(("email", sub.contact.email))
    if "phone" in match_on and sub.contact.phone and "contact.phone" not in kept:
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


# Open and click tracking, as engagement tools name it: an email activity with that outcome, kept
# (the lead's timeline shows it) but no touch unless a policy's `qualifying_touches` lists it.
ENGAGEMENT_TYPES = {
    "email_open": "opened", "email_opened": "opened", "opened": "opened", "open": "opened",
    "email_click": "clicked", "email_clicked": "clicked", "email_link_click": "clicked",
    "link_click": "clicked", "clicked": "clicked", "click": "clicked",
}
# Types that name their outcome too ("Meeting Booked", "Voicemail"): that type with that outcome.
TYPES_WITH_OUTCOME = {
    **{name: ("email", outcome) for name, outcome in ENGAGEMENT_TYPES.items()},
    "meeting_booked": ("meeting", "booked"), "meeting_scheduled": ("meeting", "booked"),
    "meeting_held": ("meeting", "held"), "meeting_completed": ("meeting", "held"),
    "meeting_no_show": ("meeting", "no_show"), "voicemail": ("call", "voicemail"),
    "left_voicemail": ("call", "voicemail"), "email_reply": ("email", "replied"),
    "email_replied": ("email", "replied"), "email_bounced": ("email", "bounced"),
}


def _activity_type(value: Any) -> Any:
    """A type as the contract names it: "Call", "Opt-Out", "opt out", "Phone Call", "E-mail" (CRMs
    spell types their own way); anything but text as it is."""
    if not isinstance(value, str):
        return value
    name = spelled(value)
    return ACTIVITY_TYPE_ALIASES.get(name, name)


# Other spellings CRMs and sequencers give an activity's fields (after `snake`: 'occurredAt',
# 'Activity Date', 'ownerId'), each read when the contract's own name is not given.
ACTIVITY_FIELDS = {
    "occurred_at": ("occurred", "occurred_on", "timestamp", "activity_date", "activity_time", "date", "time",
                    "completed_at", "created_at", "performed_at"),
    "actor": ("owner", "owner_id", "user", "user_id", "rep", "performed_by", "created_by", "assigned_to"),
    "type": ("activity_type", "kind", "event_type", "engagement_type"),
    "external_id": ("id", "engagement_id"),
    "outcome": ("result", "call_result", "call_outcome"),
}
_ACTIVITY_NAMES = {alias: name for name, aliases in ACTIVITY_FIELDS.items() for alias in (name, *aliases)}


@per_config
def _owners_by_email(config: Config) -> dict[str, str]:
    return {str(o.email).casefold(): o.id for o in config.owners if o.email}


def actor_id(actor: str | None, config: Config) -> str | None:
    """The owner an actor names: CRMs name the rep by their email ('Alice@Example.com'), the SLA
    policies (`touch_actors: owner`) and reports by the owner id; anyone else as sent."""
    if actor is None or "@" not in actor:
        return actor
    return _owners_by_email(config).get(actor.strip().casefold(), actor)


def _activity_fields(data: Any) -> Any:
    """The body with its fields under the contract's names ('occurredAt' was kept in attributes,
    and the touch dated when intake took it, not when it was made). The first spelling given
    wins; the others stay as sent (in attributes)."""
    if not isinstance(data, dict):
        return data
    out = {k: v for k, v in data.items() if k in _ACTIVITY_NAMES.values()}
    for key, value in data.items():
        if key in out:
            continue
        name = _ACTIVITY_NAMES.get(snake(str(key)))
        if name is not None and name not in out and value not in (None, ""):
            out[name] = value
        else:
            out[key] = value
    return out


class ActivityIn(FormInput):
    """The body of POST /v1/leads/{lead_id}/activities."""

    # The sender's own activity id: a repeat with the same id changes nothing.
    external_id: Annotated[Short | None, Field(validation_alias=AliasChoices("external_id", "activity_id"))] = None
    type: ActivityType
    actor: Short | None = None
    occurred_at: datetime | None = None
    channel: Short | None = None
    outcome: Short | None = None
    # Validated when absent too: a disposition activity without one is refused naming the field.
    disposition: Annotated[DispositionIn | None, Field(validate_default=True)] = None
    reason: Short | None = None  # why a pause (or an opt-out)
    # An occurred_at no timestamp format reads, as sent (kept in attributes; the touch is dated
    # when intake accepts it).
    _unreadable_time: Any = PrivateAttr(default=None)
    # An occurred_at without an offset, as sent (kept if the sender's zone gives it no instant).
    _local_time: Any = PrivateAttr(default=None)
    # A disposition sent as text on another type of activity (a call's result, as Salesloft
    # names it), as sent: kept in attributes, never a reason to refuse the touch.
    _text_disposition: Any = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _read_time(cls, data: Any, handler: ModelWrapValidatorHandler[ActivityIn]) -> ActivityIn:
        """occurred_at in any spelling `parse_timestamp` reads (ISO 8601, RFC 2822, common local
        formats, Unix seconds or milliseconds); one without an offset stays naive until `dated`
        reads it in the sender's zone. One nobody can read does not refuse the touch."""
        data = _activity_fields(data)
        unreadable = local = None
        value = data.get("occurred_at") if isinstance(data, dict) else None
        if value is not None and not isinstance(value, datetime) and not (isinstance(value, str) and not value.strip()):
            try:
                parsed, assumed = parse_timestamp(value, "UTC")
            except ValueError:
                unreadable, data = value, {**data, "occurred_at": None}
            else:
                data = {**data, "occurred_at": parsed.replace(tzinfo=None) if assumed else parsed}
                local = value if assumed else None
        text_disposition = None
        if isinstance(data, dict) and isinstance(data.get("disposition"), str) and data["disposition"].strip():
            if _activity_type(data.get("type")) == "disposition":  # "Qualified": the status
                data = {**data, "disposition": {"status": data["disposition"]}}
            else:
                text_disposition, data = data["disposition"], {**data, "disposition": None}
        activity = handler(data)
        activity._unreadable_time, activity._local_time = unreadable, local
        activity._text_disposition = text_disposition
        return activity

    @model_validator(mode="before")
    @classmethod
    def _engagement(cls, data: Any) -> Any:
        """"EMAIL_OPEN", "Email Clicked": an email whose outcome is the buyer's open or click;
        "Meeting Booked", "Voicemail": a meeting or call with that outcome."""
        value = data.get("type") if isinstance(data, dict) else None
        if isinstance(value, str):
            found = TYPES_WITH_OUTCOME.get(spelled(value))
            if found is not None:
                return {**data, "type": found[0], "outcome": data.get("outcome") or found[1]}
        return data

    @field_validator("type", mode="before")
    @classmethod
    def _type_spelling(cls, value: Any) -> Any:
        return _activity_type(value)

    @model_validator(mode="after")
    def _outcome_spelling(self) -> ActivityIn:
        if self.outcome:
            name = spelled(self.outcome)
            name = OUTCOME_ALIASES.get(self.type, {}).get(name, name)
            if name in OUTCOMES.get(self.type, ()):
                self.outcome = name
        return self

    def _unknown_outcome(self) -> bool:
        """An outcome none of its type's known outcomes (kept as sent): no policy naming
        outcomes can count it."""
        known = OUTCOMES.get(self.type)
        return bool(known and self.outcome and self.outcome not in known)

    @field_validator("disposition")
    @classmethod
    def _disposition_given(cls, value: DispositionIn | None, info: ValidationInfo) -> DispositionIn | None:
        if value is None and info.data.get("type") == "disposition":
            raise ValueError("a disposition activity needs `disposition: {status, reason}`")
        return value

    def dated(self, zone: str) -> ActivityIn:
        """The activity with an occurred_at sent without an offset read in `zone` (the sender's
        source's time zone, as a lead's submitted_at is)."""
        if self.occurred_at is None or self.occurred_at.tzinfo is not None:
            return self
        local = self._in_zone(zone)
        if local is None:  # no instant in UTC: kept as sent, like one nobody can read
            dated = self.model_copy(update={"occurred_at": None})
            dated._unreadable_time = self._local_time if self._local_time is not None else self.occurred_at.isoformat()
            return dated
        return self.model_copy(update={"occurred_at": local})

    def undated_if_after(self, limit: datetime) -> ActivityIn:
        """The activity without its occurred_at when that is later than `limit` only because it
        was sent without an offset and read in an assumed zone (a CRM's local time ahead of UTC):
        kept as sent, like one nobody can read, rather than refused as a touch "in the future"."""
        if self.occurred_at is None or self._local_time is None or self.occurred_at <= limit:
            return self
        undated = self.model_copy(update={"occurred_at": None})
        undated._unreadable_time = self._local_time
        return undated

    def _in_zone(self, zone: str) -> datetime | None:
        """The naive occurred_at read in `zone`; None when that takes it outside the years 1 to
        9999 in UTC (0001-01-01 00:30 in Berlin): it could not be compared or put on the wire."""
        assert self.occurred_at is not None
        local = self.occurred_at.replace(tzinfo=ZoneInfo(zone))
        try:
            as_utc(local)
        except ValueError:
            return None
        return local

    def attributes(self) -> dict[str, Any]:
        """The fields the contract does not name, and an unreadable occurred_at, as sent."""
        kept = dict(self.model_extra or {})
        if self.disposition is not None and self.disposition.model_extra:
            kept["disposition"] = dict(self.disposition.model_extra)
        if self._unreadable_time is not None:
            kept["occurred_at"] = self._unreadable_time
        if self._text_disposition is not None:
            kept["disposition"] = self._text_disposition
        # Made storable as a lead's unknown fields are (NUL dropped, a lone surrogate replaced, a
        # huge integer or NaN as text): the declared fields refuse such text by name, but a CRM's
        # own field must not cost the touch (the insert failed, 500, and the SLA breached).
        return clean_text(kept)

    def warnings(self, zone: str, latest: datetime | None = None) -> list[dict[str, str]]:
        """What was kept as sent or read by assumption, by field, so an integrator sees a
        misspelt `outcome` or a CRM's local timestamps at once (call before `dated`). `latest`:
        the latest time a touch may have happened (`undated_if_after`'s limit)."""
        unknown = [*(self.model_extra or {}),
                   *(f"disposition.{name}" for name in (self.disposition.model_extra or {} if self.disposition else {}))]
        found = [{"field": name, "message": "not an activity field; kept in attributes"} for name in unknown]
        if self._text_disposition is not None:
            found.append({"field": "disposition", "message": "is not {status, reason}; kept in attributes"})
        if self._unknown_outcome():
            found.append({"field": "outcome", "message": f"is not a known {self.type} outcome "
                                                         f"({', '.join(OUTCOMES[self.type])}); kept as sent"})
        if self._unreadable_time is not None:
            found.append({"field": "occurred_at", "message": "is not a timestamp; kept in attributes, "
                                                             "the touch is dated when intake accepted it"})
        elif self.occurred_at is not None and self.occurred_at.tzinfo is None:
            local = self._in_zone(zone)
            if local is None:
                message = (f"has no instant in the years 1 to 9999 in UTC read in the source's time zone {zone}; "
                           "kept in attributes, the touch is dated when intake accepted it")
            elif latest is not None and local > latest:
                message = (f"has no UTC offset, and read in the source's time zone {zone} it lies in the future; "
                           "kept in attributes, the touch is dated when intake accepted it")
            else:
                message = f"has no UTC offset; read in the source's time zone {zone}"
            found.append({"field": "occurred_at", "message": message})
        return found


def activity_zone(config: Config, source: str | None) -> str:
    """The zone an activity's occurred_at without an offset is read in: its source's, else intake's
    (a raw record naming no configured source counts as "kafka")."""
    return config.intake.source(source or "kafka").timezone or "UTC"


def _configured(value: str | None, names: Sequence[str]) -> str | None:
    """`value` as the configuration spells it: exactly, else ignoring case, spaces and hyphens
    (a CRM picklist shows "No Budget" for the admin's `no_budget`)."""
    if value is None or value in names:
        return value
    return next((name for name in names if spelled(name) == spelled(value)), None)


def read_disposition(disposition: DispositionIn | None, reasons: dict[str, list[str]],
                     ) -> tuple[DispositionIn | None, tuple[str, str] | None]:
    """The disposition in the configured spelling, or the field that makes it unacceptable under
    the configured reasons and why."""
    if disposition is None:
        return None, None
    status = _configured(disposition.status, list(reasons))
    if status is None:
        known = ", ".join(sorted(reasons)) or "none configured"
        return disposition, ("disposition.status", f"unknown disposition status {disposition.status!r} (known: {known})")
    reason, allowed = disposition.reason, reasons[status]
    if allowed:
        reason = _configured(reason, allowed)
        if reason is None:
            return disposition, ("disposition.reason", f"reason must be one of: {', '.join(allowed)}")
    return disposition.model_copy(update={"status": status, "reason": reason}), None


# ---- dedupe precedence ----------------------------------------------------------------------


@dataclass(frozen=True)
class KnownLead:
    """A lead as intake keeps it: what a decision about a repeat needs."""

    lead_id: str
    tier: str
    record: dict[str, Any]  # the lead.received data, with every update folded in
    correlation_id: str
    source: str = ""


@dataclass(frozen=True)
class DedupeFacts:
    """What the store knows about a submission's identifiers (only those it has are looked up)."""

    key_owner: str | None = None  # the lead this idempotency key already answered with
    by_external_id: KnownLead | None = None  # the lead with this source's external id
    candidates: Sequence[KnownLead] = ()  # leads in the window sharing an email or phone, oldest first


@dataclass(frozen=True)
class Replay:
    """The same request again (its idempotency key is known): same answer, nothing changes."""

    lead_id: str


@dataclass(frozen=True)
class Repeat:
    """A known lead submitted again: by its external id (match_on None) or by its person."""

    lead: KnownLead
    match_on: str | None


@dataclass(frozen=True)
class New:
    pass


def dedupe(facts: DedupeFacts, contact: Contact, match_on: list[str]) -> Replay | Repeat | New:
    """Precedence: the idempotency key, then the sender's external id, then the earliest lead in
    the window that is the same person (`same_person`), else a new lead."""
    if facts.key_owner is not None:
        return Replay(facts.key_owner)
    if facts.by_external_id is not None:
        return Repeat(facts.by_external_id, None)
    for lead in facts.candidates:
        kind = same_person(lead.record.get("contact") or {}, contact, match_on)
        if kind:
            return Repeat(lead, kind)
    return New()


def brings_news(lead: KnownLead, snapshot: dict[str, Any]) -> bool:
    """A repeat gives a value the lead does not hold (a new email or phone, a changed company, a
    custom field): a sender re-sending its record by the same external id with changes. What it
    leaves out is no news (a field the lead has stays)."""
    for part in ("contact", "company", "intent", "attributes"):
        known = lead.record.get(part) or {}
        if any(known.get(name) != value for name, value in (snapshot.get(part) or {}).items() if value is not None):
            return True
    return False


# ---- updates ------------------------------------------------------------------------------


def upgrade(lead: KnownLead, intent: dict[str, Any], tier: str, tiers: Tiers,
            score: float | None = None) -> LeadUpdated | None:
    """A repeat that ranks above the lead's tier (a demo request after a content download)
    raises it: lead.updated with the new intent and tier, and the repeat's score when higher
    (what may have raised it: else the lead kept its old score, and the next PATCH re-tiered it
    from that, back down). None if it does not rank higher."""
    if tiers.rank(tier) >= tiers.rank(lead.tier):  # the queue's rule too (shared/config.py)
        return None
    # One shape with PATCH's: a change per dotted field ("intent.type"), the repeat's intent
    # replacing the lead's (a field it leaves out becomes None), and the tier.
    before = lead.record.get("intent") or {}
    changed: dict[str, dict[str, Any]] = {
        f"intent.{key}": {"old": before.get(key), "new": intent.get(key)}
        for key in sorted(set(before) | set(intent)) if before.get(key) != intent.get(key)}
    old_score = lead.record.get("score")
    if score is not None and (old_score is None or score > old_score):  # a higher score never lowers a tier
        changed["score"] = {"old": old_score, "new": score}
    changed["tier"] = {"old": lead.tier, "new": tier}
    return LeadUpdated(lead_id=lead.lead_id, changed=changed, tier=tier, previous_tier=lead.tier, reason="upgraded",
                       contactable=lead.record.get("contactable", True))


def opt_out(lead: KnownLead) -> LeadUpdated | None:
    """Consent withdrawn: nobody may contact the lead any more (so its SLAs stop)."""
    if not lead.record.get("contactable", True):
        return None
    changed: dict[str, dict[str, Any]] = {"contactable": {"old": True, "new": False}}
    consent = (lead.record.get("consent") or {}).get("contact")
    if consent is not False:
        changed["consent.contact"] = {"old": consent, "new": False}
    return LeadUpdated(lead_id=lead.lead_id, changed=changed, tier=lead.tier, previous_tier=lead.tier,
                       reason="opted_out", contactable=False)


# The lead's fields `classify_tier` reads (besides its source, which a PATCH never changes).
TIER_INPUTS = ("intent.type", "score", "contact.country", "company.country")


def patch_lead(lead: KnownLead, patch: Submission, config: Config) -> LeadUpdated | None:
    """Complete or correct a lead's fields (PATCH): only the fields the patch gives change; each
    change (old and new) and the re-evaluated tier, missing fields and contactability. None if
    nothing changes."""
    record = copy.deepcopy(lead.record)
    new = patch.snapshot()
    changed: dict[str, dict[str, Any]] = {}
    ignored = unapplied(lead, patch)
    for name in sorted(patch.given):
        section, _, key = name.partition(".")
        if name in ignored:
            continue  # an unreadable correction never overwrites a value that was usable
        targets = [key]
        if name == "contact.phone":
            targets.append("phone_extension")
        if name == "company.size":
            targets += ["size_band", "employees", "employees_min", "employees_max"]
        if name == "company.website":
            targets.append("domain")
        # A changed phone or size replaces what was read from the old one, unset parts too (a
        # size of 250 corrected to "1000+" has no exact count and no upper bound any more).
        # A domain may have been given on its own, so a new website only ever sets it.
        replaces = name in ("contact.phone", "company.size") and new[section].get(key) is not None \
            and new[section].get(key) != (record.get(section) or {}).get(key)
        for target in targets:
            old_value = (record.get(section) or {}).get(target)
            new_value = new[section].get(target)
            if (new_value is not None or (replaces and target != key)) and new_value != old_value:
                record.setdefault(section, {})[target] = new_value
                changed[f"{section}.{target}"] = {"old": old_value, "new": new_value}
    for name in ("external_id", "score", "submitted_at"):
        if new.get(name) is not None and new[name] != record.get(name):
            changed[name] = {"old": record.get(name), "new": new[name]}
            record[name] = new[name]
    for key, value in patch.attributes.items():
        if (record.get("attributes") or {}).get(key) != value:
            changed[f"attributes.{key}"] = {"old": (record.get("attributes") or {}).get(key), "new": value}
            record.setdefault("attributes", {})[key] = value
    if "consent" in new and patch.consent.model_fields_set:
        for key in patch.consent.model_fields_set:
            value = new["consent"].get(key)
            if record.get("consent", {}).get(key) != value:
                changed[f"consent.{key}"] = {"old": record.get("consent", {}).get(key), "new": value}
                record.setdefault("consent", {})[key] = value
    if not changed:
        return None
    # A corrected field drops its earlier data-quality note; the patch's own notes are added (not
    # those of a correction not applied: the usable value it left in place is no flaw).
    notes = [q for q in patch.data_quality if q["field"] not in ignored]
    record["data_quality"] = [q for q in record.get("data_quality") or [] if q.get("field") not in changed]
    record["data_quality"] += notes
    merged = read_submission(_as_body(record), config.intake.source(lead.source), intent_vocabulary(config),
                             partial=True)
    merged.issues = [Issue.of(q) for q in record["data_quality"]]
    # Re-tiered only when a field the tier rules read changed: the lead's tier may come from more
    # than its record (a repeat from a partner source raised it, the rules changed since), and a
    # corrected title must not move it, nor its SLA.
    retier = any(name in changed for name in TIER_INPUTS)
    tier = classify_tier(merged, lead.source, config.tiers) if retier else lead.tier
    if tier != lead.tier:
        changed["tier"] = {"old": lead.tier, "new": tier}  # as an upgrade names it
    contactable = bool(record.get("contactable", True)) and is_contactable(merged, config.intake.suppression)
    return LeadUpdated(lead_id=lead.lead_id, changed=changed, tier=tier, previous_tier=lead.tier, reason="patched",
                       contactable=contactable, data_quality=notes, missing_fields=missing_fields(merged))


def unapplied(lead: KnownLead, patch: Submission) -> set[str]:
    """The fields a PATCH gives unreadably where the lead has a usable value: left as they are."""
    def usable(name: str) -> bool:
        section, _, key = name.partition(".")
        return (lead.record.get(section) or {}).get(key) is not None

    return {name for name in flawed(patch.issues) & patch.given if usable(name)}


def as_not_applied(issues: list[Issue], fields: set[str]) -> list[Issue]:
    """A PATCH's warnings: for a correction not applied, that it was not (not "kept as sent")."""
    return [replace(i, message=i.message.removesuffix("; kept as sent") + "; not applied: the lead keeps its value")
            if i.field in fields else i for i in issues]


def _as_body(record: dict[str, Any]) -> dict[str, Any]:
    """A stored lead record read back as a submission (to re-tier it after a change)."""
    return {
        "contact": {k: v for k, v in (record.get("contact") or {}).items() if k != "phone_extension"},
        "company": {k: v for k, v in (record.get("company") or {}).items()
                    if k in ("name", "domain", "website", "industry", "country", "size")},
        "intent": record.get("intent"),
        "score": record.get("score"),
        "consent": {k: v for k, v in (record.get("consent") or {}).items() if k in ("marketing", "contact")},
    }


def updated_record(record: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A lead's record with a lead.updated folded in (the projection's rule, live and in replay):
    each changed path takes its new value ("contact.phone" -> record["contact"]["phone"]; an
    attribute name may itself hold dots); a changed field drops its data-quality notes and the
    update's notes are added; tier, contactability and (when given) missing fields as carried."""
    record = copy.deepcopy(record)
    changed: dict[str, dict[str, Any]] = update["changed"]
    for path, change in changed.items():
        section, dot, key = path.partition(".")
        if dot:
            record.setdefault(section, {})[key] = change["new"]
        else:
            record[section] = change["new"]
    record["data_quality"] = [q for q in record.get("data_quality") or [] if q.get("field") not in changed]
    record["data_quality"] += update.get("data_quality") or []
    record["tier"] = update["tier"]
    record["contactable"] = update.get("contactable", True)
    if update.get("missing_fields") is not None:
        record["missing_fields"] = update["missing_fields"]
    return record


def flawed_fields(record: dict[str, Any]) -> set[str]:
    return flawed([Issue.of(q) for q in record.get("data_quality") or []])


def lead_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The dedupe index values of a lead's record: a value kept as sent identifies no one."""
    contact, kept = record.get("contact") or {}, flawed_fields(record)
    return {
        "email": contact.get("email") if "contact.email" not in kept else None,
        "phone": contact.get("phone") if "contact.phone" not in kept else None,
        "tier": record["tier"],
    }


# ---- internal events: kept in intake's store only (topic None), never published ------------

# Not in the contract's registry (`shared.events.PAYLOADS`): no other service ever sees them.


class IdempotencyKeyBound(WireModel):
    """A source's idempotency key now answers with this lead (a replay gets "duplicate" and the
    lead id; no response body is stored, so nothing else is needed to answer it)."""

    TYPE: ClassVar[str] = "intake.idempotency_key_bound"

    source: str
    key: str
    lead_id: str
    bound_at: datetime


class ActivityHeld(WireModel):
    """An activity read from Kafka before its lead: held until the lead arrives or `expires_at`."""

    TYPE: ClassVar[str] = "intake.activity_held"

    hold_id: str  # derived from the raw record's position (topic, partition, offset)
    lead_ref: str  # a lead id or a lead's external id
    event: dict[str, Any]  # the activity's CloudEvent as its sender meant it
    topic: str
    partition: int
    offset: int
    key: str | None = None
    original_b64: str  # the raw record, for its dead letter
    held_at: datetime
    expires_at: datetime


class ActivityReleased(WireModel):
    """A held activity leaves the hold: recorded for its lead, rejected, or expired (dead-lettered)."""

    TYPE: ClassVar[str] = "intake.activity_released"

    hold_id: str
    lead_ref: str
    outcome: Literal["recorded", "rejected", "expired"]
    lead_id: str | None = None
    released_at: datetime


KEY_BOUND = IdempotencyKeyBound.TYPE
ACTIVITY_HELD = ActivityHeld.TYPE
ACTIVITY_RELEASED = ActivityReleased.TYPE


def raw_topics_taken_in(caught_up_at: Sequence[float | None], now: float, within: float) -> bool:
    """Whether intake may beat (vouch to the SLA clock that it holds what senders handed it until
    now): each raw-topic consumer handled everything on its partitions within `within` seconds of
    `now`. A consumer behind a backlog (a CRM's back-fill of 20,000 touches ahead of a live one),
    or not yet fetching since it started, is not: intake falls silent, the clock sees an outage
    of its inputs and holds the deadlines in it, so a touch the broker took in time is not judged
    missing (it was, `owner_missed`, acked 59 s before the deadline)."""
    return all(at is not None and now - at <= within for at in caught_up_at)
