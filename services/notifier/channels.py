"""The notifier's edges to the outside: one try of one delivery over HTTP (signed webhook, Slack
incoming webhook, CRM subscription) or SMTP. Each returns an `Attempt`; none raises for a
receiver's failure, and none logs a secret, an address or a URL's credentials."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib
import httpx
from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Config, EmailChannel, MissingSecret, SlackChannel, WebhookChannel

from .delivery import Leased
from .domain import (
    DIGEST_LINES,
    SIGNATURE_HEADER,
    Attempt,
    Recipient,
    one_line,
    render_digest,
    sign,
)
from .tables import digest_items, subscriptions

CLOUDEVENTS_JSON = "application/cloudevents+json"


def _compact(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


async def post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
               timeout: float) -> Attempt:
    try:
        # `timeout` bounds the whole exchange: httpx's bounds each read, so a receiver trickling
        # its answer a byte at a time never timed out.
        async with asyncio.timeout(timeout):
            response = await client.post(url, content=body, headers=headers, timeout=timeout)
    except TimeoutError:
        return Attempt(error="TimeoutError")
    except httpx.HTTPError as exc:
        # The exception text can carry the URL (a Slack URL is a secret): keep only its kind.
        return Attempt(error=f"{type(exc).__name__}")
    if 200 <= response.status_code < 300:
        return Attempt(status=response.status_code)
    return Attempt(status=response.status_code, error=f"HTTP {response.status_code}",
                   retry_after=response.headers.get("retry-after"))


async def send_webhook(client: httpx.AsyncClient, channel: WebhookChannel, payload: dict, key: str,
                       now: datetime) -> Attempt:
    body = _compact({k: v for k, v in payload.items() if k != "message"} | {
        "message": {"subject": payload["message"]["subject"], "text": payload["message"]["text"]}})
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": key,
        "X-Leadsla-Notification-Id": payload["notification_id"],
        SIGNATURE_HEADER: sign(channel.signing_secret(), body, int(now.timestamp())),
    }
    return await post(client, channel.url, body, headers, channel.timeout_seconds)


async def send_slack(client: httpx.AsyncClient, channel: SlackChannel, payload: dict, key: str) -> Attempt:
    # Slack ignores the key, but Slack-compatible relays (and our tests) can deduplicate on it.
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    return await post(client, channel.webhook_url(), _compact(payload["message"]["slack"]), headers,
                      channel.timeout_seconds)


def email_message(channel: EmailChannel, payload: dict, key: str, now: datetime) -> EmailMessage:
    message = payload["message"]
    mail = EmailMessage()
    mail["From"] = channel.from_address
    recipient = payload["recipient"]
    # The person's name beside the address, as a mail client shows who it is to (any script: the
    # email library encodes it).
    mail["To"] = Address(display_name=one_line(recipient.get("name")), addr_spec=recipient["email"])
    if channel.reply_to:
        mail["Reply-To"] = channel.reply_to
    # One line (a message rendered before lead fields were made single-line could hold a break,
    # which the email library refuses: the mail would never go).
    mail["Subject"] = one_line(message["subject"])
    mail["Date"] = format_datetime(now)
    # The same Message-ID on every try: mail systems drop the duplicate a crash could cause.
    # (make_msgid would put a timestamp, the pid and a random number before the key.) Its right
    # side is the sender's domain: spam filters score an id without a dotted domain as forged.
    mail["Message-ID"] = f"<{key}@{_domain_of(channel.from_address)}>"
    mail["Idempotency-Key"] = key
    # An automatic message (RFC 3834; Exchange reads the second): out-of-office replies from
    # everyone away would otherwise all go to the Reply-To, lead ops' mailbox.
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Auto-Response-Suppress"] = "All"
    mail.set_content(message["text"])
    mail.add_alternative(message["html"], subtype="html")
    return mail


def _domain_of(address: str) -> str:
    """The domain of `"Name <user@domain>"` or `user@domain` (config checks it is an address)."""
    return address.rsplit("@", 1)[-1].rstrip(">").strip() or "leadsla.invalid"


async def send_email(channel: EmailChannel, payload: dict, key: str, now: datetime) -> Attempt:
    if not payload["recipient"].get("email"):
        return Attempt(status=422, error="recipient has no email address")  # retrying cannot help
    try:
        await aiosmtplib.send(
            email_message(channel, payload, key, now), hostname=channel.host, port=channel.port,
            use_tls=channel.tls == "tls", start_tls=True if channel.tls == "starttls" else False,
            validate_certs=channel.validate_certs, username=channel.username, password=channel.password(),
            timeout=channel.timeout_seconds,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        # Every recipient refused at RCPT TO (this is not an SMTPResponseException): a 5xx for
        # each (no such mailbox) will not change; any 4xx may pass later.
        codes = [refused.code for refused in exc.recipients]
        status = 400 if codes and all(500 <= code < 600 for code in codes) else 503
        return Attempt(status=status, error=f"SMTP {'/'.join(str(code) for code in codes)} recipient refused")
    except aiosmtplib.SMTPResponseException as exc:
        # 5xx: the server refuses this message for good; 4xx: try again later.
        status = 400 if 500 <= exc.code < 600 else 503
        return Attempt(status=status, error=f"SMTP {exc.code}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return Attempt(error=type(exc).__name__)
    return Attempt(status=250)


class Senders:
    """Picks the edge for a leased delivery; `config` is read at send time (hot reloads apply)."""

    def __init__(self, client: httpx.AsyncClient, engine: AsyncEngine, config: Callable[[], Config]) -> None:
        self._client, self._engine, self._config = client, engine, config
        # A subscription's url and secret never change (delete and create instead), so one read
        # serves every delivery; a deleted one's pending deliveries are cancelled, never leased.
        self._targets: dict[str, Row] = {}

    async def _target(self, subscription_id: str) -> Row | None:
        if subscription_id not in self._targets:
            async with self._engine.connect() as conn:
                found = (await conn.execute(select(subscriptions.c.url, subscriptions.c.secret)
                                            .where(subscriptions.c.id == subscription_id))).first()
            if found is None:
                return None
            self._targets[subscription_id] = found
        return self._targets[subscription_id]

    async def __call__(self, item: Leased, now: datetime) -> Attempt:
        try:
            return await self._send(item, now)
        except MissingSecret as exc:  # names the variable, never a value; set it and the retry goes
            return Attempt(error=str(exc))

    async def _send(self, item: Leased, now: datetime) -> Attempt:
        if item.kind == "subscription":
            return await self._subscription(item, now)
        row, config = item.row, self._config()
        channel = config.channels.get(row.channel)
        if channel is None:
            return Attempt(status=410, error=f"channel {row.channel!r} is no longer configured")
        payload = row.payload
        if row.kind == "digest":
            payload = {**payload, "message": await self._digest_message(row, config)}
        if isinstance(channel, WebhookChannel):
            return await send_webhook(self._client, channel, payload, row.idempotency_key, now)
        if isinstance(channel, SlackChannel):
            return await send_slack(self._client, channel, payload, row.idempotency_key)
        return await send_email(channel, payload, row.idempotency_key, now)

    async def _digest_message(self, row, config: Config) -> dict:
        async with self._engine.connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(digest_items)
                                      .where(digest_items.c.notification_id == row.notification_id))
            items = (await conn.execute(select(digest_items.c.item).where(
                digest_items.c.notification_id == row.notification_id)
                .order_by(digest_items.c.seq).limit(DIGEST_LINES))).scalars().all()
        r = row.payload["recipient"]
        message = render_digest(list(items), total or 0, Recipient(r["id"], r["role"], r.get("name"), r.get("email")),
                                datetime.fromisoformat(row.payload["window_end"].replace("Z", "+00:00")),
                                config.notifier.link_base_url)
        return {"subject": message.subject, "text": message.text, "html": message.html, "slack": message.slack}

    async def _subscription(self, item: Leased, now: datetime) -> Attempt:
        row = item.row
        sub = await self._target(row.subscription_id)
        if sub is None:
            return Attempt(status=410, error="subscription is gone")
        body = bytes(row.body)
        headers = {
            "Content-Type": CLOUDEVENTS_JSON,
            "Idempotency-Key": row.event_id,
            "X-Leadsla-Subscription-Id": row.subscription_id,
            SIGNATURE_HEADER: sign(sub.secret.encode(), body, int(now.timestamp())),
        }
        return await post(self._client, sub.url, body, headers, self._config().notifier.subscription_timeout_seconds)
