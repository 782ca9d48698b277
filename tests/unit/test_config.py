from datetime import time
from pathlib import Path

import pytest

from shared.config import (
    ConfigError,
    config_warnings,
    parse_config,
    parse_duration,
    per_config,
    shown,
)

EXAMPLE = Path(__file__).parents[2] / "leadsla" / "example-config.yaml"


@pytest.mark.parametrize(("text", "seconds"), [("45s", 45), ("5m", 300), ("1h30m", 5400), ("2d", 172800), (90, 90)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5x", "m5", "-1", 0, True])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_the_shipped_example_is_valid() -> None:
    config = parse_config(EXAMPLE.read_text())
    assert config.sla_policies and config.routing.rules and config.escalation_policies


def errors_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return str(info.value)


def test_errors_name_the_path_of_the_bad_field() -> None:
    message = errors_of(
        "sla_policies:\n  - id: p\n    metrics:\n      first_response: {target: soon}\n"
        "calendars:\n  c: {timezone: Mars/Olympus}\n"
    )
    assert "sla_policies.0.metrics.first_response.target" in message
    assert "calendars.c.timezone" in message


def test_references_must_resolve() -> None:
    message = errors_of(
        "owners: [{id: a}]\nteams: [{id: t, members: [a, ghost]}]\n"
        "routing: {rules: [{id: r, team: nowhere}], fallback_owner: nobody}\n"
    )
    assert "teams.0.members.1: unknown owner 'ghost'" in message
    assert "routing.rules.0.team: unknown team 'nowhere'" in message
    assert "routing.fallback_owner: unknown owner 'nobody'" in message


def test_unknown_keys_are_typos_not_silence() -> None:
    assert "tiers.defualt" in errors_of("tiers: {defualt: A}\n")


def test_webhooks_must_be_signed() -> None:
    assert "secret" in errors_of("channels:\n  hook: {url: 'http://x'}\n")


def test_webhook_secret_is_hidden_when_shown() -> None:
    config = parse_config("channels:\n  hook: {url: 'http://x', secret: s3cret}\n")
    assert "s3cret" not in str(config.model_dump(mode="json"))


def test_not_yaml_is_a_clear_error() -> None:
    assert "not valid YAML" in errors_of("tiers: [unclosed\n")


def test_routing_config_refuses_duplicates_unknown_people_and_empty_teams() -> None:
    message = errors_of(
        "owners: [{id: a, manager_id: boss}, {id: a}]\n"
        "teams: [{id: t, members: [a], manager_id: chief}, {id: empty, members: []}]\n"
        "routing:\n  rules:\n"
        "    - {id: r, match: {regions: [mars]}, team: t}\n"
        "    - {id: r, method: owner, owner: ghost}\n"
    )
    assert "owners.1.id: duplicate id 'a' (also owners.0)" in message
    assert "owners.0.manager_id: unknown owner 'boss'" in message
    assert "teams.0.manager_id: unknown owner 'chief'" in message
    assert "teams.1.members: team 'empty' has no members" in message
    assert "routing.rules.1.id: duplicate id 'r' (also routing.rules.0)" in message
    assert "routing.rules.0.match.regions.0: unknown region 'mars'" in message
    assert "routing.rules.1.owner: unknown owner 'ghost'" in message


def test_routing_needs_a_catch_all_rule_last() -> None:
    message = errors_of(
        "owners: [{id: a}]\nteams: [{id: t, members: [a]}]\n"
        "routing: {rules: [{id: gb, match: {countries: [GB]}, team: t}]}\n"
    )
    assert "routing.rules: the last rule ('gb') must be a catch-all" in message
    message = errors_of(
        "owners: [{id: a}]\nteams: [{id: t, members: [a]}]\n"
        "routing: {rules: [{id: all, team: t}, {id: gb, match: {countries: [GB]}, team: t}]}\n"
    )
    assert "routing.rules.1: unreachable, rule 'all' before it matches every lead" in message


def test_rule_fields_are_checked_where_they_are_written() -> None:
    message = errors_of(
        "routing:\n  rules:\n"
        "    - {id: r, match: {company_sizes: [huge]}, team: t, requires: [contact.shoe_size]}\n"
        "    - {id: s, method: weighted}\n"
    )
    assert "routing.rules.0.match.company_sizes" in message and "'huge' is not a size band" in message
    assert "routing.rules.0.requires" in message and "'contact.shoe_size'" in message
    assert "routing.rules.1" in message and "method `weighted` needs `team`" in message


def test_what_is_derived_from_a_configuration_is_built_once_per_configuration_object() -> None:
    built: list[object] = []
    owners = per_config(lambda config: built.append(config) or [o.id for o in config.owners])
    first, same_text = parse_config("owners: [{id: alice}]\n"), parse_config("owners: [{id: alice}]\n")
    assert owners(first) == owners(first) == ["alice"]
    assert owners(same_text) == ["alice"]  # another object (a new version) is built for itself
    assert built == [first, same_text]


# ---- mistakes a sales-ops admin makes, each named by the path of the bad field ---------------


def example_with(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


def test_an_impossible_holiday_is_named_by_its_path_not_a_crash() -> None:
    # YAML's own date reading raised a bare ValueError ("day is out of range for month").
    message = errors_of(example_with("2026-12-28", "2026-12-32"))
    assert "calendars.emea-business.holidays.1" in message


def test_a_holiday_still_reads_as_a_date() -> None:
    config = parse_config(EXAMPLE.read_text())
    assert str(config.calendars["emea-business"].holidays[0]) == "2026-12-25"


def test_a_key_given_twice_is_refused_not_silently_replaced() -> None:
    # A second `owners:` at the end of a long file used to drop every owner above it.
    text = EXAMPLE.read_text() + "\nowners:\n  - {id: zoe}\n"
    message = errors_of(text)
    assert "owners: given twice" in message
    first, second = (i + 1 for i, line in enumerate(text.splitlines()) if line == "owners:")
    assert f"lines {first} and {second}" in message
    message = errors_of(example_with('mon: ["09:00-17:30"]', 'mon: ["09:00-17:30"]\n      mon: ["10:00-12:00"]'))
    assert "calendars.emea-business.hours.mon: given twice" in message


@pytest.mark.parametrize("text", ["", "\n", "# all commented out\n# owners: []\n"])
def test_an_empty_file_is_refused(text: str) -> None:
    assert "empty" in errors_of(text)


def test_lead_ops_must_be_known_owners() -> None:
    assert "lead_ops.0: unknown owner 'opss'" in errors_of(example_with("lead_ops: [ops]", "lead_ops: [opss]"))


def test_the_shipped_example_has_no_warnings() -> None:
    from services.intake.normalize import BUILTIN_INTENTS

    assert config_warnings(parse_config(EXAMPLE.read_text()), BUILTIN_INTENTS) == []


def test_a_tier_no_lead_can_have_is_a_warning_where_it_is_named() -> None:
    text = example_with("filter: {tiers: [C]}", "filter: {tiers: [D]}")
    text = text.replace("quiet_hours: {urgent_tiers: [A]}", "quiet_hours: {urgent_tiers: [AA]}")
    warnings = config_warnings(parse_config(text))
    assert [w.split(":")[0] for w in warnings] == ["sla_policies.2.filter.tiers.0", "notifier.quiet_hours.urgent_tiers.0"]
    assert "no lead can have tier 'D'" in warnings[0]


def test_a_misspelt_intent_in_a_rule_is_a_warning_but_an_intent_of_its_own_is_not() -> None:
    from services.intake.normalize import BUILTIN_INTENTS

    text = example_with("when: {intent: [trial]}", "when: {intent: [trail, partner_referral]}")
    warnings = config_warnings(parse_config(text), BUILTIN_INTENTS)
    assert len(warnings) == 1
    assert warnings[0].startswith("tiers.rules.1.when.intent.0: intent type 'trail' is not a known one; "
                                  "did you mean 'trial'?")


def test_countries_are_iso_codes_as_leads_carry_them() -> None:
    message = errors_of(example_with("uki: [GB, IE]", "uki: [UK, IE]")
                        .replace("default_region: US\n  timezone", "default_region: USA\n  timezone"))
    assert "routing.regions.uki.0: 'UK' is not an ISO 3166 alpha-2 country code" in message
    assert "intake.default_region: 'USA' is not an ISO 3166 alpha-2 country code" in message and "'US'?" in message
    assert "tiers.rules.0.when.countries.0" in errors_of("tiers: {rules: [{tier: A, when: {countries: [Germany]}}]}\n")


def test_an_unknown_channel_type_says_which_types_there_are() -> None:
    message = errors_of(example_with("type: email\n", "type: e-mail\n"))
    assert "channels.mail: `type` must be webhook, slack or email" in message
    assert "_channel_type" not in message


def test_an_owner_listed_twice_in_a_team_is_refused() -> None:
    message = errors_of(example_with("members: [alice, bob]", "members: [alice, bob, alice]"))
    assert "teams.0.members.2: 'alice' is listed twice (also members.0)" in message


def test_an_escalation_step_number_used_twice_is_refused() -> None:
    # Steps are looked up by number: the second step 1 would have re-sent the first's messages.
    message = errors_of(example_with("{step: 2, after: 15m", "{step: 1, after: 15m"))
    assert "escalation_policies.0.steps.1.step: step 1 is already steps.0" in message


def test_a_bare_number_or_true_where_text_belongs_says_to_quote_it() -> None:
    message = errors_of(example_with("uki: [GB, IE]", "uki: [GB, IE], nordics: [SE, true]"))
    assert "routing.regions.nordics.1: Input should be a valid string; YAML read the value as true or false" in message
    assert "put it in quotes" in errors_of(example_with("{id: ops, name", "{id: 007, name"))


def test_a_bad_span_or_weekday_is_named_by_its_own_path() -> None:
    message = errors_of(example_with('fri: ["09:00-17:00"]', 'fri: ["09:00-17:00", "9-5"]'))
    assert "calendars.emea-business.hours.fri.1: Value error, " not in message
    assert "calendars.emea-business.hours.fri.1: '9-5' is not a span like '09:00-17:30'" in message
    assert "calendars.emea-business.hours.monday" in errors_of(example_with('mon: ["09:00', 'monday: ["09:00'))


def test_a_policy_an_earlier_one_always_takes_first_is_a_warning() -> None:
    text = example_with("filter: {tiers: [B]}", "filter: {tiers: [A]}")
    assert config_warnings(parse_config(text)) == [
        "sla_policies.1: never applies: sla_policies.0 ('demo-fast') comes first and takes every lead its filter "
        "passes (a lead gets the first policy that fits)"]
    narrower_first = example_with("filter: {tiers: [B]}", "filter: {tiers: [A, B]}")
    assert config_warnings(parse_config(narrower_first)) == []


def test_a_cadence_window_shorter_than_one_follow_up_is_a_warning() -> None:
    warnings = config_warnings(parse_config(example_with("within: 14d", "within: 1h")))
    assert [w.split(":")[0] for w in warnings] == ["sla_policies.0.metrics.next_action.within"]


def test_whole_days_on_a_calendar_with_hours_is_a_warning_saying_what_a_working_day_is() -> None:
    # Seen as a sales-ops admin: "webinar sign-ups within a day" written `target: 1d` on an office
    # calendar was due three working days later, with no word from `config apply`.
    warnings = config_warnings(parse_config(example_with("{target: 8h30m}", "{target: 1d}")))
    assert warnings == [
        "sla_policies.2.metrics.first_response.target: 1d counts 24 open hours of calendar 'emea-business', "
        "about 2.8 of its 8.5-hour working days; for one working day write 8h30m (or use `calendar: always` "
        "for 24 hours around the clock)"]
    two_days = config_warnings(parse_config(example_with("{target: 8h30m}", "{target: 2d}")))
    assert "for 2 working days write 17h" in two_days[0]
    # Around the clock (`always`, a calendar without hours), or not whole days: meant as written.
    assert config_warnings(parse_config(example_with("{target: 8h30m}", "{target: 36h}"))) == []
    assert config_warnings(parse_config(example_with("{target: 8h30m}", "{target: 1d, calendar: always}"))) == []


def test_a_country_code_in_lower_case_is_read_as_the_code_leads_carry() -> None:
    config = parse_config(example_with("uki: [GB, IE]", "uki: [gb, ie]"))
    assert config.routing.regions["uki"] == ["GB", "IE"]


def test_public_holidays_name_a_known_country_and_subdivision() -> None:
    config = parse_config("calendars: {ny: {timezone: America/New_York, public_holidays: {country: US, subdivision: NY}}}")
    assert config.calendars["ny"].public_holidays.subdivision == "NY"
    message = errors_of("calendars: {x: {public_holidays: {country: XX}}}")
    assert "calendars.x.public_holidays" in message and "'XX' is not a country with known public holidays" in message
    message = errors_of("calendars: {x: {public_holidays: {country: US, subdivision: ZZ}}}")
    assert "calendars.x.public_holidays" in message and "'ZZ' is not a subdivision of US" in message


def test_an_error_in_a_field_of_several_shapes_is_named_by_its_path_alone() -> None:
    # Pydantic adds the union member it tried (str, TouchRule) to the location; an admin's file has no such key.
    message = errors_of("sla_policies: [{id: p, metrics: {first_response: {target: 10m}}, "
                        "qualifying_touches: [{type: call, outcome: 5}]}]\ncalendars: {EMEA: {timezone: Nowhere/X}}")
    assert "sla_policies.0.qualifying_touches.0.outcome: " in message and "TouchRule." not in message
    assert ".str:" not in message and "calendars.EMEA.timezone" in message  # an id in capitals stays


def test_tiers_rank_by_the_rules_order_not_by_their_names() -> None:
    tiers = parse_config("""
tiers:
  default: cold
  rules:
    - {tier: hot, when: {intent: [demo_request]}}
    - {tier: warm, when: {intent: [pricing]}}
    - {tier: hot, when: {source: [partner]}}
""").tiers
    assert tiers.order == ("hot", "warm", "cold")  # as the rules first name them, the default last
    assert [tiers.rank(t) for t in ("hot", "warm", "cold", "retired")] == [0, 1, 2, 3]  # unknown: after them
    assert sorted(["cold", "retired", "warm", "hot", "archived"], key=tiers.key) == [
        "hot", "warm", "cold", "archived", "retired"]  # tiers it does not name: after, by name
    assert parse_config("tiers: {default: hot, rules: [{tier: hot}]}").tiers.order == ("hot",)


# ---- YAML's quirks where an admin writes text ---------------------------------------------------


def test_norway_on_and_off_are_text_where_text_is_expected_and_booleans_where_booleans_are() -> None:
    # YAML 1.1 reads NO, yes, on, off as booleans: Norway's code, Ontario's, a reason named `no`.
    config = parse_config(
        example_with("uki: [GB, IE]", "uki: [GB, IE], nordics: [SE, NO]")
        .replace("# public_holidays: {country: GB, subdivision: ENG}", "public_holidays: {country: CA, subdivision: ON}")
        .replace("account_match: true", "account_match: yes")
        .replace("no_budget, no_authority", "no, no_authority"))
    assert config.routing.regions["nordics"] == ["SE", "NO"]
    assert config.calendars["emea-business"].public_holidays.subdivision == "ON"
    assert config.routing.account_match is True
    assert config.disposition_reasons["disqualified"][0] == "no"
    assert parse_config(example_with("account_match: true", "account_match: off")).routing.account_match is False


def test_a_clock_time_where_a_duration_belongs_is_refused_not_read_as_seconds() -> None:
    # YAML 1.1 reads 5:00 as the base-60 number 300: 5 minutes or 5 hours, nobody can tell.
    message = errors_of(example_with("{target: 5m, warn_at", "{target: 5:00, warn_at"))
    assert "sla_policies.0.metrics.first_response.target: '5:00' is not a duration" in message
    assert "write 5m for minutes or 5h for hours" in message
    assert "calendars.emea-business.hours.mon.0: '9:00' is not a span" in errors_of(
        example_with('mon: ["09:00-17:30"]', "mon: [9:00]"))


@pytest.mark.parametrize("bad", [".inf", ".nan", "99999999999d", "1e400"])
def test_a_duration_must_be_a_finite_number_of_seconds_within_ten_years(bad: str) -> None:
    message = errors_of(example_with("{target: 5m, warn_at", f"{{target: {bad}, warn_at"))
    assert "sla_policies.0.metrics.first_response.target: " in message


def test_a_number_of_seconds_in_quotes_is_a_number_of_seconds() -> None:
    config = parse_config(example_with("{target: 5m, warn_at", "{target: '300', warn_at"))
    assert config.sla_policies[0].metrics["first_response"].target == 300


@pytest.mark.parametrize("field", ["queue_check_seconds: .nan", "queue_check_seconds: .inf"])
def test_numbers_must_be_finite(field: str) -> None:
    assert "routing.queue_check_seconds" in errors_of(example_with("queue_check_seconds: 5", field))


# ---- calendars ----------------------------------------------------------------------------------


def test_overlapping_spans_of_a_day_are_refused_naming_both() -> None:
    message = errors_of(example_with('mon: ["09:00-17:30"]', 'mon: ["09:00-12:00", "11:00-17:30"]'))
    assert "calendars.emea-business.hours.mon: '09:00-12:00' (mon.0) and '11:00-17:30' (mon.1) overlap" in message
    # Back to back is not an overlap.
    parse_config(example_with('mon: ["09:00-17:30"]', 'mon: ["13:00-17:30", "09:00-13:00"]'))


def test_a_span_with_a_one_digit_hour_or_spaces_is_read() -> None:
    config = parse_config(example_with('mon: ["09:00-17:30"]', 'mon: ["9:00 - 17:30"]'))
    assert config.calendars["emea-business"].weekly_spans()[0] == [(time(9), time(17, 30))]


def test_public_holidays_country_in_lower_case_is_the_code() -> None:
    config = parse_config("calendars: {x: {public_holidays: {country: gb, subdivision: ENG}}}")
    assert config.calendars["x"].public_holidays.country == "GB"


# ---- rules that can never match -------------------------------------------------------------------


def test_an_empty_list_in_a_condition_matches_no_lead_and_is_refused() -> None:
    message = errors_of(example_with("match: {regions: [uki], company_sizes", "match: {tiers: [], regions: [uki], company_sizes")
                        .replace("filter: {tiers: [B]}", "filter: {tiers: [B], sources: []}")
                        .replace("when: {intent: [trial]}", "when: {intent: []}")
                        .replace("uki: [GB, IE]", "uki: [GB, IE], nowhere: []"))
    assert "routing.rules.0.match.tiers: an empty list matches no lead" in message
    assert "sla_policies.1.filter.sources: an empty list matches no lead" in message
    assert "tiers.rules.1.when.intent: an empty list matches no lead" in message
    assert "routing.regions.nowhere: an empty list matches no lead" in message


def test_a_rule_after_one_that_takes_every_lead_is_unreachable_even_if_that_one_requires_fields() -> None:
    # A rule takes every lead it matches; one it cannot work (missing fields) goes to the fallback.
    message = errors_of(example_with("match: {regions: [uki], company_sizes: [\"1000+\"]}, team: sdr,",
                                     "team: sdr,"))
    assert "routing.rules.1: unreachable, rule 'enterprise-uki' before it matches every lead" in message


def test_a_rule_an_earlier_rule_always_takes_first_is_a_warning() -> None:
    text = example_with("- {id: inbound-round-robin",
                        "- {id: uki-any, match: {regions: [uki]}, team: sdr}\n"
                        "    - {id: uki-tier-a, match: {regions: [UKI], tiers: [A]}, team: sdr}\n"
                        "    - {id: inbound-round-robin")
    text = text.replace("uki: [GB, IE]", "uki: [GB, IE], UKI: [GB]")
    assert config_warnings(parse_config(text)) == [
        "routing.rules.2: never matches: routing.rules.1 ('uki-any') comes first and takes every lead it "
        "matches (a lead goes by the first rule that matches)"]



@pytest.mark.parametrize(("earlier", "later", "shadowed"), [
    ("regions: [uki]", "countries: [IE]", True),  # a region's rule covers one of its countries
    ("countries: [GB, IE]", "regions: [uki]", True),
    ("regions: [uki]", "countries: [FR]", False),
    ("regions: [uki], countries: [GB]", "countries: [IE]", False),  # both: the countries they share
    ('company_sizes: ["1000+"]', 'company_sizes: ["5000+"]', True),  # by the numbers a band takes in
    ('company_sizes: ["1-50", "51-200"]', 'company_sizes: ["10-100"]', True),
    ('company_sizes: ["1000+"]', 'company_sizes: ["500+"]', False),
    ('company_sizes: ["1-50", "60-200"]', 'company_sizes: ["10-100"]', False),
    ('company_sizes: ["1000+"]', "tiers: [A]", False),  # any size, and leads without one
    ("languages: [en]", "languages: [en-GB]", True),  # both read as the primary language
    ("languages: [en]", "languages: [en, de]", False),
])
def test_a_rule_shadowed_through_a_region_or_a_size_band_is_a_warning(earlier, later, shadowed) -> None:
    """An acceptance sweep: a country rule after its region's rule, a 5000+ rule after a 1000+ one,
    never matched and `config apply` said nothing (only identical lists were compared)."""
    text = example_with("- {id: inbound-round-robin",
                        f"- {{id: first, match: {{{earlier}}}, team: sdr}}\n"
                        f"    - {{id: second, match: {{{later}}}, team: sdr}}\n"
                        "    - {id: inbound-round-robin")
    warned = [w for w in config_warnings(parse_config(text)) if w.startswith("routing.rules.2: never matches")]
    assert bool(warned) is shadowed, warned

# ---- touches, escalations and channels -------------------------------------------------------


def test_a_qualifying_touch_of_no_activity_type_is_refused() -> None:
    message = errors_of(example_with("      - sms\n", "      - smss\n      - phone\n      - pause\n")
                        .replace("{type: call, outcomes: [connected]}", "{type: cal, outcomes: [connected]}"))
    assert "sla_policies.0.qualifying_touches.1: 'smss' is not an activity type; did you mean 'sms'?" in message
    assert "sla_policies.0.qualifying_touches.2: 'phone' is not an activity type; did you mean 'call'?" in message
    assert "sla_policies.0.qualifying_touches.3: a pause is never a touch" in message
    assert "sla_policies.0.qualifying_touches.5.type: 'cal' is not an activity type; did you mean 'call'?" in message


def test_a_misspelt_outcome_of_a_touch_is_a_warning() -> None:
    text = example_with("{type: call, outcomes: [connected]}", "{type: call, outcomes: [conected]}")
    assert config_warnings(parse_config(text)) == [
        "sla_policies.0.qualifying_touches.3.outcomes.0: outcome 'conected' is not a known call outcome; did you "
        "mean 'connected'? (as written it matches only activities sent with exactly that outcome)"]


def test_an_escalation_step_without_channels_is_refused() -> None:
    message = errors_of(example_with("notify: [owner, manager], channels: [ops-webhook, mail]",
                                     "notify: [owner, manager], channels: []"))
    assert "escalation_policies.0.steps.0.channels: a step needs at least one channel" in message


def test_urls_and_addresses_are_checked_when_the_file_is_read() -> None:
    message = errors_of(example_with("url: http://127.0.0.1:8009/hooks/leadsla", "url: 127.0.0.1:8009/hooks")
                        .replace("link_base_url: http://127.0.0.1:8005", "link_base_url: reporting.internal")
                        .replace('from: "leadsla <alerts@example.com>"', 'from: "leadsla alerts"')
                        .replace("email: alice@example.com", "email: alice"))
    assert "channels.ops-webhook.url: '127.0.0.1:8009/hooks' is not an http(s) URL" in message
    assert "notifier.link_base_url: 'reporting.internal' is not an http(s) URL" in message
    assert "channels.mail.from: 'leadsla alerts' is not an email address" in message
    assert "owners.0.email: 'alice' is not an email address" in message


def test_an_error_in_a_channel_is_named_by_the_channels_path_without_its_type() -> None:
    message = errors_of(example_with("port: 8025", "port: 0"))
    assert "channels.mail.port: Input should be greater than or equal to 1" in message


def test_an_owners_language_that_is_no_language_code_is_refused_by_path() -> None:
    message = errors_of(example_with("{id: alice, name", "{id: alice, languages: [German], name"))
    assert "owners.0.languages.0: 'German' is not a language code; did you mean 'de'?" in message


def test_a_suppressed_phone_that_is_no_phone_number_is_refused_by_path() -> None:
    message = errors_of(example_with("phones: []", "phones: ['+1 415 555 2671', call me]"))
    assert "intake.suppression.phones.1: 'call me' is not a phone number" in message
    message = errors_of(example_with("phones: []", "phones: ['07946 001800']").replace("default_region: US\n  timezone", "timezone"))
    assert "intake.suppression.phones.0: '07946 001800' has no country code" in message


def test_tier_rules_after_one_without_conditions_are_a_warning() -> None:
    text = example_with("    - tier: B\n      when: {intent: [trial]}\n", "    - tier: B\n")
    assert config_warnings(parse_config(text)) == [
        "tiers.rules.2: never applies: tiers.rules.1 has no `when` and gives every lead tier 'B' first "
        "(a lead gets the first rule that fits)",
        "tiers.default: never applies: tiers.rules.1 has no `when` and gives every lead tier 'B' first "
        "(a lead gets the first rule that fits)"]


@pytest.mark.parametrize(("earlier", "later", "shadowed"), [
    ("{intent: [demo_request, contact_sales]}", "{intent: [demo_request]}", True),
    ("{min_score: 70}", "{min_score: 80}", True),
    ("{min_score: 70}", "{min_score: 80, intent: [trial]}", True),  # a narrower lead still fits the first
    ("{intent: [demo_request], source: [webform]}", "{intent: [demo_request]}", False),  # other sources
    ("{min_score: 80}", "{min_score: 70}", False),
    ("{countries: [DE, AT]}", "{countries: [AT]}", True),
    ("{countries: [DE]}", "{countries: [AT]}", False),
    ("{intent: [trial]}", "{intent: [trial, webinar]}", False),  # webinar leads still get the second
])
def test_a_tier_rule_an_earlier_one_always_takes_first_is_a_warning(earlier: str, later: str, shadowed: bool) -> None:
    config = parse_config(f"tiers: {{rules: [{{tier: A, when: {earlier}}}, {{tier: B, when: {later}}}]}}")
    expected = ["tiers.rules.1: never applies: tiers.rules.0 (tier 'A') comes first and takes every lead it fits "
                "(a lead gets the first rule that fits)"]
    assert [w for w in config_warnings(config) if w.startswith("tiers.")] == (expected if shadowed else [])


def test_a_bad_touch_or_overlap_is_named_beside_the_other_errors_of_its_policy_or_calendar() -> None:
    message = errors_of(example_with("{target: 5m, warn_at", "{target: soon, warn_at").replace("      - sms\n", "      - smss\n")
                        .replace('mon: ["09:00-17:30"]', 'mon: ["09:00-12:00", "11:00-17:30"]')
                        .replace("timezone: Europe/London", "timezone: Europe/Londn"))
    assert "sla_policies.0.metrics.first_response.target" in message and "sla_policies.0.qualifying_touches.1" in message
    assert "calendars.emea-business.timezone" in message and "calendars.emea-business.hours.mon" in message


def test_a_target_more_open_time_than_the_calendar_has_in_three_years_is_refused() -> None:
    # The clock looks three years ahead for open hours; past that it raised on every lead.
    text = ("calendars: {weekly-hour: {hours: {mon: ['09:00-10:00']}}}\n"
            "sla_policies: [{id: p, calendar: weekly-hour, metrics: {qualification: {target: 200h}, "
            "next_action: {target: 1h, within: 10d}}}]\n")
    message = errors_of(text)
    assert ("sla_policies.0.metrics.qualification.target: 200h of open time is more than calendar 'weekly-hour' "
            "opens in three years (1h a week)") in message
    assert "sla_policies.0.metrics.next_action.within: 240h of open time is more" in message
    parse_config(text.replace("200h", "150h").replace("10d", "6d"))


def test_a_person_an_email_step_reaches_without_an_email_address_is_a_warning() -> None:
    # Seen as a lead-ops admin: lead ops without `email` on an escalation step by mail was
    # accepted, and every escalation's mail to them failed at once (recipient has no email
    # address) into dead letters, with no word from `config apply`.
    text = example_with("{id: ops, name: Lead Ops, email: leadops@example.com}", "{id: ops, name: Lead Ops}")
    text = text.replace("{id: maria, name: Maria Manager, email: maria@example.com}", "{id: maria}")
    assert config_warnings(parse_config(text)) == [
        "owners.2 ('maria'): no email, but escalation_policies.0.steps.0 reaches them as owner by email "
        "channel 'mail': each such mail fails at once",  # routing.fallback_owner, and alice's manager
        "owners.3 ('ops'): no email, but escalation_policies.0.steps.0 reaches them as lead_ops by email "
        "channel 'mail': each such mail fails at once",  # a system_delay breach goes to lead ops
    ]
    assert config_warnings(parse_config(text.replace("channels: [ops-webhook, mail]", "channels: [ops-webhook]"))) == []


def test_a_link_template_needs_the_lead_id_and_an_http_url() -> None:
    message = errors_of(EXAMPLE.read_text().replace(
        "link_base_url: http://127.0.0.1:8005", "link_template: https://crm.example.com/leads"))
    assert "notifier.link_template: 'https://crm.example.com/leads' has no {lead_id}" in message
    message = errors_of(EXAMPLE.read_text().replace(
        "link_base_url: http://127.0.0.1:8005", "link_template: crm/{lead_id}"))
    assert "notifier.link_template: 'crm/{lead_id}' is not an http(s) URL" in message


# ---- an audit with the mistakes admins make (tenth session) -----------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("sla_policies:\n  - id: p\n    metrics:\n      first_response:\n        target:\n",
     "sla_policies.0.metrics.first_response.target: a duration like '5m'"),
    ("dedupe: {window: [30d]}\n", "dedupe.window: a duration like '5m'"),
    ("calendars: {c: {timezone: Europe}}\n", "calendars.c.timezone: 'Europe' is not an IANA time zone"),
    ("intake: {timezone: US}\n", "intake.timezone: 'US' is not an IANA time zone"),
    ('owners: [{id: alice, name: "Ali\x0bce"}]\n', "not valid YAML: special characters are not allowed"),
    ("x: " + "[" * 2000 + "]" * 2000 + "\n", "not valid YAML: nested too deeply"),
])
def test_what_crashed_the_reading_is_an_error_naming_its_place(text: str, message: str) -> None:
    """A blank duration (AttributeError), a region for a zone (IsADirectoryError), a control
    character pasted from a word processor (ReaderError): tracebacks, not errors, for the admin."""
    assert message in errors_of(text)


