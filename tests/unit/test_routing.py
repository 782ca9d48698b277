from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.router.domain import (
    LeadFacts,
    RoutingState,
    anyone_available,
    current_status,
    decide,
    effective_owner,
    eligibility,
    facts_of,
    owner_day,
    record,
    updated_facts,
)
from shared.config import parse_config

NOW = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)  # a Tuesday
CONFIG = parse_config("""
calendars:
  nights: {timezone: UTC, hours: {tue: ["20:00-23:00"]}}
owners:
  - {id: a}
  - {id: b, status: away}
  - {id: c, capacity: 2}
  - {id: d, calendar: nights}
  - {id: e, languages: [de]}
  - {id: boss}
teams:
  - {id: emea, members: [a, b, c]}
  - {id: odd, members: [d, e]}
routing:
  rules:
    - {id: de-only, match: {countries: [DE]}, team: odd}
    - {id: everyone, team: emea}
  fallback_owner: boss
""")


def lead(country: str | None = "GB", language: str | None = None, tier: str = "A", **more) -> LeadFacts:
    return LeadFacts("l1", tier, "web", country=country, intent="demo_request", language=language, **more)


def state(config=CONFIG, **kw) -> RoutingState:
    return RoutingState(owners={o.id: o for o in config.owners}, **kw)


def test_round_robin_takes_turns_among_eligible_owners() -> None:
    s = state()
    owners = []
    for _ in range(4):
        decision = decide(CONFIG, lead(), s, NOW)
        owners.append(decision.owner_id)
        s = record(s, decision, CONFIG, NOW)
    assert owners == ["a", "c", "a", "c"]  # b is away


def _turns(config, s: RoutingState, n: int) -> tuple[list[str], RoutingState]:
    owners = []
    for _ in range(n):
        decision = decide(config, lead(), s, NOW)
        owners.append(decision.owner_id)
        s = record(s, decision, config, NOW)
    return owners, s


def _team(members: str):
    return parse_config(f"""
owners: [{{id: a}}, {{id: b}}, {{id: c}}, {{id: d}}, {{id: z}}]
teams: [{{id: t, members: [{members}]}}]
routing: {{rules: [{{id: rr, team: t}}]}}
""")


@pytest.mark.parametrize(("members", "expected"), [
    ("z, a, b, c", ["c", "z", "a", "b"]),  # a member added before the last turn: b does not get two in a row
    ("b, c", ["c", "b", "c", "b"]),  # a member before removed: c is not skipped
    ("a, c, d", ["c", "d", "a", "c"]),  # the last turn's owner removed: whoever took their place is next
])
def test_round_robin_goes_on_after_whoever_had_the_last_turn_when_the_team_changes(members, expected) -> None:
    before = _team("a, b, c")
    _, s = _turns(before, state(before), 2)  # a, then b
    assert s.cursors["rr"] == 1 and s.last_turns["rr"] == "b"
    after = _team(members)
    assert _turns(after, replace(s, owners={o.id: o for o in after.owners}), 4)[0] == expected


def test_a_turn_stored_as_an_index_only_still_counts() -> None:
    config = _team("a, b, c")
    assert _turns(config, state(config, cursors={"rr": 1}), 2)[0] == ["c", "a"]


def test_every_candidate_says_why() -> None:
    decision = decide(CONFIG, lead(), state(cursors={"everyone": 0}), NOW)
    assert decision.owner_id == "c"
    assert [(c.owner_id, c.eligible, c.why) for c in decision.candidates] == [
        ("b", False, "status away"),
        ("c", True, "next in turn"),
    ]


def test_capacity_is_respected() -> None:
    decision = decide(CONFIG, lead(), state(cursors={"everyone": 0}, open_leads={"c": 2}), NOW)
    assert decision.owner_id == "a"
    assert decision.candidates[1].why == "at capacity (2/2)"


def test_working_hours_and_language_make_owners_ineligible_then_fallback() -> None:
    decision = decide(CONFIG, lead(country="DE", language="fr"), state(), NOW)
    assert decision.owner_id == "boss"
    assert decision.method == "fallback" and decision.reason == "no_eligible_owner"
    assert {c.owner_id: c.why for c in decision.candidates if not c.eligible} == {
        "d": "outside working hours",
        "e": "does not speak fr",
    }


