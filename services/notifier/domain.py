"""Notifier's pure domain: who an escalation step reaches, which events a CRM subscription
takes, webhook signatures, and what to do after each delivery attempt (retry when, give up when).
No I/O, no clock: every function takes `now` (and, for jitter, a random number) from its caller."""
from __future__ import annotations

import fnmatch
import hashlib
import hmac
import html as html_lib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal

from shared.business_hours import BusinessCalendar
from shared.config import Config, EscalationPolicy, is_history
from shared.events import PAYLOADS, WireModel, deterministic_id

SIGNATURE_HEADER = "X-Leadsla-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
ESCALATING_TYPES = ("sla.breached", "sla.warning")
# A met or cancelled SLA makes the rest of its escalation chain pointless.
CHAIN_STOPPING_TYPES = ("sla.met", "sla.cancelled")


@dataclass(frozen=True)
class Recipient:
    id: str
    role: str  # owner | manager | lead_ops
    name: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class PlannedStep:
    policy_id: str
    step: int
    due_at: datetime


def policies_for(config: Config, event_type: str) -> list[EscalationPolicy]:
    return [p for p in config.escalation_policies if event_type in p.triggers]


def plan_steps(config: Config, event_type: str, triggered_at: datetime) -> list[PlannedStep]:
    """Every step of every policy this event triggers, each due at its delay."""
    return [PlannedStep(policy.id, step.step, triggered_at + timedelta(seconds=step.after))
            for policy in policies_for(config, event_type) for step in policy.steps]


def answers_chain(config: Config, sla: dict[str, Any], activity_type: str, outcome: str | None,
                  actor: str | None, owner_id: str | None, occurred_at: datetime | None = None, *,
                  disposition: bool = False) -> bool:
    """Whether an activity recorded after an escalation chain started answers what the chain
    escalates (`sla`: its trigger's data), so its later steps have no news left to tell: a touch
    for the SLA's metric under its policy, the rule the SLA clock judges by (a follow-up is also
    answered by a disposition or a booked meeting, a qualification by a disposition). A breached
    SLA stays breached and its clock emits nothing more for it, so the notifier judges the late
    touch itself; an SLA under a policy the configuration no longer has is left to escalate. An
    activity dated before the SLA's clock began (a CRM back-filling history) answers nothing."""
    started = _iso(sla.get("started_at"))
    if occurred_at is not None and started is not None and is_history(occurred_at, started):
        return False
    metric = sla.get("metric")
    disposition = disposition or activity_type == "disposition"  # one carried by a call counts too
    if metric == "qualification":
        return disposition
    if metric == "next_action" and (disposition or (activity_type, outcome) == ("meeting", "booked")):
        return True
    policy = config.sla_policy_by_id(sla.get("policy_id"))
    return policy is not None and policy.counts_as_touch(str(metric), activity_type, outcome, actor, owner_id)


# How many of a lead's latest touches the notifier keeps: a breach's answer comes soon after its
# deadline, and a CRM back-filling its history must not grow the row without end.
KEPT_TOUCHES = 5


def noted_touches(kept: list[dict[str, Any]] | None, *, type_: str, outcome: str | None, actor: str | None,
                  at: datetime, owner_id: str | None, disposition: bool) -> list[dict[str, Any]]:
    """The lead's latest touches with this one: what `answered_before` reads, the latest last."""
    touch = {"type": type_, "outcome": outcome, "actor": actor, "at": at.isoformat(), "owner_id": owner_id,
             "disposition": disposition}
    return sorted([*(kept or []), touch], key=lambda t: datetime.fromisoformat(t["at"]))[-KEPT_TOUCHES:]


def answered_before(config: Config, sla: dict[str, Any], touches: list[dict[str, Any]] | None) -> bool:
    """Whether a touch read before a breach (`sla`: its data) answers it: made at or after its
    deadline (one before it would have met the SLA), and a touch for its metric as `answers_chain`
    judges. The late touch and the breach reach the notifier on different topics, in either order;
    the clock often sends the breach just after the touch, which confirmed that the deadline
    passed. Read in that order, the breach must escalate no further than it would have with the
    touch read just after it: its steps already due go, the rest do not."""
    due = _iso(sla.get("due_at"))
    if due is None:
        return False
    for t in touches or ():
        at = datetime.fromisoformat(t["at"])
        if at >= due and answers_chain(config, sla, t["type"], t["outcome"], t["actor"], t["owner_id"], at,
                                       disposition=t["disposition"]):
            return True
    return False