@pytest.mark.parametrize("text", [
    "channels: {w: {url: 'https://x.example.com', secret: 8675309123456}}\n",
    "channels:\n  w:\n    url: https://x.example.com\n\tsecret: 8675309123456\n",
    'channels:\n  w:\n    url: https://x.example.com\n    secret: "8675309123456\n',
])
def test_a_secret_is_never_quoted_in_an_error(text: str) -> None:
    assert "8675309123456" not in errors_of(text)


@pytest.mark.parametrize(("channel", "field"), [
    ("{type: slack, url_env: 'https://hooks.slack.com/services/T0/B0/XXXX'}", "url_env"),
    ("{type: email, host: h, from: a@example.com, username: u, password_env: 'my real password'}", "password_env"),
])
def test_an_env_field_takes_a_variable_s_name_not_its_value(channel: str, field: str) -> None:
    """The value was printed in every delivery error as the 'name' of a variable that is not set."""
    message = errors_of(f"channels: {{c: {channel}}}\n")
    assert f"channels.c.{field}: is the name of an environment variable" in message
    assert "XXXX" not in message and "real password" not in message


def test_a_secret_written_as_a_reference_is_refused_not_used_as_the_key() -> None:
    message = errors_of("channels: {w: {url: 'https://x.example.com', secret: '${LEADSLA_WEBHOOK_SECRET}'}}\n")
    assert "channels.w.secret: looks like a reference to an environment variable" in message