def test_queue_when_nobody_can_take_it() -> None:
    config = CONFIG.model_copy(update={"routing": CONFIG.routing.model_copy(update={"fallback_owner": None})})
    decision = decide(config, lead(country="DE", language="fr"), state(config), NOW)
    assert decision.owner_id is None and decision.method == "queue"


def test_a_lead_queued_because_every_candidate_is_full_says_at_capacity() -> None:
    """The SLA clock blames a queued lead's breach on `capacity` only when the queue reason names
    capacity: a team whose every member is at capacity or at their daily cap is that case, and
    a team away or off hours is not."""
    config = parse_config("""
owners: [{id: a, capacity: 1}, {id: b, daily_cap: 2}, {id: c, status: away}]
teams: [{id: full, members: [a, b]}, {id: mixed, members: [a, c]}]
routing:
  rules:
    - {id: full-team, match: {tiers: [A]}, team: full}
    - {id: mixed-team, team: mixed}
""")
    s = state(config, open_leads={"a": 1}, today={"b": 2})
    full = decide(config, lead(tier="A"), s, NOW)
    assert (full.owner_id, full.method, full.reason) == (None, "queue", "at_capacity")
    mixed = decide(config, lead(tier="B"), s, NOW)
    assert (mixed.owner_id, mixed.reason) == (None, "no_eligible_owner")


def test_the_fallback_owner_must_be_eligible_like_anyone_else() -> None:
    boss_away = effective_owner(CONFIG.owner("boss"), {"status": "away"})
    s = state()
    s = RoutingState(owners={**s.owners, "boss": boss_away})
    decision = decide(CONFIG, lead(country="DE", language="fr"), s, NOW)
    assert decision.owner_id is None and decision.reason == "no_eligible_owner"
    assert decision.candidates[-1].why == "status away"


# ---- eligibility, table-driven ------------------------------------------------------------

HOURS = {"timezone": "Europe/Berlin", "hours": {"tue": ["09:00-12:00"]}}  # 10:00 UTC = 11:00 Berlin


@pytest.mark.parametrize(("changes", "open_leads", "today", "tier", "expected"), [
    ({}, 0, 0, "A", None),
    ({"status": "away"}, 0, 0, "A", "status away"),
    ({"status": "out_of_office"}, 0, 0, "A", "out of office"),
    ({"status": "out_of_office", "until": "2026-11-20T09:00:00+00:00"}, 0, 0, "A",
     "out of office until 2026-11-20T09:00:00+00:00"),
    ({"status": "out_of_office", "until": "2026-11-17T09:59:00+00:00"}, 0, 0, "A", None),  # absence over
    ({"capacity": 3}, 3, 0, "A", "at capacity (3/3)"),
    ({"capacity": 3}, 2, 0, "A", None),
    ({"daily_cap": 5}, 0, 5, "A", "daily cap reached (5/5)"),
    ({"working_hours": HOURS}, 0, 0, "A", None),
    ({"working_hours": {**HOURS, "hours": {"tue": ["12:00-17:00"]}}}, 0, 0, "B", "outside working hours"),
    ({"working_hours": {**HOURS, "hours": {"tue": ["12:00-17:00"]}}}, 0, 0, "A", None),  # urgent tier
])
def test_eligibility(changes, open_leads, today, tier, expected) -> None:
    config = parse_config("owners: [{id: x}]\nrouting: {off_hours_tiers: [A]}")
    owner = effective_owner(config.owner("x"), changes)
    s = RoutingState(owners={"x": owner}, open_leads={"x": open_leads}, today={"x": today})
    assert eligibility(owner, lead(tier=tier), s, config, NOW) == expected


def test_working_hours_stored_before_overlaps_were_refused_still_apply() -> None:
    # PUT /v1/owners refuses overlapping spans now; an owner's stored ones must not stop routing.
    hours = {**HOURS, "hours": {"tue": ["09:00-12:00", "11:00-17:00"]}}
    owner = effective_owner(CONFIG.owner("a"), {"working_hours": hours})
    assert owner.working_hours.hours["tue"] == ["09:00-12:00", "11:00-17:00"]


def test_an_absence_ends_by_itself_at_until() -> None:
    owner = effective_owner(CONFIG.owner("a"), {"status": "out_of_office", "until": "2026-11-18T08:00:00Z"})
    assert current_status(owner, NOW) == "out_of_office"
    assert current_status(owner, NOW + timedelta(days=1)) == "active"