def of_an_earlier_run(sla: dict[str, Any], sla_id: str, started_at: datetime) -> bool:
    """Whether a chain's trigger (`sla`: its data) tells of an earlier run of the timer `sla_id`,
    which has started again at `started_at` (reset on reassignment): its deadline no longer stands."""
    started = _iso(sla.get("started_at"))
    return sla.get("sla_id") == sla_id and started is not None and started != started_at


def is_stale_warning(due_at: datetime | None, now: datetime) -> bool:
    """Whether an sla.warning read at `now` comes too late: its deadline has passed, nothing is
    left to warn of."""
    return due_at is not None and due_at <= now


def roles_for(roles: list[str], root_cause: str | None, *, owned: bool = True) -> list[str]:
    """A breach the system caused (`system_delay`) is lead ops' to fix, not the owner's:
    owner and manager give way to lead ops. So do they for a lead nobody owns (queued: its
    breach is no_owner or capacity), or whose owner has left the configuration, who has neither:
    the step would reach nobody."""
    if root_cause == "system_delay":
        return ["lead_ops"]
    if owned:
        return roles
    return list(dict.fromkeys("lead_ops" if role in ("owner", "manager") else role for role in roles))


def recipients(config: Config, roles: list[str], owner_id: str | None) -> list[Recipient]:
    """Resolve roles to people; a role nobody fills is skipped, a person is reached once."""
    owner = config.owner(owner_id) if owner_id else None
    found: list[Recipient] = []
    for role in roles:
        if role == "owner" and owner_id:
            found.append(_person(config, owner_id, role))
        elif role == "manager":
            manager = owner.manager_id if owner else None
            if manager is None and owner_id:
                manager = next((t.manager_id for t in config.teams if owner_id in t.members and t.manager_id), None)
            if manager:
                found.append(_person(config, manager, role))
        elif role == "lead_ops":
            found.extend(_person(config, person, role) for person in config.lead_ops)
    unique: dict[str, Recipient] = {}
    for r in found:
        unique.setdefault(r.id, r)
    return list(unique.values())


def _person(config: Config, person_id: str, role: str) -> Recipient:
    owner = config.owner(person_id)
    return Recipient(id=person_id, role=role, name=owner.name if owner else None, email=owner.email if owner else None)


def step_recipients(config: Config, policy_id: str, step: int, owner_id: str | None,
                    root_cause: str | None) -> tuple[list[Recipient], list[str]]:
    """Who a due step reaches and over which channels (both empty if the step is gone from the
    configuration since it was planned)."""
    policy = next((p for p in config.escalation_policies if p.id == policy_id), None)
    found = next((s for s in policy.steps if s.step == step), None) if policy else None
    if found is None:
        return [], []
    # An owner the configuration no longer names (they left; their open leads stay theirs until
    # reassigned) is no owner to reach either: nobody reads their messages, and they have no manager.
    owned = owner_id is not None and config.owner(owner_id) is not None
    roles = roles_for(list(found.notify), root_cause, owned=owned)
    return recipients(config, roles, owner_id), list(found.channels)


def triggered_event_id(escalation_id: str) -> str:
    """The id of an escalation step's `escalation.triggered`: the cause of its notifications."""
    return deterministic_id(escalation_id, "triggered")


def idempotency_key(escalation_id: str, step: int, recipient_id: str, channel: str) -> str:
    """Derived from what the message is, never from when it was sent: every try of it, and a
    resend after a crash, carries the same key. The channel is part of it because one person
    reached by Slack and by email gets two different messages."""
    return deterministic_id("notification", escalation_id, str(step), recipient_id, channel)


# ---- subscriptions --------------------------------------------------------------------------


# What a subscription can be sent: the contract's types on the topics the notifier reads. Dead
# letters are not (they carry whatever bytes failed, and only operators read leads.deadletter).
DELIVERABLE_TYPES = frozenset(PAYLOADS) - {"deadletter"}


def invalid_event_type(pattern: str) -> str | None:
    """Why a subscription's event type is not acceptable, or None. `*` and `prefix.*` are
    allowed; anything else must be an event type of the contract that subscriptions are sent."""
    if pattern == "*":
        return None
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        if any(t.startswith(prefix) for t in DELIVERABLE_TYPES):
            return None
        return f"no event type starts with {prefix!r}"
    if pattern in DELIVERABLE_TYPES:
        return None
    if pattern in PAYLOADS:
        return f"{pattern!r} is not sent to subscriptions; operators read it on leads.deadletter"
    return f"unknown event type {pattern!r}; known: {', '.join(sorted(DELIVERABLE_TYPES))}"