def test_numbers_with_a_leading_zero_are_decimal_as_in_yaml_1_2() -> None:
    """`target: 0300` was 192 seconds and `capacity: 010` eight leads (YAML 1.1's octal)."""
    config = parse_config("owners: [{id: alice, capacity: 010}]\n"
                          "sla_policies: [{id: p, metrics: {first_response: {target: 0300, warn_at: [050]}}}]\n")
    assert config.owners[0].capacity == 10
    target = config.sla_policies[0].metrics["first_response"]
    assert (target.target, target.warn_at) == (300, [50])
    assert parse_config("owners: [{id: alice, capacity: 0x10}]\n").owners[0].capacity == 16


def test_routing_rule_languages_are_read_as_owners_languages_are() -> None:
    """'German' or 'deu' on a rule never matched a `de` lead (the same on an owner was read as `de`)."""
    text = ("owners: [{id: a}]\nteams: [{id: sdr, members: [a]}]\n"
            "routing: {rules: [{id: de, match: {languages: [DEU, de-AT]}, team: sdr}, {id: all, team: sdr}]}\n")
    assert parse_config(text).routing.rules[0].match.languages == ["de", "de"]
    assert "routing.rules.0.match.languages.0: 'German' is not a language code; did you mean 'de'?" in errors_of(
        text.replace("DEU", "German"))