def test_daily_caps_count_in_the_owners_own_day() -> None:
    owner = effective_owner(CONFIG.owner("a"), {"working_hours": {"timezone": "Pacific/Auckland"}})
    assert owner_day(owner, CONFIG, NOW).isoformat() == "2026-11-17"
    assert owner_day(owner, CONFIG, NOW + timedelta(hours=11)).isoformat() == "2026-11-18"


def test_anyone_available_says_no_when_everybody_is_away() -> None:
    config = parse_config("owners: [{id: x, status: away}, {id: y, capacity: 1}]")
    s = RoutingState(owners={o.id: o for o in config.owners}, open_leads={"y": 1})
    assert not anyone_available(config, s, NOW)
    assert anyone_available(config, RoutingState(owners=s.owners), NOW)


# ---- rules ----------------------------------------------------------------------------------

RULES = parse_config("""
owners: [{id: de1}, {id: ent1}, {id: ent2, weight: 3}, {id: fin}, {id: jp}, {id: vip}, {id: gen1}, {id: gen2},
         {id: ops}]
teams:
  - {id: dach, members: [de1]}
  - {id: enterprise, members: [ent1, ent2]}
  - {id: finance, members: [fin]}
  - {id: japan, members: [jp]}
  - {id: general, members: [gen1, gen2]}
routing:
  regions: {dach: [DE, AT, CH]}
  rules:
    - {id: partner, match: {attributes: {partner: ["yes"]}}, method: owner, owner: vip}
    - {id: enterprise, match: {company_sizes: ["1000+"]}, team: enterprise, method: weighted,
       requires: [company.name]}
    - {id: finance, match: {industries: [Finance], products: [ledger]}, team: finance}
    - {id: dach, match: {regions: [dach], languages: [de]}, team: dach}
    - {id: japan, match: {countries: [JP], tiers: [A], sources: [web]}, team: japan}
    - {id: general, team: general, method: least_loaded}
  fallback_owner: ops
""")


@pytest.mark.parametrize(("facts", "rule", "owner"), [
    (dict(attributes={"partner": "yes"}), "partner", "vip"),
    (dict(company_size="5000", company_name="Big"), "enterprise", "ent2"),
    (dict(company_size="1001-5000", company_name="Big"), "enterprise", "ent2"),
    (dict(company_size="51-200"), "general", "gen1"),
    (dict(industry="finance", product="Ledger"), "finance", "fin"),
    (dict(industry="finance"), "general", "gen1"),
    (dict(country="AT", language="de-AT"), "dach", "de1"),
    (dict(country="AT", language="en"), "general", "gen1"),
    (dict(country="JP"), "japan", "jp"),
    (dict(country="JP", tier="B"), "general", "gen1"),
])
def test_rule_conditions(facts, rule, owner) -> None:
    facts = {"country": "GB", **facts}
    tier = facts.pop("tier", "A")
    decision = decide(RULES, LeadFacts("l", tier, "web", **facts), state(RULES), NOW)
    assert (decision.rule_id, decision.owner_id) == (rule, owner)


@pytest.mark.parametrize("size", ["9" * 5000, "1-" + "9" * 5000, "9" * 5000 + "+"], ids=["count", "band", "open-band"])
def test_a_company_size_kept_as_sent_with_any_number_of_digits_matches_no_size_rule(size: str) -> None:
    """Found by fuzzing: intake keeps an unreadable size as sent, and size_band's int() of more
    than 4,300 digits raised ValueError: the router failed on the lead instead of routing it."""
    decision = decide(RULES, LeadFacts("l", "A", "web", country="GB", company_size=size, company_name="Big"),
                      state(RULES), NOW)
    assert (decision.rule_id, decision.owner_id) == ("general", "gen1")


def test_a_lead_without_a_rules_required_field_goes_to_the_fallback_with_missing_data() -> None:
    decision = decide(RULES, LeadFacts("l", "A", "web", company_size="2000"), state(RULES), NOW)
    assert (decision.owner_id, decision.method, decision.reason) == ("ops", "fallback", "missing_data")
    assert decision.missing_fields == ("company.name",)


