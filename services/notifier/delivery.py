"""Delivering: due deliveries are *leased* (attempts + 1, a lease token, a lease expiry: the
`notifier.deliveries_leased` event) and that is committed; they are sent outside any transaction;
each outcome (`notifier.delivery_attempted`, with the contract's notification.sent/failed) is
recorded only if the lease is still ours, checked under a row lock held to commit. What the
outcome is (sent, retry at a backoff, failed) is domain.decide's call. A crash after the send and before the record lets the lease expire and the
delivery goes again with the same idempotency key, which was stored when the delivery was
written, never made at send time.
"""
from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import Row, func, select, text

from shared import metrics, tracing
from shared.clock import Clock
from shared.config import Config
from shared.events import (
    TOPIC_DEADLETTER,
    TOPIC_NOTIFICATIONS,
    TOPIC_SLA,
    DeadLetter,
    NotificationFailed,
    NotificationSent,
    deterministic_id,
    new_event,
)
from shared.eventstore import retry_on_conflict
from shared.uow import UnitOfWork

from .domain import (
    Attempt,
    Decision,
    DeliveriesLeased,
    DeliveriesPruned,
    DeliveryAttempted,
    decide,
    rate_room,
    triggered_event_id,
)
from .handlers import SERVICE, fire_due_steps
from .handlers import record as record_internal
from .projection import prunable
from .tables import deliveries, subscription_deliveries

log = structlog.get_logger()

SUBSCRIPTION_CHANNEL = "subscription"  # the `channel` of a CRM delivery in events and metrics
# The part of a lease a send may take: the rest is for recording its outcome.
SEND_SHARE_OF_LEASE = 0.8
LEASE_STREAM = "notifier.leases"  # a lease round covers many leads: its events have a stream of their own
RETENTION_STREAM = "notifier.retention"
PRUNE_AT_ONCE = 5000  # deliveries removed by one retention transaction


# ---- leasing, sending, recording ------------------------------------------------------------


@dataclass(frozen=True)
class Leased:
    kind: Literal["channel", "subscription"]
    row: Row
    token: str


Sender = Callable[[Leased, datetime], Awaitable[Attempt]]


async def lease_channel_deliveries(uow: UnitOfWork, config: Config, now: datetime, lease: timedelta,
                                   limit: int = 50) -> list[Row]:
    """Due deliveries to lease; a channel with a rate limit gets only its remaining room."""
    limited = {name: c.rate_limit for name, c in config.channels.items() if c.rate_limit is not None}
    rows = await _due_channel(uow, deliveries.c.channel.notin_(list(limited)), now, limit)
    for name, rule in limited.items():
        room = rate_room(rule.max, await _used(uow, name, now - timedelta(seconds=rule.per), now))
        if room:
            rows += await _due_channel(uow, deliveries.c.channel == name, now, min(room, limit))
    return rows


async def _used(uow: UnitOfWork, channel: str, since: datetime, now: datetime) -> int:
    """Sends of the window: every delivery tried in it (sent, failed or to be retried: a receiver
    answering errors is sent to no more often than one answering 2xx), and those in flight now."""
    d = deliveries
    return await uow.conn.scalar(select(func.count()).select_from(d).where(d.c.channel == channel, (
        (d.c.tried_at >= since) | ((d.c.state == "pending") & (d.c.leased_until > now))))) or 0


async def _due_channel(uow: UnitOfWork, which, now: datetime, limit: int) -> list[Row]:
    d = deliveries
    return list((await uow.conn.execute(select(d).where(
        which, d.c.state == "pending", d.c.next_attempt_at <= now,
        (d.c.leased_until.is_(None)) | (d.c.leased_until <= now),
    ).order_by(d.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True))).all())


