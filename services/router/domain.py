"""Routing decisions, pure: which rule matches a lead, who is eligible, who gets it.

Everything here takes the facts and `now` and returns a decision; the handlers load the state
(runtime owner changes, open leads, today's counts, cursors) and store what was decided.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from shared.business_hours import BusinessCalendar
from shared.config import (
    ENGAGEMENT_OUTCOMES,
    TOUCH_TYPES,
    CalendarConfig,
    Config,
    Owner,
    RoutingRule,
    RuleMatch,
    Team,
    is_country_code,
    is_history,
    lead_country,
    per_config,
    size_band,
)
from shared.events import Candidate, LeadReceived, WireModel

# A shared mailbox domain says nothing about the account a lead belongs to.
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "live.com", "icloud.com",
    "me.com", "aol.com", "gmx.de", "gmx.net", "web.de", "proton.me", "protonmail.com", "mail.ru", "qq.com",
})


@dataclass(frozen=True)
class LeadFacts:
    lead_id: str
    tier: str
    source: str
    country: str | None = None
    intent: str | None = None
    product: str | None = None
    language: str | None = None
    company_name: str | None = None
    company_domain: str | None = None
    company_size: str | None = None
    industry: str | None = None
    email: bool = False  # whether there is one; the address itself is not kept here
    phone: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict)
    contactable: bool = True
    received_at: datetime | None = None
    correlation_id: str | None = None
    external_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies every value, a hot spot of routing.
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["attributes"] = dict(self.attributes)
        data["received_at"] = self.received_at.isoformat() if self.received_at else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeadFacts:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("received_at"):
            known["received_at"] = datetime.fromisoformat(known["received_at"])
        return cls(**known)


def facts_of(lead: LeadReceived, correlation_id: str | None = None) -> LeadFacts:
    company = lead.company.model_dump()
    # What the sender sent beyond the contract (`attributes`), a CRM's custom fields among them.
    attributes = dict(lead.attributes)
    custom = attributes.get("custom_fields")
    for key, value in (custom.items() if isinstance(custom, dict) else ()):
        attributes.setdefault(key, value)
    domain = (company.get("domain") or "").strip().lower().removeprefix("www.") or None
    if domain is None and lead.contact.email and "@" in lead.contact.email:
        domain = lead.contact.email.rsplit("@", 1)[1].lower()
    return LeadFacts(
        lead_id=lead.lead_id,
        tier=lead.tier,
        source=lead.source,
        country=lead_country(lead.contact.country, lead.company.country),
        intent=lead.intent.type,
        product=lead.intent.product,
        language=lead.contact.language,
        company_name=company.get("name"),
        company_domain=None if domain in FREE_MAIL_DOMAINS else domain,
        company_size=_size_of(company.get("size"), company.get("employees")),
        industry=company.get("industry"),
        email=bool(lead.contact.email),
        phone=bool(lead.contact.phone),
        attributes=attributes,
        contactable=lead.contactable,
        received_at=lead.received_at,
        correlation_id=correlation_id,
        external_id=lead.external_id,
    )


def _size_of(size: Any, employees: Any) -> str | None:
    """The company size a rule's bands place: the exact head count when the sender gave one
    (intake also reads 150 into the standard band 51-200, whose lower bound would put it in a
    "1-99" segment), else the size as read (a band is placed by its lower bound)."""
    if isinstance(employees, int) and not isinstance(employees, bool):
        return str(employees)
    return None if size is None else str(size)


def _domain_of(value: Any) -> str | None:
    domain = str(value or "").strip().lower().removeprefix("www.") or None
    return None if domain in FREE_MAIL_DOMAINS else domain


def updated_facts(facts: LeadFacts, changed: Mapping[str, Mapping[str, Any]], tier: str,
                  contactable: bool) -> LeadFacts:
    """The facts after a lead.updated (a PATCH completing or correcting fields, a repeat raising
    the intent): what routing reads of the changed fields, and the re-evaluated tier."""
    values: dict[str, Any] = {"tier": tier, "contactable": contactable}
    attributes = dict(facts.attributes)
    simple = {"contact.language": "language", "company.name": "company_name",
              "company.industry": "industry", "intent.type": "intent", "intent.product": "product",
              "external_id": "external_id"}
    for name, change in changed.items():
        new = change.get("new")
        if name in simple:
            values[simple[name]] = new
        elif name == "contact.country":
            # The contact's country wins, as on receipt; one kept as sent leaves a usable one in place
            # (the company's: intake never overwrites a usable country with an unreadable one).
            values["country"] = lead_country(new, facts.country)
        elif name == "company.country" and "contact.country" not in changed and not is_country_code(facts.country):
            values["country"] = lead_country(new, facts.country)  # no usable contact country: the company's
        elif name == "company.domain":
            values["company_domain"] = _domain_of(new)
        elif name == "company.size":
            values["company_size"] = _size_of(new, (changed.get("company.employees") or {}).get("new"))
        elif name == "company.employees" and new is not None:  # 150 corrected to 160: the band is the same
            values["company_size"] = _size_of(None, new)
        elif name in ("contact.email", "contact.phone"):
            values[name.removeprefix("contact.")] = bool(new) or getattr(facts, name.removeprefix("contact."))
        elif name.startswith("attributes."):
            attributes[name.removeprefix("attributes.")] = new
    return replace(facts, attributes=attributes, **values)


def field_value(lead: LeadFacts, name: str) -> Any:
    """The value of a requirable field (config.REQUIRABLE_FIELDS or attributes.<name>)."""
    if name.startswith("attributes."):
        return lead.attributes.get(name.removeprefix("attributes."))
    return {
        "contact.country": lead.country,
        "contact.language": lead.language,
        "contact.email": lead.email or None,
        "contact.phone": lead.phone or None,
        "company.name": lead.company_name,
        "company.domain": lead.company_domain,
        "company.size": lead.company_size,
        "company.industry": lead.industry,
        "intent.product": lead.product,
    }[name]


def missing_fields(rule: RoutingRule, lead: LeadFacts) -> list[str]:
    return [name for name in rule.requires if field_value(lead, name) in (None, "", [], {})]


def _size_in(size: str | None, bands: list[str]) -> bool:
    lead_band = size_band(size) if size is not None else None
    if lead_band is None:
        return False
    low = lead_band[0]  # a band given by the lead ("201-500") is placed by its lower bound
    for band in bands:
        b = size_band(band)
        if b is not None and low >= b[0] and (b[1] is None or low <= b[1]):
            return True
    return False


def _fold(value: Any) -> str | None:
    return None if value is None else str(value).strip().casefold()


def _folded(values: Iterable[Any]) -> frozenset[str | None]:
    return frozenset(_fold(v) for v in values)


def _matcher(m: RuleMatch, config: Config) -> Callable[[LeadFacts], bool]:
    """A rule's match as one test of a lead, its accepted values folded once. A condition left
    out accepts anything; a missing value of the lead matches no list (None is never folded in)."""
    checks: list[Callable[[LeadFacts], bool]] = []

    def accepts(values: Iterable[Any], value_of: Callable[[LeadFacts], Any]) -> None:
        accepted = _folded(values) - {None}
        checks.append(lambda lead: _fold(value_of(lead)) in accepted)

    if m.tiers is not None:
        accepts(m.tiers, lambda lead: lead.tier)
    if m.countries is not None:
        accepts(m.countries, lambda lead: lead.country)
    if m.regions is not None:
        accepts([c for r in m.regions for c in config.routing.regions.get(r, [])], lambda lead: lead.country)
    if m.sources is not None:
        accepts(m.sources, lambda lead: lead.source)
    if m.intents is not None:
        accepts(m.intents, lambda lead: lead.intent)
    if m.products is not None:
        accepts(m.products, lambda lead: lead.product)
    if m.languages is not None:
        languages = _folded(m.languages) - {None}
        # "de-AT" matches a rule for "de" or for "de-AT".
        checks.append(lambda lead: lead.language is not None and (
            _fold(lead.language.split("-")[0]) in languages or _fold(lead.language) in languages))
    if m.company_sizes is not None:
        bands = m.company_sizes
        checks.append(lambda lead: _size_in(lead.company_size, bands))
    if m.industries is not None:
        accepts(m.industries, lambda lead: lead.industry)
    for key, values in (m.attributes or {}).items():
        accepts(values, lambda lead, key=key: lead.attributes.get(key))
    return lambda lead: all(check(lead) for check in checks)


@dataclass
class _Rules:
    """A configuration's rules, compiled, and the rule found for each combination of the values
    rules look at (leads repeat them: tier, country, source...), so most leads scan no rule."""

    rules: list[tuple[RoutingRule, Callable[[LeadFacts], bool]]]
    attributes: tuple[str, ...]  # the attributes any rule looks at
    teams: dict[str, Team]
    found: dict[tuple[Any, ...], RoutingRule | None] = field(default_factory=dict)

    def first(self, lead: LeadFacts) -> RoutingRule | None:
        key = (lead.tier, lead.country, lead.source, lead.intent, lead.product, lead.language, lead.company_size,
               lead.industry, *(_fold(lead.attributes.get(name)) for name in self.attributes))
        if key in self.found:
            return self.found[key]
        if len(self.found) >= 50_000:
            self.found.clear()
        rule = self.found[key] = next((rule for rule, accepts in self.rules if accepts(lead)), None)
        return rule


@per_config
def _compiled(config: Config) -> _Rules:
    rules = config.routing.rules
    return _Rules([(rule, _matcher(rule.match, config)) for rule in rules],
                  tuple(sorted({name for rule in rules for name in (rule.match.attributes or {})})),
                  {team.id: team for team in config.teams})


def first_match(config: Config, lead: LeadFacts) -> RoutingRule | None:
    """The first rule, in configuration order, whose match accepts the lead."""
    return _compiled(config).first(lead)


def team_of(config: Config, rule: RoutingRule) -> Team:
    assert rule.team is not None
    return _compiled(config).teams[rule.team]


def home_team(config: Config, owner_id: str, rule: RoutingRule | None) -> str | None:
    """The team an owner works a lead for when no rule picked them (account match, fallback):
    the matching rule's team if they are in it, else the first team listing them, else none.
    Reports and lead lists by team count the lead there."""
    teams = _compiled(config).teams
    if rule is not None and rule.team is not None and owner_id in teams[rule.team].members:
        return rule.team
    return next((team.id for team in teams.values() if owner_id in team.members), None)


# ---- the router's internal events ----------------------------------------------------------
# Kept in the router's store only (topic None): what its state needs beyond the contract events
# (lead.assigned / lead.reassigned / lead.queued / lead.dequeued), so that every state table is a
# projection of the store (services/router/projection.py). Each carries every value applied.

# Each class names its type like the contract's payload classes, but stays out of the contract's
# registry (shared.events.PAYLOADS): these events never leave the router.

class LeadRouted(WireModel):
    """The router's own part of a decision, recorded right after the contract event that
    announced it (lead.assigned, lead.reassigned or lead.queued): the facts kept to route the
    lead again, the day the owner's daily count grows on (the owner's own calendar day), the
    rule's new round-robin position or weighted credits."""

    TYPE: ClassVar[str] = "router.lead_routed"

    lead_id: str
    facts: dict[str, Any]
    company_domain: str | None = None
    assignment_no: int  # the lead's assignment number (a queued lead: the next one's)
    owner_id: str | None = None  # None: queued
    day: date | None = None  # the owner's day the assignment counts on
    rule_id: str | None = None
    cursor: int | None = None
    weights: dict[str, int] | None = None


