"""The YAML configuration: tiers, dedupe, teams and owners, calendars, routing, SLA policies,
disposition reasons, escalations and channels. Validated as a whole at load time; every
error names the path of the bad field (e.g. `sla_policies.0.metrics.first_response.target`).
"""
from __future__ import annotations

import hashlib
import os
import re
from datetime import date, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: str | int | float) -> float:
    """'90s', '5m', '1h30m', '2d' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like '5m', '1h30m' or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(value.strip())
        if not value.strip() or not match:
            raise ValueError(f"{value!r} is not a duration like '5m', '1h30m', '2d' or '45s'")
        d, h, m, s = (int(g or 0) for g in match.groups())
        seconds = float(((d * 24 + h) * 60 + m) * 60 + s)
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- tiers and dedupe -----------------------------------------------------------------------


class TierCondition(Strict):
    intent: list[str] | None = None
    source: list[str] | None = None
    min_score: float | None = None
    countries: list[str] | None = None


class TierRule(Strict):
    tier: str
    when: TierCondition = TierCondition()


class Tiers(Strict):
    default: str = "C"
    rules: list[TierRule] = Field(default_factory=list)


class Dedupe(Strict):
    window: Duration = 30 * 86400
    match_on: list[Literal["email", "phone"]] = Field(default_factory=lambda: ["email", "phone"])


# ---- calendars ------------------------------------------------------------------------------

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


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


class CalendarConfig(Strict):
    timezone: str = "UTC"
    # weekday -> spans like "09:00-17:30"; a calendar without hours is open around the clock.
    hours: dict[str, list[str]] | None = None
    holidays: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is None:
            return value
        if not any(value.values()):
            raise ValueError("a calendar with hours needs at least one open span (omit `hours` for 24x7)")
        for day, spans in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"{day!r} is not one of {', '.join(WEEKDAYS)}")
            for span in spans:
                _parse_span(span)
        return value

    def weekly_spans(self) -> dict[int, list[tuple[time, time | None]]]:
        """Weekday number (Monday=0) -> sorted open spans; None when always open."""
        hours = self.hours or {}
        return {i: sorted(_parse_span(s) for s in hours.get(day, [])) for i, day in enumerate(WEEKDAYS)}


# ---- people and routing ---------------------------------------------------------------------


class Owner(Strict):
    id: str
    name: str | None = None
    email: str | None = None
    manager_id: str | None = None
    status: Literal["available", "away", "offline"] = "available"
    capacity: int | None = Field(default=None, ge=0)
    languages: list[str] = Field(default_factory=list)
    calendar: str | None = None


class Team(Strict):
    id: str
    name: str | None = None
    manager_id: str | None = None
    members: list[str]


class RuleMatch(Strict):
    tiers: list[str] | None = None
    countries: list[str] | None = None
    sources: list[str] | None = None
    intents: list[str] | None = None
    products: list[str] | None = None
    languages: list[str] | None = None


class RoutingRule(Strict):
    id: str
    match: RuleMatch = RuleMatch()
    team: str
    method: Literal["round_robin"] = "round_robin"


class Routing(Strict):
    rules: list[RoutingRule] = Field(default_factory=list)
    fallback_owner: str | None = None


# ---- SLA policies ---------------------------------------------------------------------------


class MetricTarget(Strict):
    target: Duration
    warn_at: list[int] = Field(default_factory=lambda: [50, 80])

    @field_validator("warn_at")
    @classmethod
    def _percents(cls, value: list[int]) -> list[int]:
        if any(not 0 < p < 100 for p in value):
            raise ValueError("warning percents must be between 1 and 99")
        return sorted(set(value))


class PolicyFilter(Strict):
    tiers: list[str] | None = None
    sources: list[str] | None = None


class SlaPolicy(Strict):
    id: str
    filter: PolicyFilter = PolicyFilter()
    start_on: Literal["received", "assigned"] = "assigned"
    on_reassign: Literal["continue", "reset"] = "continue"
    calendar: str = "always"
    metrics: dict[Literal["first_response"], MetricTarget]
    qualifying_touches: list[str] = Field(default_factory=lambda: ["call", "email", "meeting", "sms"])


# ---- escalation and channels ----------------------------------------------------------------


class RateLimit(Strict):
    """At most `max` sends per `per` on one channel; the rest wait their turn (nothing is dropped)."""

    max: int = Field(ge=1)
    per: Duration = 60.0


class WebhookChannel(Strict):
    type: Literal["webhook"] = "webhook"
    url: str
    secret: SecretStr | None = None
    secret_env: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    rate_limit: RateLimit | None = None

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
    url_env: str
    timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    rate_limit: RateLimit | None = None

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
    password_env: str | None = None
    from_address: str = Field(alias="from")
    reply_to: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    rate_limit: RateLimit | None = None

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
    Discriminator(_channel_type),
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
    link_base_url: str | None = None
    # CRM subscriptions: how long one POST may take and how many tries before giving up.
    subscription_timeout_seconds: float = Field(default=5.0, gt=0)
    subscription_max_attempts: int = Field(default=8, ge=1)
    # A delivery leased for sending is retried after this long if its sender vanished (a crash).
    lease_seconds: float = Field(default=60.0, gt=0)
    quiet_hours: QuietHours | None = None
    digest: Digest | None = Digest()
    # CRM deliveries that went out (or were cancelled) are kept this long; failed ones until removed.
    keep_delivered: Duration = 7 * 86400


class EscalationStep(Strict):
    step: int = Field(ge=1)
    after: Annotated[float, BeforeValidator(lambda v: 0.0 if v in (0, "0", "0s") else parse_duration(v))] = 0.0
    notify: list[Literal["owner", "manager", "lead_ops"]] = Field(default_factory=lambda: ["owner"])
    channels: list[str]


class EscalationPolicy(Strict):
    id: str
    triggers: list[Literal["sla.breached", "sla.warning"]] = Field(default_factory=lambda: ["sla.breached"])
    steps: list[EscalationStep] = Field(min_length=1)


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
    notifier: NotifierSettings = NotifierSettings()

    @model_validator(mode="after")
    def _references_resolve(self) -> Config:
        problems: list[str] = []
        owners = {o.id for o in self.owners}
        teams = {t.id for t in self.teams}
        calendars = set(self.calendars) | {"always"}
        for i, team in enumerate(self.teams):
            for j, member in enumerate(team.members):
                if member not in owners:
                    problems.append(f"teams.{i}.members.{j}: unknown owner {member!r}")
        for i, owner in enumerate(self.owners):
            if owner.calendar and owner.calendar not in calendars:
                problems.append(f"owners.{i}.calendar: unknown calendar {owner.calendar!r}")
        for i, rule in enumerate(self.routing.rules):
            if rule.team not in teams:
                problems.append(f"routing.rules.{i}.team: unknown team {rule.team!r}")
        if self.routing.fallback_owner and self.routing.fallback_owner not in owners:
            problems.append(f"routing.fallback_owner: unknown owner {self.routing.fallback_owner!r}")
        for i, policy in enumerate(self.sla_policies):
            if policy.calendar not in calendars:
                problems.append(f"sla_policies.{i}.calendar: unknown calendar {policy.calendar!r}")
        for i, policy in enumerate(self.escalation_policies):
            for j, step in enumerate(policy.steps):
                for k, channel in enumerate(step.channels):
                    if channel not in self.channels:
                        problems.append(
                            f"escalation_policies.{i}.steps.{j}.channels.{k}: unknown channel {channel!r}"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def calendar(self, name: str) -> CalendarConfig:
        return self.calendars.get(name) or CalendarConfig()

    def owner(self, owner_id: str) -> Owner | None:
        return next((o for o in self.owners if o.id == owner_id), None)


class ConfigError(ValueError):
    """The configuration file is not valid; the message names every bad field by its path."""


def parse_config(text: str) -> Config:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a mapping at the top level")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # cross-reference checks already name their paths
                lines.extend(msg.split("; "))
            else:
                lines.append(f"{path}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