# Per (subscription, lead) only the oldest pending event may go: one lead's events arrive in order,
# by event time (then arrival), so a lead.received read after its lead.assigned still goes first.
# At most `per_subscription` in flight per subscription: a subscriber that is down (or slow to
# answer) ties up its own share of the senders, never everyone's.
_DUE_SUBSCRIPTION_DELIVERIES = text("""
WITH in_flight AS (
  SELECT subscription_id, count(*) AS busy FROM notifier.subscription_deliveries
  WHERE state = 'pending' AND leased_until > :now GROUP BY subscription_id
), candidates AS (
  SELECT ranked.id FROM (
    SELECT d.id, d.subscription_id, row_number() OVER (PARTITION BY d.subscription_id ORDER BY d.id) AS rn
    FROM notifier.subscription_deliveries d
    WHERE d.state = 'pending' AND d.next_attempt_at <= :now
      AND (d.leased_until IS NULL OR d.leased_until <= :now)
      AND NOT EXISTS (SELECT 1 FROM notifier.subscription_deliveries e
                      WHERE e.subscription_id = d.subscription_id AND e.lead_id = d.lead_id
                        AND e.state = 'pending' AND (e.event_time, e.id) < (d.event_time, d.id))
  ) ranked LEFT JOIN in_flight f ON f.subscription_id = ranked.subscription_id
  WHERE ranked.rn + coalesce(f.busy, 0) <= :per_subscription ORDER BY ranked.id LIMIT :limit
)
SELECT s.* FROM notifier.subscription_deliveries s JOIN candidates c ON s.id = c.id
WHERE s.state = 'pending' AND (s.leased_until IS NULL OR s.leased_until <= :now)
FOR UPDATE OF s SKIP LOCKED
""")


def _correlation_of(body: bytes) -> str | None:
    """The correlation id of a stored CloudEvent (its own id when it started its chain)."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict):
        return None
    found = event.get("correlationid") or event.get("id")
    return found if isinstance(found, str) else None


async def lease_subscription_deliveries(uow: UnitOfWork, now: datetime, limit: int = 200,
                                        per_subscription: int = 20) -> list[Row]:
    return list((await uow.conn.execute(_DUE_SUBSCRIPTION_DELIVERIES, {
        "now": now, "limit": limit, "per_subscription": per_subscription,
    })).all())


async def lease(uow: UnitOfWork, channel_rows: list[Row], subscription_rows: list[Row], now: datetime,
                lease_for: timedelta) -> list[Leased]:
    """Record the lease of these (locked) rows: each one's attempts + 1, a token, an expiry."""
    if not channel_rows and not subscription_rows:
        return []
    token = secrets.token_hex(8)
    await record_internal(uow, DeliveriesLeased(
        token=token, leased_until=now + lease_for, notification_ids=[r.notification_id for r in channel_rows],
        subscription_deliveries=[(r.subscription_id, r.event_id) for r in subscription_rows],
    ), time=now, stream=LEASE_STREAM)
    # The rows as leased (attempts counted), read back from the projection.
    d, s = deliveries, subscription_deliveries
    leased = [Leased("channel", r, token) for r in (await uow.conn.execute(select(d).where(
        d.c.notification_id.in_([r.notification_id for r in channel_rows])).order_by(d.c.next_attempt_at))).all()]
    leased += [Leased("subscription", r, token) for r in (await uow.conn.execute(select(s).where(
        s.c.id.in_([r.id for r in subscription_rows])).order_by(s.c.id))).all()]
    return leased


async def record(uow: UnitOfWork, config: Config, item: Leased, attempt: Attempt, now: datetime,
                 jitter: float) -> str | None:
    """Store the outcome if the lease is still ours; returns the state it leaves: sent, failed or
    retrying; None when another sender took the delivery over (its outcome is theirs to count)."""
    row = item.row
    if item.kind == "channel":
        channel = config.channels.get(row.channel)
        max_attempts = channel.max_attempts if channel else 1
        table, where = deliveries, deliveries.c.notification_id == row.notification_id
        ref: dict[str, Any] = {"notification_id": row.notification_id}
    else:
        max_attempts = config.notifier.subscription_max_attempts
        table, where = subscription_deliveries, subscription_deliveries.c.id == row.id
        ref = {"subscription_id": row.subscription_id, "event_id": row.event_id}
    # Locked until commit: no other sender can lease it between this check and the record.
    holder = (await uow.conn.execute(select(table.c.lease_token, table.c.state).where(where)
                                     .with_for_update())).first()
    if holder is None or holder.lease_token != item.token or holder.state != "pending":
        return None
    decision = decide(attempt, row.attempts, max_attempts, now, jitter)
    with tracing.use(_trace_of(item)):  # the trace of what was delivered
        await record_internal(uow, DeliveryAttempted(
            lead_id=row.lead_id, **ref, state=decision.state, error=decision.error,
            next_attempt_at=decision.next_attempt_at, at=now), time=now, stream=row.lead_id)
    if decision.state == "pending":
        return "retrying"
    _emit_outcome(uow, item, decision, now)
    return decision.state


def _trace_of(item: Leased) -> str | None:
    if item.kind == "channel":
        return item.row.payload["trigger"].get("traceparent")
    return tracing.traceparent_in(bytes(item.row.body))