def test_weighted_gives_each_owner_their_share() -> None:
    s = state(RULES)
    got = []
    for _ in range(8):
        decision = decide(RULES, LeadFacts("l", "A", "web", company_size="5000", company_name="x"), s, NOW)
        got.append(decision.owner_id)
        s = record(s, decision, RULES, NOW)
    assert got.count("ent2") == 6 and got.count("ent1") == 2


def test_least_loaded_picks_the_owner_with_fewest_open_leads() -> None:
    decision = decide(RULES, LeadFacts("l", "A", "web"), state(RULES, open_leads={"gen1": 4, "gen2": 1}), NOW)
    assert decision.owner_id == "gen2"
    assert next(c for c in decision.candidates if c.owner_id == "gen2").why == "fewest open leads (1)"


def test_an_open_lead_of_the_same_company_sends_the_new_one_to_its_owner() -> None:
    facts = LeadFacts("l", "A", "web", company_domain="acme.com")
    decision = decide(RULES, facts, state(RULES, account_owner="jp"), NOW)
    assert (decision.owner_id, decision.method, decision.reason) == ("jp", "account_match", "account_match")


def test_account_match_yields_to_rules_when_that_owner_is_not_eligible() -> None:
    facts = LeadFacts("l", "A", "web", company_domain="acme.com")
    s = state(RULES, account_owner="jp")
    s = RoutingState(owners={**s.owners, "jp": effective_owner(RULES.owner("jp"), {"status": "away"})},
                     account_owner="jp")
    decision = decide(RULES, facts, s, NOW)
    assert decision.owner_id == "gen1" and decision.candidates[0].why == "status away"


def test_an_owner_not_picked_by_a_rule_works_the_lead_for_their_own_team() -> None:
    # Reports and lead lists by team count account matches and fallbacks too: the matching rule's
    # team if the owner is in it, else the first team listing them, else none.
    config = parse_config("""
owners: [{id: ann}, {id: ben}, {id: boss}]
teams: [{id: emea, members: [ann]}, {id: us, members: [ben]}]
routing: {fallback_owner: boss, rules: [{id: de, match: {countries: [DE]}, team: emea}, {id: rest, team: us}]}
""")
    matched = decide(config, LeadFacts("l", "A", "web", country="DE", company_domain="acme.com"),
                     state(config, account_owner="ann"), NOW)
    assert (matched.owner_id, matched.method, matched.team_id) == ("ann", "account_match", "emea")
    elsewhere = decide(config, LeadFacts("l", "A", "web", country="FR", company_domain="acme.com"),
                       state(config, account_owner="ann"), NOW)
    assert (elsewhere.owner_id, elsewhere.team_id) == ("ann", "emea")  # her own team, not the rule's
    away = RoutingState(owners={**state(config).owners, "ben": effective_owner(config.owner("ben"), {"status": "away"})})
    fallback = decide(config, LeadFacts("l", "A", "web", country="FR"), away, NOW)
    assert (fallback.owner_id, fallback.method, fallback.team_id) == ("boss", "fallback", None)  # in no team


def test_a_reroute_never_picks_the_owner_it_takes_the_lead_from() -> None:
    decision = decide(RULES, LeadFacts("l", "A", "web"), state(RULES), NOW, exclude=frozenset({"gen1"}))
    assert decision.owner_id == "gen2"


def test_facts_survive_a_round_trip_through_json() -> None:
    facts = LeadFacts("l", "A", "web", country="DE", attributes={"k": 1}, received_at=NOW, correlation_id="c")
    assert LeadFacts.from_json(facts.to_json()) == facts


def test_a_decision_locks_its_rule_and_that_rules_owners_only() -> None:
    from services.router.domain import decision_scope

    assert decision_scope(RULES, LeadFacts("l", "A", "web", country="AT", language="de"), None) == ("dach", {"de1"})
    assert decision_scope(RULES, LeadFacts("l", "A", "web"), "jp") == ("general", {"gen1", "gen2", "jp"})
    assert decision_scope(RULES, LeadFacts("l", "A", "web", attributes={"partner": "yes"}), None) == (
        "partner", {"vip"})