@pytest.mark.parametrize("after", ["0", "0s", "0m", "0h", 0])
def test_an_escalation_step_without_delay_is_written_any_way(after) -> None:
    text = ("owners: [{id: a}]\nchannels: {w: {url: 'https://x.example.com', secret: s}}\n"
            f"escalation_policies: [{{id: e, steps: [{{step: 1, after: {after!r}, notify: [owner], channels: [w]}}]}}]\n")
    assert parse_config(text).escalation_policies[0].steps[0].after == 0


def test_a_dry_run_masks_a_secret_written_as_a_block_scalar_too() -> None:
    """Only a one-line `secret:` was masked: `secret: |` printed the value on the lines below it."""
    from leadsla.cli import _masked_lines

    text = "channels:\n  w:\n    secret: |\n      whsec_TopSecret\n    url: https://x.example.com\nowners: []\n"
    shown = "".join(_masked_lines(text))
    assert "whsec_TopSecret" not in shown
    assert shown.splitlines()[4:] == ["    url: https://x.example.com", "owners: []"]
    assert _masked_lines(text.replace("TopSecret", "Other")) != _masked_lines(text)  # a change still shows


def test_each_cross_reference_problem_is_one_line_with_its_path() -> None:
    """Problems were joined with '; ' and split again: a hint after '; ' (or an id holding one)
    became a line of its own without a path."""
    message = errors_of("owners: [{id: alice}]\nteams: [{id: t, members: [alice, 'al; ice', alice]}]\n")
    assert message.splitlines()[1:] == [
        "  teams.0.members.1: unknown owner 'al; ice'",
        "  teams.0.members.2: 'alice' is listed twice (also members.0); for a larger share use the owner's `weight`"]