def _emit_outcome(uow: UnitOfWork, item: Leased, decision: Decision, now: datetime) -> None:
    row = item.row
    outcome = NotificationSent if decision.state == "sent" else NotificationFailed
    if item.kind == "channel":
        result = outcome(
            notification_id=row.notification_id, lead_id=row.lead_id, escalation_id=row.escalation_id,
            channel=row.channel, recipient=row.recipient, attempts=row.attempts,
            idempotency_key=row.idempotency_key, error=decision.error)
        correlation_id = row.payload["trigger"].get("correlation_id")
        parent = row.payload["trigger"].get("traceparent")
        body = _json_bytes(row.payload)
        origin = TOPIC_SLA
        # The escalation step's escalation.triggered (a digest: the step that opened it).
        cause_id = triggered_event_id(row.escalation_id) if row.escalation_id else None
    else:
        if decision.state == "sent":
            return  # one event per CRM delivery would swamp leads.notifications; failures matter
        notification_id = deterministic_id("subscription", row.subscription_id, row.event_id)
        result = outcome(
            notification_id=notification_id, lead_id=row.lead_id, channel=SUBSCRIPTION_CHANNEL,
            recipient=row.subscription_id, attempts=row.attempts, idempotency_key=row.event_id,
            error=decision.error, subscription_id=row.subscription_id, event_id=row.event_id)
        body = bytes(row.body)
        # The delivered event's chain (CONTRACT: correlationid is the submission that started it),
        # not a chain of its own; only failures get here, so the parse is rare.
        correlation_id = _correlation_of(body)
        parent = tracing.traceparent_in(body)
        origin = row.event_type
        cause_id = row.event_id  # the event that was delivered
    with tracing.use(parent):  # the trace of what was delivered
        event = new_event(f"notification.{decision.state}", service=SERVICE, lead_id=row.lead_id, time=now,
                          correlation_id=correlation_id,
                          event_id=deterministic_id(result.notification_id, decision.state), data=result)
    event = event.model_copy(update={"causationid": cause_id})
    uow.emit(TOPIC_NOTIFICATIONS, event)
    if decision.state == "failed":
        # The message itself is kept where operators look for what could not be done.
        uow.emit(TOPIC_DEADLETTER, new_event(
            "deadletter", service=SERVICE, lead_id=row.lead_id, time=now, cause=event,
            event_id=deterministic_id(result.notification_id, "deadletter"),
            data=DeadLetter(topic=TOPIC_NOTIFICATIONS, partition=-1, offset=-1, key=row.lead_id,
                            original_bytes_b64=base64.b64encode(body[:512 * 1024]).decode(),
                            error=f"delivery_failed: {decision.error}"[:2000], service=SERVICE,
                            notification_id=result.notification_id, channel=result.channel,
                            recipient=result.recipient, attempts=row.attempts, origin=origin),
        ))