def test_a_lead_update_changes_the_facts_routing_reads() -> None:
    facts = LeadFacts(lead_id="l", tier="B", source="web", country=None, company_domain=None,
                      attributes={"segment": "smb"})
    changed = {
        "company.name": {"old": None, "new": "Big Corp"},
        "company.domain": {"old": None, "new": "WWW.Big.example"},
        "company.size": {"old": None, "new": 5000},
        "company.country": {"old": None, "new": "DE"},
        "contact.language": {"old": None, "new": "de"},
        "intent.product": {"old": None, "new": "analytics"},
        "contact.phone": {"old": None, "new": "+4930123456"},
        "attributes.segment": {"old": "smb", "new": "enterprise"},
        "score": {"old": 10, "new": 90},  # not read by routing
    }
    updated = updated_facts(facts, changed, tier="A", contactable=True)
    assert (updated.tier, updated.company_name, updated.company_domain, updated.company_size, updated.country,
            updated.language, updated.product, updated.phone, dict(updated.attributes)) == (
        "A", "Big Corp", "big.example", "5000", "DE", "de", "analytics", True, {"segment": "enterprise"})
    # The contact's country wins over the company's; a free-mail domain says nothing about the account.
    with_country = LeadFacts(lead_id="l", tier="B", source="web", country="FR")
    assert updated_facts(with_country, {"company.country": {"old": None, "new": "DE"}}, "B", True).country == "FR"
    assert updated_facts(facts, {"company.domain": {"old": None, "new": "gmail.com"}}, "B", True).company_domain is None


def test_a_stored_upgrade_with_whole_intent_objects_changes_the_intent_routing_reads() -> None:
    """An upgrade stored as `"intent": {"old": {...}, "new": {...}}` left the router's intent at
    the old one (it reads dotted fields), so a rule on intent_types never matched the upgraded lead."""
    from shared.events import LeadUpdated
    stored = LeadUpdated.model_validate({"lead_id": "l1", "tier": "A", "previous_tier": "C", "reason": "upgraded",
                                         "changed": {"intent": {"old": {"type": "content_download"},
                                                                "new": {"type": "contact_sales"}},
                                                     "tier": {"old": "C", "new": "A"}}})
    after = updated_facts(LeadFacts("l1", "C", "web", intent="content_download"), stored.changed, stored.tier, True)
    assert (after.intent, after.tier) == ("contact_sales", "A")


@pytest.mark.parametrize(("spoken", "lead_language", "eligible"), [
    (["en-US", "ES"], "en-US", True), (["en-US", "ES"], "en", True), (["en-US", "ES"], "es-MX", True),
    (["EN"], "en-GB", True), (["de"], "de-AT", True), (["en-US"], "de", False),
])
def test_an_owner_s_languages_count_in_any_case_and_with_a_region(spoken, lead_language, eligible) -> None:
    """An owner configured as speaking `en-US` (or `EN`) was ineligible for every English lead:
    the lead's primary language was looked up among the owner's tags as written."""
    config = parse_config(f"""
owners: [{{id: a, languages: {spoken}}}]
teams: [{{id: t, members: [a]}}]
routing: {{rules: [{{id: all, team: t}}]}}
""")
    decision = decide(config, lead(language=lead_language), state(config), NOW)
    assert (decision.owner_id == "a") is eligible


SEGMENTS = parse_config("""
owners: [{id: small}, {id: mid}, {id: big}]
teams: [{id: small, members: [small]}, {id: mid, members: [mid]}, {id: big, members: [big]}]
routing:
  rules:
    - {id: small, match: {company_sizes: ["1-99"]}, team: small}
    - {id: mid, match: {company_sizes: ["100-999"]}, team: mid}
    - {id: big, team: big}
""")


@pytest.mark.parametrize(("employees", "band", "segment"), [
    (150, "51-200", "mid"), (60, "51-200", "small"), (950, "501-1000", "mid"), (1000, "501-1000", "big")])