class LeadFactsUpdated(WireModel):
    """A lead.updated read by the router: the facts it keeps to route the lead (queued, or again
    later) and its tier, as they are now. A queued lead may then leave the queue."""

    TYPE: ClassVar[str] = "router.lead_facts_updated"

    lead_id: str
    facts: dict[str, Any]
    company_domain: str | None = None
    tier: str


class LeadClosed(WireModel):
    """A disposition or an opt-out: the lead no longer counts against its owner's capacity."""

    TYPE: ClassVar[str] = "router.lead_closed"

    lead_id: str
    closed_at: datetime
    cause: str  # the activity type, or "disposition"


class LeadTouched(WireModel):
    """The first touch of an assigned lead (an owner going out of office keeps touched leads)."""

    TYPE: ClassVar[str] = "router.lead_touched"

    lead_id: str
    touched_at: datetime


class OwnerUpdated(WireModel):
    """An owner's runtime change, as stored on the owner's stream (not published on the bus)."""

    TYPE: ClassVar[str] = "owner.updated"

    owner_id: str
    changes: dict[str, Any]
    actor: str | None = None


# ---- owners at runtime ----------------------------------------------------------------------


@per_config
def open_counted(config: Config) -> frozenset[str]:
    """The owners whose open leads a decision reads: those with a capacity, and the members of
    the teams a `least_loaded` rule picks from (plus, at run time, owners given a capacity since:
    `capacity_changed`). Nobody else's count changes a decision, and counting it made every
    routing run's read grow with each lead never closed (an owner without a capacity, in a CRM
    that sends no dispositions, holds thousands: the run read them all, at every run)."""
    teams = {team.id: team.members for team in config.teams}
    balanced = {member for rule in config.routing.rules if rule.method == "least_loaded" and rule.team
                for member in teams.get(rule.team, ())}
    return frozenset({o.id for o in config.owners if o.capacity is not None} | balanced)


