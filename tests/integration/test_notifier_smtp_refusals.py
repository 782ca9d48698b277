"""What a real SMTP server's refusal of the recipient makes of a delivery: 5xx for good, 4xx later."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.notifier.channels import send_email
from services.notifier.domain import decide
from shared.config import EmailChannel
from tests.integration.receivers import SmtpCatcher

PAYLOAD = {
    "recipient": {"id": "gone", "role": "manager", "email": "gone@example.com"},
    "message": {"subject": "SLA breached", "text": "late\n", "html": "<p>late</p>"},
}
NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


class RefusingSmtp(SmtpCatcher):
    """Refuses every recipient at RCPT TO with `answer`."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:  # noqa: N802
        return self.answer


@pytest.mark.parametrize(
    ("answer", "state"),
    [("550 5.1.1 No such user", "failed"), ("450 4.2.1 Mailbox busy, try later", "pending")],
)
async def test_a_refused_recipient_fails_for_good_only_on_a_permanent_answer(answer, state) -> None:
    # aiosmtplib raises SMTPRecipientsRefused (not an SMTPResponseException) when the only
    # recipient is refused: it was read as a connection error, so a mailbox that does not exist
    # was retried max_attempts times before failing.
    with RefusingSmtp(answer) as smtp:
        channel = EmailChannel.model_validate(
            {
                "type": "email",
                "host": "127.0.0.1",
                "port": smtp.port,
                "tls": "none",
                "from": "a@example.com",
            }
        )
        attempt = await send_email(channel, PAYLOAD, "k", NOW)
    assert smtp.messages == []
    assert decide(attempt, 1, 5, NOW, 0.0).state == state
    assert "gone@example.com" not in (attempt.error or "")
