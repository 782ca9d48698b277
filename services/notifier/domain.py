"""Notifier's pure domain: who an escalation step reaches, webhook signatures, retry timing."""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from leadsla.shared.config import Config, EscalationPolicy

SIGNATURE_HEADER = "X-Leadsla-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class Recipient:
    id: str
    role: str  # owner | manager | lead_ops
    name: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class PlannedDelivery:
    policy_id: str
    step: int
    channel: str
    recipient: Recipient
    send_at: datetime


def policies_for(config: Config, event_type: str) -> list[EscalationPolicy]:
    return [p for p in config.escalation_policies if event_type in p.triggers]


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


def plan(config: Config, event_type: str, owner_id: str | None, triggered_at: datetime) -> list[PlannedDelivery]:
    planned = []
    for policy in policies_for(config, event_type):
        for step in policy.steps:
            for person in recipients(config, list(step.notify), owner_id):
                for channel in step.channels:
                    planned.append(PlannedDelivery(policy.id, step.step, channel, person,
                                                   triggered_at + timedelta(seconds=step.after)))
    return planned


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


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff from 1 s, capped at 5 minutes."""
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), 300))


def is_retryable(status: int | None) -> bool:
    """Network errors and 5xx, 408, 429 are worth retrying; other 4xx will fail again."""
    return status is None or status >= 500 or status in (408, 429)