def capacity_changed(changes: Mapping[str, Any] | None) -> bool:
    """An owner's runtime changes set a capacity (PUT /v1/owners/{id}): their count is read too."""
    return bool(changes) and "capacity" in changes  # type: ignore[operator]


def effective_owner(configured: Owner, changes: Mapping[str, Any] | None) -> Owner:
    """The configured owner with the runtime changes (PUT /v1/owners/{id}) laid over it."""
    if not changes:
        return configured
    # Stored: working hours an operator set before a check was added to them still apply.
    return Owner.model_validate({**configured.model_dump(), **changes}, context={"stored": True})


def current_status(owner: Owner, now: datetime) -> str:
    # An absence with an end is over at `until`, without anyone having to flip it back.
    if owner.status == "out_of_office" and owner.until is not None and now >= owner.until:
        return "active"
    return owner.status


def owner_calendar(owner: Owner, config: Config) -> CalendarConfig | None:
    if owner.working_hours is not None:
        return owner.working_hours
    return config.calendar(owner.calendar) if owner.calendar else None


def owner_day(owner: Owner, config: Config, now: datetime) -> date:
    """Today in the owner's own time zone: daily caps reset at their midnight."""
    calendar = owner_calendar(owner, config)
    return now.astimezone(ZoneInfo(calendar.timezone if calendar else "UTC")).date()


