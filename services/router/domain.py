"""Routing decisions, pure: which rule matches a lead, who is eligible, whose turn it is."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from leadsla.shared.business_hours import BusinessCalendar
from leadsla.shared.config import Config, Owner, RoutingRule
from leadsla.shared.events import Candidate


@dataclass(frozen=True)
class LeadFacts:
    lead_id: str
    tier: str
    source: str
    country: str | None
    intent: str | None
    product: str | None
    language: str | None


@dataclass(frozen=True)
class Decision:
    owner_id: str | None  # None: nobody can take it, the lead waits in the queue
    team_id: str | None
    rule_id: str | None
    method: str
    reason: str
    candidates: tuple[Candidate, ...]
    next_cursor: int | None  # the round-robin position to store for the rule


def matches(rule: RoutingRule, lead: LeadFacts) -> bool:
    m = rule.match
    return all(
        allowed is None or value in allowed
        for allowed, value in (
            (m.tiers, lead.tier),
            (m.countries, lead.country),
            (m.sources, lead.source),
            (m.intents, lead.intent),
            (m.products, lead.product),
            (m.languages, lead.language),
        )
    )


def eligibility(owner: Owner | None, lead: LeadFacts, load: int, config: Config, now: datetime) -> str | None:
    """Why an owner cannot take the lead now, or None when they can."""
    if owner is None:
        return "not configured"
    if owner.status != "available":
        return f"status {owner.status}"
    if owner.capacity is not None and load >= owner.capacity:
        return f"at capacity ({load}/{owner.capacity})"
    if owner.languages and lead.language and lead.language.split("-")[0] not in owner.languages:
        return f"does not speak {lead.language}"
    if owner.calendar and not BusinessCalendar(config.calendar(owner.calendar)).is_open(now):
        return "outside working hours"
    return None


def decide(
    config: Config, lead: LeadFacts, cursors: Mapping[str, int], load: Mapping[str, int], now: datetime
) -> Decision:
    rule = next((r for r in config.routing.rules if matches(r, lead)), None)
    candidates: list[Candidate] = []
    if rule is not None:
        team = next(t for t in config.teams if t.id == rule.team)
        members = team.members
        last = cursors.get(rule.id, -1)
        # Round robin: start just after whoever got the previous lead of this rule.
        for step in range(1, len(members) + 1):
            index = (last + step) % len(members)
            owner_id = members[index]
            why_not = eligibility(config.owner(owner_id), lead, load.get(owner_id, 0), config, now)
            candidates.append(Candidate(owner_id=owner_id, eligible=why_not is None, why=why_not or "next in turn"))
            if why_not is None:
                return Decision(owner_id, team.id, rule.id, "round_robin", "rule_match", tuple(candidates), index)
        reason = "no_eligible_owner"
    else:
        reason = "no_matching_rule"

    fallback = config.routing.fallback_owner
    if fallback is not None:
        why_not = eligibility(config.owner(fallback), lead, load.get(fallback, 0), config, now)
        candidates.append(Candidate(owner_id=fallback, eligible=why_not is None, why=why_not or "fallback owner"))
        if why_not is None:
            return Decision(fallback, None, rule.id if rule else None, "fallback", reason, tuple(candidates), None)
    return Decision(None, rule.team if rule else None, rule.id if rule else None, "queue", reason,
                    tuple(candidates), None)