def subscribed(patterns: list[str], event_type: str) -> bool:
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


# ---- signatures -----------------------------------------------------------------------------


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the timestamp stops replays."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, now: int,
           tolerance: int = SIGNATURE_TOLERANCE_SECONDS) -> bool:
    """What a receiver runs: the signature matches and is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# ---- after an attempt -----------------------------------------------------------------------

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
RETRY_AFTER_CAP = timedelta(hours=1)


@dataclass(frozen=True)
class Attempt:
    """What one try of a delivery found out. `status` is None when no answer came back."""

    status: int | None = None
    error: str | None = None
    retry_after: str | None = None  # the raw Retry-After header, if any

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Decision:
    state: Literal["sent", "pending", "failed"]
    next_attempt_at: datetime | None = None
    error: str | None = None


def backoff(attempts: int, jitter: float) -> timedelta:
    """Exponential from 1 s, capped at 5 minutes; `jitter` in [0, 1) spreads each wait over its
    upper half, so receivers coming back up are not hit by every sender at the same instant."""
    ceiling = min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_CAP_SECONDS)
    return timedelta(seconds=ceiling / 2 + ceiling / 2 * jitter)


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable; capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        wait = timedelta(seconds=int(value))
    else:
        try:
            wait = parsedate_to_datetime(value) - now
        except (TypeError, ValueError):
            return None
    return min(max(wait, timedelta(0)), RETRY_AFTER_CAP)


def is_retryable(status: int | None) -> bool:
    """Network errors and 5xx, 408, 429 are worth retrying; other 4xx will fail again."""
    return status is None or status >= 500 or status in (408, 429)


def decide(attempt: Attempt, attempts: int, max_attempts: int, now: datetime, jitter: float) -> Decision:
    """The delivery outcome tree, after its `attempts`-th try: sent (a 2xx), failed (a 4xx
    other than 408/429, or the last try), else retry later (pending, at a backoff honouring
    Retry-After)."""
    if attempt.ok:
        return Decision("sent")
    error = attempt.error or f"HTTP {attempt.status}"
    if not is_retryable(attempt.status) or attempts >= max_attempts:
        return Decision("failed", error=error)
    wait = backoff(attempts, jitter)
    if attempt.status in (429, 503):
        wait = max(wait, parse_retry_after(attempt.retry_after, now) or timedelta(0))
    return Decision("pending", next_attempt_at=now + wait, error=error)


# ---- what a person reads --------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFacts:
    lead_id: str
    name: str | None = None
    company: str | None = None
    tier: str | None = None
    owner_id: str | None = None
    owner_name: str | None = None


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    html: str
    slack: dict
    link: str | None


def lead_link(base_url: str | None, lead_id: str) -> str | None:
    """`base_url` is `notifier.link_template` (with `{lead_id}`) or `link_base_url`."""
    if base_url and "{lead_id}" in base_url:
        return base_url.replace("{lead_id}", lead_id)
    return f"{base_url.rstrip('/')}/v1/leads/{lead_id}" if base_url else None


def humanize(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def _iso(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def render(lead: LeadFacts, trigger_type: str, sla: dict, recipient: Recipient, step: int,
           link_base: str | None, now: datetime) -> Message:
    """One message, in plain text, HTML and Slack Block Kit: who, which lead, tier, how late, link."""
    due_at, breached_at = _iso(sla.get("due_at")), _iso(sla.get("breached_at"))
    # A name or company typed with line breaks (or other control characters) would break a mail's
    # Subject and a Slack header: each lead field is one line of text.
    who = one_line(lead.name) or "A lead"
    company = one_line(lead.company) or "unknown company"
    tier = lead.tier or sla.get("tier") or "?"
    owner = one_line(lead.owner_name or lead.owner_id or sla.get("owner_id")) or "nobody"
    metric = str(sla.get("metric", "first_response")).replace("_", " ")
    if trigger_type == "sla.breached":
        late = humanize(now - due_at) if due_at else "?"
        headline = f"SLA breached: {who} ({company}), tier {tier}, {late} late"
        status = f"{metric} was due {_fmt(due_at)}; breached {_fmt(breached_at or due_at)}; {late} late now"
    else:
        left = humanize(due_at - now) if due_at else "?"
        headline = f"SLA warning: {who} ({company}), tier {tier}, due in {left}"
        status = f"{metric} {sla.get('percent', '?')}% of target used; due {_fmt(due_at)} (in {left})"
    if sla.get("root_cause"):
        status += f"; root cause: {sla['root_cause']}"
    link = lead_link(link_base, lead.lead_id)
    facts = [("Lead", f"{who}, {company}"), ("Tier", tier), ("Owner", owner), ("Status", status),
             ("Escalation", f"step {step}, to you as {recipient.role}")]
    text_lines = [headline, "", *(f"{k}: {v}" for k, v in facts)]
    if link:
        text_lines.append(f"Open: {link}")
    html_rows = "".join(f"<tr><th align=left>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in facts)
    html_link = f'<p><a href="{_h(link)}">Open the lead</a></p>' if link else ""
    html = f"<html><body><h2>{_h(headline)}</h2><table>{html_rows}</table>{html_link}</body></html>"
    # Lead fields are whatever a form sender typed: they go to Slack as plain text only, so a
    # company named `<!channel>` or `*bold*` is shown as written, never as a mention or markup.
    blocks: list[dict] = [
        {"type": "header", "text": _plain(headline[:150])},
        {"type": "section", "fields": [_plain(f"{k}:\n{v}"[:2000]) for k, v in facts[:4]]},
        {"type": "context", "elements": [_plain(facts[4][1])]},
    ]
    if link:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": _plain("Open the lead"), "url": link}]})
    return Message(subject=headline, text="\n".join(text_lines) + "\n", html=html,
                   slack=_slack_message(headline, blocks), link=link)


def _plain(value: str) -> dict:
    return {"type": "plain_text", "text": value, "emoji": False}


def _slack_message(text: str, blocks: list[dict]) -> dict:
    """The top-level `text` is the notification's fallback: with `mrkdwn: false` Slack shows it
    unformatted, and escaping &, <, > keeps mentions (`<!channel>`) and links out of it."""
    # Cut before escaping: a cut after it could fall inside `&amp;` and show a stray `&am`.
    return {"text": _slack(text[:3000]), "mrkdwn": False, "blocks": blocks}


def _slack_list(items: list[dict], total: int, limit: int = 2900) -> dict:
    """A rich_text bullet list (literal text, no mrkdwn: a subject holds lead fields) of as many
    escalations as `limit` characters hold, each with its link, then how many more there are."""
    lines: list[dict] = []
    size = 0
    for item in items[:DIGEST_LINES]:
        subject = item["subject"]
        if size + len(subject) + 40 > limit:
            break
        elements: list[dict] = [{"type": "text", "text": subject}]
        if item.get("link"):
            elements += [{"type": "text", "text": " "}, {"type": "link", "url": item["link"], "text": "open"}]
        lines.append({"type": "rich_text_section", "elements": elements})
        size += len(subject) + 1
    blocks: list[dict] = [{"type": "rich_text_list", "style": "bullet", "elements": lines}] if lines else []
    if total > len(lines):
        blocks.append({"type": "rich_text_section",
                       "elements": [{"type": "text", "text": f"... and {total - len(lines)} more"}]})
    return {"type": "rich_text", "elements": blocks}


def one_line(value: str | None) -> str:
    """`value` with every run of whitespace and control characters as one space."""
    if not value:
        return ""
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())


def _fmt(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC") if ts else "?"


def _h(value: str) -> str:
    return html_lib.escape(value, quote=True)


def _slack(value: str) -> str:
    # Slack mrkdwn: only these three need escaping; user text must not become markup or mentions.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---- quiet hours and storms -----------------------------------------------------------------

PEOPLE_CHANNELS = ("slack", "email")


def deliver_at(calendar: BusinessCalendar | None, now: datetime, tier: str | None,
               urgent_tiers: list[str]) -> datetime:
    """When a message to a person may go: now inside their working hours or for an urgent tier,
    else when their calendar next opens."""
    if calendar is None or (tier is not None and tier in urgent_tiers) or calendar.is_open(now):
        return now
    return calendar.add(now, 0)


def rate_room(max_sends: int, used: int) -> int:
    """How many more sends a rate-limited channel may start now."""
    return max(max_sends - used, 0)


def digest_window(now: datetime, window_seconds: float) -> tuple[datetime, datetime]:
    """The fixed window `now` falls in (aligned to the epoch, so every replica agrees)."""
    epoch = now.timestamp()
    start = epoch - epoch % window_seconds
    return (datetime.fromtimestamp(start, now.tzinfo), datetime.fromtimestamp(start + window_seconds, now.tzinfo))


def goes_to_digest(recent: int, after: int) -> bool:
    """`recent`: messages already made for this person and channel in this window."""
    return recent >= after


def digest_key(recipient_id: str, channel: str, window_start: datetime) -> str:
    return deterministic_id("digest", recipient_id, channel, window_start.isoformat())


DIGEST_LINES = 25


def render_digest(items: list[dict], total: int, recipient: Recipient, window_end: datetime,
                  link_base: str | None) -> Message:
    """One message standing for `total` escalations (the first `items` listed)."""
    subject = f"{total} lead escalation{'' if total == 1 else 's'} for you (digest until {_fmt(window_end)})"
    lines = [f"- {i['subject']}" + (f" {i['link']}" if i.get("link") else "") for i in items[:DIGEST_LINES]]
    more = total - min(len(items), DIGEST_LINES)
    if more > 0:
        lines.append(f"... and {more} more")
    board = f"{link_base.rstrip('/')}/board" if link_base else None
    text = "\n".join([subject, "", *lines, *([f"All: {board}"] if board else [])]) + "\n"
    html_items = "".join(
        f"<li>{_h(i['subject'])}" + (f' <a href="{_h(i["link"])}">open</a>' if i.get("link") else "") + "</li>"
        for i in items[:DIGEST_LINES])
    html_more = f"<p>... and {more} more</p>" if more > 0 else ""
    html = f"<html><body><h2>{_h(subject)}</h2><ul>{html_items}</ul>{html_more}</body></html>"
    blocks = [{"type": "header", "text": _plain(subject[:150])},
              _slack_list(items, total),
              {"type": "context", "elements": [_plain(f"to you as {recipient.role}")]}]
    if board:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": _plain("Open the board"), "url": board}]})
    return Message(subject=subject, text=text, html=html, slack=_slack_message(subject, blocks), link=board)


# ---- CRM subscriptions: one lead's news in order (issue 10) ---------------------------------

# How long a lead's events wait for its lead.received when the notifier has not seen it yet
# (it lags on leads.intake only): long enough for a lagging consumer to catch up, short enough
# that a lead.received that never comes delays nothing much.
HOLD_FOR_RECEIVED = timedelta(seconds=60)


# A lead's news comes from four topics, read by separate fetches: one stamped earlier can be read a
# little later than one stamped after it (an sla.started and a lead.assigned made milliseconds
# apart). Each delivery waits this long after its own time, so that the earlier one, read by then,
# goes first (a lead's pending deliveries leave in event-time order).
ORDER_WINDOW = timedelta(seconds=1)


def subscription_send_at(is_received: bool, received_seen: bool, wants_received: bool, now: datetime,
                         event_time: datetime) -> datetime:
    """When a subscription delivery may first go: `ORDER_WINDOW` after its event's time (at once
    if read later than that; a time ahead of `now`, a sender's clock, counts as `now`). A lead's
    other events wait for its lead.received (bounded by HOLD_FOR_RECEIVED) if the subscription
    takes lead.received and the notifier has not seen it yet; once seen, lead.received goes first
    because pending deliveries of one lead leave in event-time order. `is_received`: this delivery
    is the lead.received."""
    ordered = max(now, min(event_time, now) + ORDER_WINDOW)
    if is_received or received_seen or not wants_received:
        return ordered
    return max(ordered, now + HOLD_FOR_RECEIVED)


# ---- the notifier's own events (kept in its store only, never published) --------------------
# Every change to the notifier's state tables is one of these (or a contract event it emits):
# `projection.py` applies them live and on replay, so they carry every value the tables hold.

INTERNAL: dict[str, type[InternalEvent]] = {}


class InternalEvent(WireModel):
    TYPE: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TYPE" in cls.__dict__:
            INTERNAL[cls.TYPE] = cls


class LeadNoted(InternalEvent):
    """What a message will say about a lead, taken from an input event (`fields`: the ones set)."""

    TYPE: ClassVar[str] = "notifier.lead_noted"
    lead_id: str
    fields: list[str]
    name: str | None = None
    company: str | None = None
    tier: str | None = None
    source: str | None = None
    received_at: datetime | None = None
    owner_id: str | None = None
    routed: bool = False  # an assignment, reassignment or queueing: owner_id (None too) is the router's
    # The lead's latest touches read (see `noted_touches`): a breach read after one that answers it
    # escalates no further than its steps already due (`answered_before`).
    touches: list[dict[str, Any]] | None = None


class PlannedEscalation(WireModel):
    escalation_id: str
    policy_id: str
    step: int
    due_at: datetime


class EscalationsPlanned(InternalEvent):
    TYPE: ClassVar[str] = "notifier.escalations_planned"
    lead_id: str
    sla_id: str
    trigger_event_id: str
    trigger: dict[str, Any]
    planned_at: datetime
    steps: list[PlannedEscalation]


class ChainStopped(InternalEvent):
    """The SLA was met or cancelled: its steps not yet fired are cancelled, and so are its
    messages held back by quiet hours and never tried. With `due_after` (a late touch answering a
    breach), only the steps due after it: the breach did happen, so its steps already due when the
    touch was read still tell it. With `except_trigger` (a breach), the chains of that event stay:
    a breach stops its warnings' steps and their messages not sent yet, not its own."""

    TYPE: ClassVar[str] = "notifier.chain_stopped"
    lead_id: str
    sla_id: str
    stopped_at: datetime
    due_after: datetime | None = None
    except_trigger: str | None = None