@dataclass(frozen=True)
class RoutingState:
    """What a decision needs besides the config: loaded by the handler, updated by `record`."""

    owners: Mapping[str, Owner]  # effective owners (config + runtime changes)
    open_leads: Mapping[str, int] = field(default_factory=dict)
    today: Mapping[str, int] = field(default_factory=dict)  # assignments today, owner's own day
    cursors: Mapping[str, int] = field(default_factory=dict)  # rule -> index of the last owner
    last_turns: Mapping[str, str] = field(default_factory=dict)  # rule -> the owner it last gave a turn
    weighted: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # rule -> owner -> credit
    account_owner: str | None = None  # owner of an open lead of the same company domain


# How `eligibility` begins the reason of an owner who is full.
FULL = ("at capacity", "daily cap reached")


def eligibility(owner: Owner | None, lead: LeadFacts, state: RoutingState, config: Config,
                now: datetime) -> str | None:
    """Why an owner cannot take the lead now, or None when they can."""
    if owner is None:
        return "not configured"
    status = current_status(owner, now)
    if status == "out_of_office":
        return f"out of office until {owner.until.isoformat()}" if owner.until else "out of office"
    if status != "active":
        return f"status {status}"
    if (owner.languages and lead.language and _LANGUAGE_TAG.fullmatch(lead.language)
            and _primary(lead.language) not in owner.languages):  # the configuration reads them as codes
        return f"does not speak {lead.language}"
    calendar = owner_calendar(owner, config)
    if calendar is not None and not BusinessCalendar(calendar).is_open(now):
        if lead.tier not in config.routing.off_hours_tiers:
            return "outside working hours"
    # Load last: an owner who is full but could not take the lead anyway (another language, off
    # hours) is no shortage of people, and freeing capacity would not help (see `decide`).
    load = state.open_leads.get(owner.id, 0)
    if owner.capacity is not None and load >= owner.capacity:
        return f"at capacity ({load}/{owner.capacity})"
    today = state.today.get(owner.id, 0)
    if owner.daily_cap is not None and today >= owner.daily_cap:
        return f"daily cap reached ({today}/{owner.daily_cap})"
    return None


# A language as intake normalizes it (a BCP 47 tag); one it kept as sent ('Englisch') is unknown,
# and an unknown language limits no owner, as a lead without one does.
_LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")


def _primary(tag: str) -> str:
    """A lead's language tag's language, as owners' languages are read (`en` for en-GB): an owner
    who speaks `en-US` (or `EN`) speaks to an `en-GB` lead."""
    return tag.replace("_", "-").split("-")[0].strip().casefold()