def _json_bytes(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


async def prune_delivered(uow: UnitOfWork, before: datetime, now: datetime, up_to: int = PRUNE_AT_ONCE) -> int:
    """Retention: the oldest `up_to` CRM deliveries done with (sent, cancelled) before `before`;
    failures stay for operators. Returns how many go (`up_to`: call again, more may be due).
    Bounded so that each statement stays well within the statement timeout however long the
    table has grown. Recorded (`notifier.deliveries_pruned`) only when there is something to prune."""
    going = await uow.conn.scalar(select(func.count()).select_from(prunable(before, up_to).subquery())) or 0
    if going:
        await record_internal(uow, DeliveriesPruned(before=before, at=now, up_to=up_to), time=now,
                              stream=RETENTION_STREAM)
    return going


# ---- the cycle ------------------------------------------------------------------------------


class Deliverer:
    """Rounds of: fire due steps; lease due deliveries (committed); send each with no transaction
    open and record its outcome as soon as it is known. A round does not wait for slow receivers:
    their sends finish in the background (bounded by `max_in_flight`) while the next rounds go on."""

    def __init__(self, uow: Callable[[], UnitOfWork], config: Callable[[], Config], send: Sender, clock: Clock,
                 jitter: Callable[[], float] = random.random, max_in_flight: int = 200) -> None:
        self._uow, self._config, self._send, self._clock, self._jitter = uow, config, send, clock, jitter
        self._max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task] = set()

    async def fire(self, now: datetime) -> int:
        async def attempt() -> list[int]:
            async with self._uow() as uow:
                fired = await fire_due_steps(uow, self._config(), now)
                await uow.commit()
            return fired

        fired = await retry_on_conflict(attempt)
        for step in fired:
            metrics.escalations.labels(str(step)).inc()
        return len(fired)

    async def lease(self, now: datetime, room: int = 200) -> list[Leased]:
        lease_for = timedelta(seconds=self._config().notifier.lease_seconds)
        async with self._uow() as uow:
            channel_rows = await lease_channel_deliveries(uow, self._config(), now, lease_for, limit=min(room, 50))
            subscription_rows = []
            if room > len(channel_rows):
                subscription_rows = await lease_subscription_deliveries(uow, now, limit=room - len(channel_rows))
            leased = await lease(uow, channel_rows, subscription_rows, now, lease_for)
            await uow.commit()
        return leased

    async def send(self, leased: list[Leased], now: datetime) -> list[Attempt]:
        return list(await asyncio.gather(*(self._send_one(item, now) for item in leased)))

    async def _send_one(self, item: Leased, now: datetime) -> Attempt:
        # A send ends well within its lease, whatever the channel's timeout or a receiver that
        # trickles its answer: past the lease the row is leased again and sent again, and this
        # send's outcome, no longer ours to record, is lost, so a slow receiver got the same
        # message every lease period without end and max_attempts never ended it.
        deadline = self._config().notifier.lease_seconds * SEND_SHARE_OF_LEASE
        try:
            async with asyncio.timeout(deadline):
                return await self._send(item, now)
        except TimeoutError:
            return Attempt(error=f"TimeoutError: no answer within {deadline:g} s")
        except Exception as exc:  # a sender bug must not lose the outcome of the others
            log.exception("notifier.sender_failed", kind=item.kind)
            return Attempt(error=f"{type(exc).__name__}: {exc}"[:500])

    async def record(self, leased: list[Leased], attempts: list[Attempt], now: datetime) -> None:
        config = self._config()
        jitters = [self._jitter() for _ in leased]

        async def attempt() -> list[tuple[Leased, str | None]]:
            async with self._uow() as uow:
                outcomes = [(item, await record(uow, config, item, result, now, jitter))
                            for item, result, jitter in zip(leased, attempts, jitters, strict=True)]
                await uow.commit()
            return outcomes

        for (item, outcome), tried in zip(await retry_on_conflict(attempt), attempts, strict=True):
            if outcome is None:
                continue
            channel = item.row.channel if item.kind == "channel" else SUBSCRIPTION_CHANNEL
            metrics.notifications.labels(channel, outcome).inc()
            if outcome == "failed":  # its message went to leads.deadletter (_emit_outcome)
                metrics.deadletter.labels(TOPIC_NOTIFICATIONS, "delivery_failed").inc()
                log.warning("notifier.delivery_given_up", channel=channel, lead_id=item.row.lead_id,
                            delivery=_delivery_name(item), attempts=item.row.attempts, status=tried.status,
                            error=_error_kind(tried.error))

    async def _deliver(self, item: Leased) -> None:
        attempt = await self._send_one(item, self._clock.now())
        try:
            await self.record([item], [attempt], self._clock.now())
        except Exception as exc:  # the database is down: the lease expires and the same key goes again
            log.warning("notifier.record_failed", kind=item.kind, error=type(exc).__name__)

    async def start_round(self) -> int:
        """Fire and lease, and start the sends; returns how much work the round found."""
        fired = await self.fire(self._clock.now())
        room = self._max_in_flight - len(self._in_flight)
        leased = await self.lease(self._clock.now(), room) if room > 0 else []
        for item in leased:
            task = asyncio.create_task(self._deliver(item))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return fired + len(leased)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the sends in flight (on shutdown: up to `timeout`, then their leases expire)."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)

    async def run_once(self) -> int:
        """One round, waiting for its sends: what tests and benchmarks step through."""
        found = await self.start_round()
        await self.drain()
        return found


def _delivery_name(item: Leased) -> str:
    """Which delivery, for an operator to look up: ids only, never its recipient (an address)."""
    if item.kind == "channel":
        return str(item.row.notification_id)
    return f"{item.row.subscription_id}/{item.row.event_id}"


def _error_kind(error: str | None) -> str | None:
    """The error's kind without its text, which may quote a recipient's address or a URL with its
    token (an SMTP refusal, a Slack webhook)."""
    return error.split(":", 1)[0][:80] if error else None
