from datetime import UTC, datetime, timedelta

import pytest

from leadsla.services.notifier.domain import (
    is_retryable,
    plan,
    recipients,
    retry_delay,
    sign,
    verify,
)
from leadsla.shared.config import parse_config

CONFIG = parse_config("""
owners:
  - {id: alice, email: alice@example.com, manager_id: maria}
  - {id: bob}
  - {id: maria}
  - {id: ops}
  - {id: tom}
teams:
  - {id: sdr, manager_id: tom, members: [alice, bob]}
  - {id: other, members: [maria, ops]}
lead_ops: [ops, maria]
channels:
  hook: {url: "http://127.0.0.1:1/x", secret: s}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps:
      - {step: 1, notify: [owner, manager], channels: [hook]}
      - {step: 2, after: 15m, notify: [lead_ops], channels: [hook]}
""")
NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def test_manager_comes_from_the_owner_then_the_team() -> None:
    assert [r.id for r in recipients(CONFIG, ["owner", "manager"], "alice")] == ["alice", "maria"]
    assert [r.id for r in recipients(CONFIG, ["owner", "manager"], "bob")] == ["bob", "tom"]


def test_a_person_is_reached_once_and_missing_roles_are_skipped() -> None:
    assert [r.id for r in recipients(CONFIG, ["lead_ops", "manager"], "alice")] == ["ops", "maria"]
    assert recipients(CONFIG, ["owner", "manager"], None) == []


def test_escalation_steps_are_planned_at_their_delays() -> None:
    planned = plan(CONFIG, "sla.breached", "alice", NOW)
    assert [(p.step, p.recipient.id, p.send_at - NOW) for p in planned] == [
        (1, "alice", timedelta(0)),
        (1, "maria", timedelta(0)),
        (2, "ops", timedelta(minutes=15)),
        (2, "maria", timedelta(minutes=15)),
    ]
    assert plan(CONFIG, "sla.warning", "alice", NOW) == []


def test_signature_verifies_and_detects_tampering() -> None:
    body = b'{"lead_id":"l1"}'
    header = sign(b"secret", body, 1_800_000_000)
    assert verify(b"secret", body, header, now=1_800_000_010)
    assert not verify(b"secret", body + b" ", header, now=1_800_000_010)
    assert not verify(b"other", body, header, now=1_800_000_010)


def test_old_signatures_are_replays() -> None:
    header = sign(b"secret", b"{}", 1_800_000_000)
    assert not verify(b"secret", b"{}", header, now=1_800_000_000 + 301)


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", "garbage"])
def test_malformed_signature_headers_fail_closed(header: str) -> None:
    assert not verify(b"secret", b"{}", header, now=1_800_000_000)


def test_retry_policy() -> None:
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 10, 20)] == [1, 2, 4, 300, 300]
    assert is_retryable(None) and is_retryable(503) and is_retryable(429) and is_retryable(408)
    assert not is_retryable(400) and not is_retryable(404)