def anyone_available(config: Config, state: RoutingState, now: datetime) -> bool:
    """Cheap pre-check before draining the queue: could anybody take any lead at all?"""
    probe = LeadFacts(lead_id="", tier=config.routing.off_hours_tiers[0] if config.routing.off_hours_tiers else "",
                      source="")
    return any(eligibility(o, probe, state, config, now) is None for o in state.owners.values())


# ---- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    owner_id: str | None  # None: nobody can take it, the lead waits in the queue
    team_id: str | None
    rule_id: str | None
    method: str
    reason: str
    candidates: tuple[Candidate, ...]
    next_cursor: int | None = None  # the round-robin position to store for the rule
    missing_fields: tuple[str, ...] = ()
    weights: Mapping[str, int] | None = None  # the weighted method's new state for the rule


def decide(config: Config, lead: LeadFacts, state: RoutingState, now: datetime,
           exclude: frozenset[str] = frozenset()) -> Decision:
    """Who gets the lead: the account's owner, else the first matching rule's pick, else the
    fallback owner, else nobody (queue). `exclude`: owners who must not get it (a reroute)."""
    candidates: list[Candidate] = []

    def consider(owner_id: str, why_eligible: str) -> bool:
        # An owner considered again (the account's owner next in turn, the fallback owner a team
        # member) keeps their first entry: `candidates` names each owner once.
        if (seen := next((c for c in candidates if c.owner_id == owner_id), None)) is not None:
            return seen.eligible
        if owner_id in exclude:
            candidates.append(Candidate(owner_id=owner_id, eligible=False, why="being rerouted away"))
            return False
        why_not = eligibility(state.owners.get(owner_id), lead, state, config, now)
        candidates.append(Candidate(owner_id=owner_id, eligible=why_not is None, why=why_not or why_eligible))
        return why_not is None

    rule = first_match(config, lead)
    if config.routing.account_match and state.account_owner and lead.company_domain:
        if consider(state.account_owner, f"owns an open lead of {lead.company_domain}"):
            return Decision(state.account_owner, home_team(config, state.account_owner, rule), None,
                            "account_match", "account_match", tuple(candidates))

    fallback = _fallback(config, rule)
    missing: tuple[str, ...] = ()
    if rule is None:
        reason = "no_matching_rule"
    elif missing := tuple(missing_fields(rule, lead)):
        reason = "missing_data"  # the team cannot work it without these fields
    else:
        picked = _pick(config, rule, state, consider)
        if picked is not None:
            if picked.why is not None:  # every eligible member was listed as "eligible": say why this one
                candidates = [c.model_copy(update={"why": picked.why})
                              if c.owner_id == picked.owner_id and c.eligible else c for c in candidates]
            return Decision(picked.owner_id, picked.team_id, rule.id, rule.method, "rule_match", tuple(candidates),
                            picked.cursor, weights=picked.weights)
        # Every member full (capacity, daily cap) is a shortage of people, which the SLA clock
        # blames a queued lead's breach on (root cause `capacity`); anything else is nobody eligible.
        # The rule's own people only: not an account owner tried first, nor one rerouted away from.
        scope = {rule.owner} if rule.method == "owner" else set(team_of(config, rule).members)
        full = [c.why.startswith(FULL) for c in candidates
                if not c.eligible and c.owner_id in scope and c.owner_id not in exclude]
        reason = "at_capacity" if full and all(full) else "no_eligible_owner"

    rule_id = rule.id if rule else None
    team_id = rule.team if rule else None
    if fallback is not None and consider(fallback, "fallback owner"):
        return Decision(fallback, home_team(config, fallback, rule), rule_id, "fallback", reason, tuple(candidates),
                        None, missing)
    return Decision(None, team_id, rule_id, "queue", reason, tuple(candidates), None, missing)


def decision_scope(config: Config, lead: LeadFacts, account_owner: str | None) -> tuple[str | None, set[str]]:
    """The rule a decision for `lead` advances and the owners it would normally pick from: what
    the decision locks. Fallback owners join only when a decision actually reaches them."""
    owners = {account_owner} if account_owner and config.routing.account_match else set()
    rule = first_match(config, lead)
    if rule is None:
        return None, owners
    if rule.owner:
        owners.add(rule.owner)
    if rule.team:
        owners.update(team_of(config, rule).members)
    return rule.id, owners


def fallback_of(config: Config, lead: LeadFacts) -> str | None:
    """The one fallback owner a decision for `lead` tries (`decide`)."""
    return _fallback(config, first_match(config, lead))