def test_an_exact_head_count_is_routed_by_the_count_not_by_its_standard_band(employees, band, segment) -> None:
    """A company of 150 went to the 1-99 segment: intake reads 150 into the band 51-200, and the
    router placed the lead by the band's lower bound (51), not by the count the sender gave."""
    from shared.events import Company, Consent, Contact, Intent, LeadReceived
    low, high = (int(n) for n in band.split("-"))
    received = LeadReceived(
        lead_id="l1", source="web", tier="A", contact=Contact(email="a@b.example"), intent=Intent(type="demo_request"),
        company=Company(size=band, size_band=band, employees=employees, employees_min=low, employees_max=high),
        consent=Consent(), contactable=True, received_at=NOW)
    assert decide(SEGMENTS, facts_of(received), state(SEGMENTS), NOW).owner_id == segment
    # A PATCH that corrects the size to an exact count changes both: the count is what routes.
    patched = updated_facts(facts_of(received.model_copy(update={"company": Company()})), {
        "company.size": {"old": None, "new": band}, "company.size_band": {"old": None, "new": band},
        "company.employees": {"old": None, "new": employees}}, "A", True)
    assert decide(SEGMENTS, patched, state(SEGMENTS), NOW).owner_id == segment
    # A count corrected within its band changes only `employees`.
    recounted = updated_facts(patched, {"company.employees": {"old": employees, "new": 99}}, "A", True)
    assert decide(SEGMENTS, recounted, state(SEGMENTS), NOW).owner_id == "small"


def test_a_contact_country_kept_as_sent_gives_way_to_the_company_s_for_territory() -> None:
    """'Deutchland' (kept as sent by intake) hid the company's DE: the lead missed the DE rule."""
    from shared.events import Company, Consent, Contact, Intent, LeadReceived
    received = LeadReceived(
        lead_id="l1", source="web", tier="A", contact=Contact(email="a@b.example", country="Deutchland"),
        company=Company(country="DE"), intent=Intent(type="demo_request"), consent=Consent(), contactable=True,
        received_at=NOW)
    assert facts_of(received).country == "DE"
    assert decide(CONFIG, facts_of(received), state(), NOW).rule_id == "de-only"
    # Nothing usable at all: the contact's value as sent, as before (no rule names it).
    junk = received.model_copy(update={"company": Company(country="Prussia")})
    assert facts_of(junk).country == "Deutchland"
    # A PATCH adding the company's country, or correcting the contact's, is followed the same way.
    no_company = facts_of(received.model_copy(update={"company": Company()}))
    assert no_company.country == "Deutchland"
    assert updated_facts(no_company, {"company.country": {"old": None, "new": "DE"}}, "A", True).country == "DE"
    with_company = facts_of(received)
    assert updated_facts(with_company, {"contact.country": {"old": "Deutchland", "new": "Prussia"}}, "A",
                         True).country == "DE"
    assert updated_facts(with_company, {"contact.country": {"old": "Deutchland", "new": "AT"}}, "A", True).country == "AT"


def test_a_language_intake_could_not_read_limits_no_owner() -> None:
    """A language kept as sent ('Englisch') made every owner with languages ineligible ("does not
    speak Englisch"), as if the lead were known to speak none of theirs; unknown, it limits nobody."""
    config = parse_config("""
owners: [{id: a, languages: [en, de]}]
teams: [{id: t, members: [a]}]
routing: {rules: [{id: all, team: t}]}
""")
    assert decide(config, lead(language="Englisch"), state(config), NOW).owner_id == "a"
    assert decide(config, lead(language="fr-CA"), state(config), NOW).owner_id is None


@pytest.mark.parametrize("spoken", ["DE", "de-AT", "de_DE", "deu"])
def test_an_owner_speaking_german_however_the_file_spells_it_gets_german_leads(spoken: str) -> None:
    # Leads' languages are canonical tags ("de-AT"); owners' were compared as written, so `DE`
    # or `de-AT` in the file left the owner ineligible for every German lead.
    config = parse_config(f"owners: [{{id: x, languages: [{spoken}]}}]")
    owner = config.owner("x")
    s = RoutingState(owners={"x": owner}, open_leads={"x": 0}, today={"x": 0})
    assert eligibility(owner, lead(language="de-AT"), s, config, NOW) is None
    assert eligibility(owner, lead(language="fr"), s, config, NOW) == "does not speak fr"


def test_account_match_off_routes_a_lead_of_a_company_with_an_open_lead_by_the_rules() -> None:
    off = RULES.model_copy(update={"routing": RULES.routing.model_copy(update={"account_match": False})})
    facts = LeadFacts("l", "A", "web", company_domain="acme.com")
    decision = decide(off, facts, state(off, account_owner="jp"), NOW)
    assert decision.method != "account_match" and decision.reason == "rule_match"


