"""Property tests of routing and tiering (services/router/domain.py `decide`, services/intake/domain.py
`classify_tier`): for any lead attributes and a generated configuration, a lead gets exactly one
decision (an owner, the fallback owner, or the queue with a reason) and a tier the configuration
names, never an exception. Examples per property: LEADSLA_FUZZ_EXAMPLES (see test_intake_fuzz.py)."""
from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, reject
from hypothesis import strategies as st
from pydantic import ValidationError

from services.intake.domain import classify_tier
from services.intake.normalize import read_submission
from services.router.domain import LeadFacts, RoutingState, decide, record
from shared.config import Config, IntakeSource
from tests.unit.test_intake_fuzz import BODIES, SCALARS, fuzz, json_values

NOW = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)
OWNERS = ["o1", "o2", "o3", "o4"]
VALUES = st.sampled_from(["A", "B", "GB", "DE", "web", "demo_request", "de", "de-AT", "201-500", "1000+", "9" * 5000,
                          "Finance", "", "\x00", "\ud800"])


@st.composite
def configs(draw) -> Config:
    owners = [{"id": o, **draw(st.fixed_dictionaries({}, optional={
        "status": st.sampled_from(["active", "away", "out_of_office"]), "capacity": st.integers(0, 3),
        "daily_cap": st.integers(0, 3), "weight": st.integers(1, 5), "languages": st.lists(st.sampled_from(["de", "en"])),
    }))} for o in OWNERS]
    teams = [{"id": "t1", "members": draw(st.lists(st.sampled_from(OWNERS), min_size=1, max_size=4, unique=True))}]
    lists = st.lists(VALUES.filter(lambda v: v not in ("\x00", "\ud800")), min_size=1, max_size=3)
    match = st.fixed_dictionaries({}, optional={
        "tiers": lists, "countries": st.lists(st.sampled_from(["GB", "DE", "US"]), min_size=1), "sources": lists,
        "intents": lists, "languages": lists, "company_sizes": st.lists(st.sampled_from(["1-50", "201-500", "1000+"]),
                                                                        min_size=1),
        "industries": lists, "attributes": st.dictionaries(st.sampled_from(["plan", "partner"]), lists, max_size=2),
    })
    rules = []
    for i in range(draw(st.integers(0, 4))):
        method = draw(st.sampled_from(["round_robin", "weighted", "least_loaded", "owner"]))
        rule = {"id": f"r{i}", "match": draw(match.filter(bool)), "method": method, "team": "t1",
                "requires": draw(st.lists(st.sampled_from(["company.name", "contact.language", "attributes.plan"]),
                                          max_size=2))}
        if method == "owner":
            rule["owner"] = draw(st.sampled_from(OWNERS))
        if draw(st.booleans()):
            rule["fallback_owner"] = draw(st.sampled_from(OWNERS))
        rules.append(rule)
    tiers = {"default": "C", "rules": draw(st.lists(st.fixed_dictionaries({"tier": st.sampled_from(["A", "B"])}, optional={
        "when": st.fixed_dictionaries({}, optional={"intent": st.lists(st.sampled_from(["demo_request", "trial"])),
                                                    "min_score": st.floats(0, 100), "countries": st.lists(
                                                        st.sampled_from(["GB", "DE"]))})}), max_size=3))}
    try:
        return Config.model_validate({
            "owners": owners, "teams": teams, "tiers": tiers,
            "routing": {"rules": rules, "fallback_owner": draw(st.none() | st.sampled_from(OWNERS)),
                        "account_match": draw(st.booleans())},
        })
    except ValidationError:  # a configuration loading refuses (a rule after a catch-all): never routed with
        reject()


LEADS = st.builds(
    LeadFacts, lead_id=st.just("l"), tier=VALUES, source=VALUES, country=st.none() | VALUES, intent=st.none() | VALUES,
    product=st.none() | VALUES, language=st.none() | VALUES, company_name=st.none() | VALUES,
    company_domain=st.none() | VALUES, company_size=st.none() | VALUES, industry=st.none() | VALUES,
    attributes=st.dictionaries(st.sampled_from(["plan", "partner", "x"]), SCALARS | json_values(4), max_size=3),
)


def assert_one_decision(config: Config, decision) -> None:
    if decision.owner_id is not None:
        assert decision.method in ("account_match", "round_robin", "weighted", "least_loaded", "owner", "fallback")
        assert decision.owner_id in OWNERS
    else:
        assert decision.method == "queue"
        assert decision.reason in ("no_matching_rule", "missing_data", "no_eligible_owner", "at_capacity")


@fuzz(60)
@given(config=configs(), leads=st.lists(LEADS, min_size=1, max_size=4), account_owner=st.none() | st.sampled_from(OWNERS))
def test_every_lead_gets_exactly_one_decision(config, leads, account_owner) -> None:
    state = RoutingState(owners={o.id: o for o in config.owners}, account_owner=account_owner)
    for lead in leads:
        decision = decide(config, lead, state, NOW)
        assert_one_decision(config, decision)
        state = record(state, decision, config, NOW)


@fuzz(40)
@given(config=configs(), body=BODIES)
def test_any_submission_is_tiered_by_the_configuration(config, body) -> None:
    try:
        sub = read_submission(body, IntakeSource(), partial=True)
    except Exception:  # noqa: BLE001  a refusal (not an object) is test_intake_fuzz's property
        return
    assert classify_tier(sub, "web", config.tiers) in ("A", "B", "C")