class NewDelivery(WireModel):
    notification_id: str  # also its idempotency key
    channel: str
    recipient: str
    kind: Literal["single", "digest"] = "single"
    payload: dict[str, Any]
    next_attempt_at: datetime


class DigestEntry(WireModel):
    notification_id: str  # the digest delivery it joins
    item: dict[str, Any]


class StepFired(InternalEvent):
    """A due step: the deliveries it made (a digest's delivery is made once per window) and the
    lines it added to digests. A step that reached nobody fires with neither."""

    TYPE: ClassVar[str] = "notifier.step_fired"
    lead_id: str
    escalation_id: str
    step: int
    fired_at: datetime
    deliveries: list[NewDelivery] = []
    digest_items: list[DigestEntry] = []


class QueuedFor(WireModel):
    subscription_id: str
    next_attempt_at: datetime


class SubscriptionQueued(InternalEvent):
    """An event copied to the subscriptions that want it; `body` is the CloudEvent as received.
    A lead.received releases the lead's deliveries held back waiting for it."""

    TYPE: ClassVar[str] = "notifier.subscription_queued"
    lead_id: str
    event_id: str
    event_type: str
    event_time: datetime
    body: str
    queued_at: datetime
    deliveries: list[QueuedFor]
    releases_held: bool = False