@pytest.mark.parametrize(("text", "line"), [
    ("calendars: {Team: {timezone: Mars/Base}}\n", "calendars.Team.timezone: 'Mars/Base' is not an IANA time zone"),
    ("calendars: {none: {timezone: Mars/Base}}\n", "calendars.none.timezone: 'Mars/Base' is not an IANA time zone"),
    ("sla_policy: []\n", "sla_policy: is not a field here (a typo, or in the wrong section?)"),
    ("sla_policies: [{id: p, metrics: {first_response: 5m}}]\n",
     "sla_policies.0.metrics.first_response: should be a mapping of fields"),
    ("calendars: {c: {holidays: [20261225]}}\n", "calendars.c.holidays.0: should be a date like 2026-12-25"),
    ("owners: [{name: x}]\n", "owners.0.id: Field required"),
])
def test_an_error_names_the_place_as_the_file_writes_it_in_an_admin_s_words(text: str, line: str) -> None:
    """A calendar named like a model (`Team`) lost its name from the path, and messages named the
    models' classes ('instance of MetricTarget')."""
    assert line in errors_of(text)


def test_the_configuration_is_shown_under_the_names_a_file_takes_with_secrets_masked() -> None:
    """`GET /v1/config` showed a mail channel's sender as `from_address`, a key a file refuses."""
    config = parse_config("""
channels:
  hook: {url: "https://crm.example/hook", secret: "s3cret-signing-0123456789"}
  mail: {type: email, host: smtp.example, from: "leads@example.com"}
""")
    channels = shown(config)["channels"]
    assert channels["mail"]["from"] == "leads@example.com" and "from_address" not in channels["mail"]
    assert "s3cret-signing" not in str(channels)