def _fallback(config: Config, rule: RoutingRule | None) -> str | None:
    """The matching rule's fallback owner, else the configuration's."""
    return (rule.fallback_owner if rule else None) or config.routing.fallback_owner


def fallback_owners(config: Config) -> set[str]:
    found = {r.fallback_owner for r in config.routing.rules if r.fallback_owner}
    return found | ({config.routing.fallback_owner} if config.routing.fallback_owner else set())


@dataclass(frozen=True)
class _Pick:
    owner_id: str
    team_id: str | None
    cursor: int | None = None
    why: str | None = None  # why this one among the eligible, when not by turn
    weights: Mapping[str, int] | None = None


def _pick(config: Config, rule: RoutingRule, state: RoutingState, consider) -> _Pick | None:
    """The rule's method applied to its team, or None when nobody in it is eligible."""
    if rule.method == "owner":
        assert rule.owner is not None
        named = consider(rule.owner, "named by the rule")  # their team, as for anyone no rule's turn picked
        return _Pick(rule.owner, home_team(config, rule.owner, rule)) if named else None
    team = team_of(config, rule)
    members = team.members
    if rule.method == "round_robin":
        # Start just after whoever got the previous lead of this rule, found by id: an admin who
        # adds or removes a member before them shifts every index. If they left the team, whoever
        # took their place is next.
        last = state.cursors.get(rule.id, -1)
        if (previous := state.last_turns.get(rule.id)) is not None:
            last = members.index(previous) if previous in members else last - 1
        for step in range(1, len(members) + 1):
            index = (last + step) % len(members)
            if consider(members[index], "next in turn"):
                return _Pick(members[index], team.id, cursor=index)
        return None
    eligible = [m for m in members if consider(m, "eligible")]
    if not eligible:
        return None
    if rule.method == "least_loaded":
        best = min(eligible, key=lambda m: (state.open_leads.get(m, 0), state.today.get(m, 0)))
        return _Pick(best, team.id, why=f"fewest open leads ({state.open_leads.get(best, 0)})")
    # weighted: smooth weighted round robin. Every eligible owner earns their weight, the richest
    # gets the lead and pays the total. Shares follow the weights at every prefix, and the state
    # stays bounded, so an owner added later is not flooded while "catching up".
    current = dict(state.weighted.get(rule.id, {}))
    weight = {m: state.owners[m].weight for m in eligible}
    for m in eligible:
        current[m] = current.get(m, 0) + weight[m]
    best = max(eligible, key=lambda m: current[m])  # max() keeps the first of equals: member order
    current[best] -= sum(weight.values())
    return _Pick(best, team.id, why=f"their turn by weight ({weight[best]})", weights=current)


def record(state: RoutingState, decision: Decision, config: Config, now: datetime) -> RoutingState:
    """The state after `decision` was applied: the next decision in a batch sees it."""
    if decision.owner_id is None:
        return state
    owner_id = decision.owner_id
    open_leads = {**state.open_leads, owner_id: state.open_leads.get(owner_id, 0) + 1}
    today = {**state.today, owner_id: state.today.get(owner_id, 0) + 1}
    cursors, last_turns = dict(state.cursors), dict(state.last_turns)
    weighted = dict(state.weighted)
    if decision.rule_id is not None and decision.next_cursor is not None:
        cursors[decision.rule_id], last_turns[decision.rule_id] = decision.next_cursor, owner_id
    if decision.rule_id is not None and decision.weights is not None:
        weighted[decision.rule_id] = decision.weights
    return replace(state, open_leads=open_leads, today=today, cursors=cursors, last_turns=last_turns,
                   weighted=weighted, account_owner=None)


def release(state: RoutingState, owner_id: str) -> RoutingState:
    """The state after one of `owner_id`'s open leads stopped counting."""
    return replace(state, open_leads={**state.open_leads, owner_id: max(state.open_leads.get(owner_id, 1) - 1, 0)})




def works_the_lead(activity_type: str, outcome: str | None, occurred_at: datetime, assigned_at: datetime) -> bool:
    """Whether an activity shows the lead's owner working it (an owner going out of office keeps
    such leads): a touch made since the assignment. The buyer opening or clicking an email is the
    buyer's engagement, and a touch from before the assignment is history: neither is work."""
    return (activity_type in TOUCH_TYPES and outcome not in ENGAGEMENT_OUTCOMES
            and not is_history(occurred_at, assigned_at))