class DeliveriesLeased(InternalEvent):
    """A sender took these deliveries until `leased_until` (each one's attempts + 1)."""

    TYPE: ClassVar[str] = "notifier.deliveries_leased"
    token: str
    leased_until: datetime
    notification_ids: list[str] = []
    subscription_deliveries: list[tuple[str, str]] = []  # (subscription id, event id)


class DeliveryAttempted(InternalEvent):
    """The outcome of one try, recorded while the lease was still the sender's."""

    TYPE: ClassVar[str] = "notifier.delivery_attempted"
    lead_id: str
    notification_id: str | None = None  # a channel delivery
    subscription_id: str | None = None  # or a subscription delivery: (subscription_id, event_id)
    event_id: str | None = None
    state: Literal["sent", "pending", "failed"]
    next_attempt_at: datetime | None = None
    error: str | None = None
    at: datetime


class SubscriptionCreated(InternalEvent):
    TYPE: ClassVar[str] = "notifier.subscription_created"
    subscription_id: str
    url: str
    event_types: list[str]
    secret: str  # in the store only, as in the table: the subscription cannot sign without it
    created_at: datetime


class SubscriptionDeleted(InternalEvent):
    TYPE: ClassVar[str] = "notifier.subscription_deleted"
    subscription_id: str
    deleted_at: datetime


class SubscriptionRedelivered(InternalEvent):
    """An operator sent a subscription's failed deliveries again (same event ids, same keys)."""

    TYPE: ClassVar[str] = "notifier.subscription_redelivered"
    subscription_id: str
    event_ids: list[str]
    at: datetime


class DeliveriesPruned(InternalEvent):
    """Retention: CRM deliveries done with (sent, cancelled) and made before `before` are gone, the
    oldest `up_to` of them (by creation, then id; all of them in events recorded before the bound)."""

    TYPE: ClassVar[str] = "notifier.deliveries_pruned"
    before: datetime
    at: datetime
    up_to: int | None = None