FULL_TEAM = parse_config("""
calendars:
  ny: {timezone: America/New_York, hours: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"]}}
owners: [{id: a, capacity: 1, languages: [de]}, {id: b, capacity: 1, calendar: ny}, {id: acct, status: away},
         {id: fb, capacity: 1}, {id: vip}]
teams: [{id: t, members: [a, b]}, {id: vipteam, members: [vip, fb]}]
routing:
  account_match: true
  rules:
    - {id: named, match: {tiers: [N]}, method: owner, owner: a}
    - {id: elsewhere, match: {tiers: [X]}, method: owner, owner: a, team: vipteam}
    - {id: r, team: t}
  fallback_owner: fb
""")


def test_a_full_team_is_at_capacity_whoever_else_was_tried() -> None:
    """An away account owner tried first, or the owner a reroute moves the lead from, turned the
    reason into no_eligible_owner, and the SLA clock blamed a breach on nobody instead of capacity."""
    full = state(FULL_TEAM, open_leads={"a": 1, "b": 1, "fb": 1})
    working = datetime(2026, 11, 17, 15, tzinfo=UTC)  # 10:00 in New York: b works
    lead_of_acme = lead(tier="A", company_domain="acme.com")
    assert decide(FULL_TEAM, lead_of_acme, full, working).reason == "at_capacity"
    with_account = state(FULL_TEAM, open_leads={"a": 1, "b": 1, "fb": 1}, account_owner="acct")
    assert decide(FULL_TEAM, lead_of_acme, with_account, working).reason == "at_capacity"
    rerouted = state(FULL_TEAM, open_leads={"b": 1, "fb": 1})
    assert decide(FULL_TEAM, lead_of_acme, rerouted, working, exclude=frozenset({"a"})).reason == "at_capacity"


def test_an_owner_who_could_not_take_the_lead_anyway_is_no_shortage_of_people() -> None:
    """Full and also speaking another language (or off hours): the lead was queued at_capacity,
    though freeing capacity would not help."""
    night = datetime(2026, 3, 4, 3, tzinfo=UTC)  # 22:00 in New York
    french = lead(tier="C", language="fr")
    full = state(FULL_TEAM, open_leads={"a": 1, "b": 1, "fb": 1})
    decision = decide(FULL_TEAM, french, full, night)
    assert decision.reason == "no_eligible_owner"
    assert {c.owner_id: c.why for c in decision.candidates}["a"] == "does not speak fr"


def test_a_lead_a_rule_names_its_owner_for_goes_to_that_owner_s_team() -> None:
    """`method: owner` carried the rule's team as written: none, or one the owner is not in."""
    assert decide(FULL_TEAM, lead(tier="N"), state(FULL_TEAM), NOW).team_id == "t"
    assert decide(FULL_TEAM, lead(tier="X"), state(FULL_TEAM), NOW).team_id == "t"


def test_a_rule_on_an_attribute_routes_the_leads_that_carry_it() -> None:
    """`attributes` became a declared field of lead.received, and the router went on reading it
    from the undeclared extras: rules on attributes never matched, and a rule requiring one sent
    every lead to the fallback as missing_data."""
    from shared.events import Company, Consent, Contact, Intent, LeadReceived
    config = parse_config("""
owners: [{id: vip-desk}, {id: ann}, {id: boss}]
teams: [{id: sdr, members: [ann]}]
routing:
  fallback_owner: boss
  rules:
    - {id: vip, match: {attributes: {segment: [vip]}}, method: owner, owner: vip-desk}
    - {id: plans, match: {sources: [app]}, team: sdr, requires: [attributes.plan]}
    - {id: catch, team: sdr}
""")

    def lead(source: str, attributes: dict) -> LeadReceived:
        return LeadReceived(lead_id="l1", source=source, tier="A", contact=Contact(email="a@b.example"),
                            company=Company(), intent=Intent(type="demo_request"), consent=Consent(),
                            contactable=True, received_at=NOW, attributes=attributes)

    assert decide(config, facts_of(lead("web", {"segment": "VIP"})), state(config), NOW).owner_id == "vip-desk"
    assert decide(config, facts_of(lead("web", {"custom_fields": {"segment": "vip"}})), state(config),
                  NOW).owner_id == "vip-desk"
    assert decide(config, facts_of(lead("web", {"segment": "smb"})), state(config), NOW).rule_id == "catch"
    planned = decide(config, facts_of(lead("app", {"plan": "pro"})), state(config), NOW)
    assert (planned.rule_id, planned.owner_id) == ("plans", "ann")
