from datetime import UTC, datetime

from leadsla.services.router.domain import LeadFacts, decide
from leadsla.shared.config import parse_config

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


def lead(country: str | None = "GB", language: str | None = None) -> LeadFacts:
    return LeadFacts("l1", "A", "web", country, "demo_request", None, language)


def test_round_robin_takes_turns_among_eligible_owners() -> None:
    cursors: dict[str, int] = {}
    owners = []
    for _ in range(4):
        decision = decide(CONFIG, lead(), cursors, {}, NOW)
        owners.append(decision.owner_id)
        cursors[decision.rule_id] = decision.next_cursor
    assert owners == ["a", "c", "a", "c"]  # b is away


def test_every_candidate_says_why() -> None:
    decision = decide(CONFIG, lead(), {"everyone": 0}, {}, NOW)
    assert decision.owner_id == "c"
    assert [(c.owner_id, c.eligible, c.why) for c in decision.candidates] == [
        ("b", False, "status away"),
        ("c", True, "next in turn"),
    ]


def test_capacity_is_respected() -> None:
    decision = decide(CONFIG, lead(), {"everyone": 0}, {"c": 2}, NOW)
    assert decision.owner_id == "a"
    assert decision.candidates[1].why == "at capacity (2/2)"


def test_working_hours_and_language_make_owners_ineligible_then_fallback() -> None:
    decision = decide(CONFIG, lead(country="DE", language="fr"), {}, {}, NOW)
    assert decision.owner_id == "boss"
    assert decision.method == "fallback" and decision.reason == "no_eligible_owner"
    assert {c.owner_id: c.why for c in decision.candidates if not c.eligible} == {
        "d": "outside working hours",
        "e": "does not speak fr",
    }


def test_queue_when_nobody_can_take_it() -> None:
    config = CONFIG.model_copy(update={"routing": CONFIG.routing.model_copy(update={"fallback_owner": None})})
    decision = decide(config, lead(country="DE", language="fr"), {}, {}, NOW)
    assert decision.owner_id is None and decision.method == "queue"
