from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

from aiosmtplib.email import flatten_message

from services.notifier.channels import email_message
from services.notifier.domain import LeadFacts, Recipient, render
from shared.config import EmailChannel

CHANNEL = EmailChannel.model_validate(
    {
        "type": "email",
        "host": "127.0.0.1",
        "port": 25,
        "tls": "none",
        "from": "Lead alërts <alerts@example.com>",
    }
)
PAYLOAD = {
    "recipient": {
        "id": "yamada",
        "role": "manager",
        "name": "山田 太郎",
        "email": "yamada@example.jp",
    },
    "message": {
        "subject": "SLA breached: Zoë Ångström (山田商事), tier A, 1 min late",
        "text": "Lead: Zoë Ångström, 山田商事\n",
        "html": "<p>Zoë Ångström, 山田商事</p>",
    },
}
NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)


def test_every_try_of_a_mail_carries_the_same_message_id() -> None:
    # The Message-ID was made with make_msgid (a timestamp, the pid and a random number before the
    # key): a retry or a resend after a crash went out as a new mail, not as the same one again.
    first = email_message(CHANNEL, PAYLOAD, "7ae96216-0328-502a-84e7-a8cda475902e", NOW)
    again = email_message(
        CHANNEL, PAYLOAD, "7ae96216-0328-502a-84e7-a8cda475902e", NOW + timedelta(minutes=5)
    )
    assert (
        first["Message-ID"]
        == again["Message-ID"]
        == "<7ae96216-0328-502a-84e7-a8cda475902e@example.com>"
    )
    other = email_message(CHANNEL, PAYLOAD, "d619f869-1f9f-54c7-9db6-e4dd40ce701d", NOW)
    assert other["Message-ID"] != first["Message-ID"]


def test_a_mail_with_non_ascii_names_survives_the_wire() -> None:
    # As aiosmtplib writes it for a server without 8BITMIME: 7-bit clean, every header encoded.
    wire = flatten_message(email_message(CHANNEL, PAYLOAD, "k", NOW), cte_type="7bit")
    wire.decode("ascii")
    mail = message_from_bytes(wire, policy=policy.default)
    assert mail["Subject"] == PAYLOAD["message"]["subject"]
    assert mail["From"] == "Lead alërts <alerts@example.com>" and mail["To"] == "山田 太郎 <yamada@example.jp>"
    assert mail.get_body(("plain",)).get_content() == PAYLOAD["message"]["text"]
    assert "山田商事" in mail.get_body(("html",)).get_content()


def test_a_subject_with_a_line_break_still_makes_a_mail() -> None:
    # A lead named "Acme\r\nBcc: ..." made a Subject the email library refuses (ValueError): the
    # escalation mail was retried until it failed and never reached anyone.
    payload = {
        **PAYLOAD,
        "message": {**PAYLOAD["message"], "subject": "SLA breached: X (Acme\r\nBcc: evil@x.com)"},
    }
    mail = email_message(CHANNEL, payload, "k", NOW)
    assert mail["Subject"] == "SLA breached: X (Acme Bcc: evil@x.com)" and mail["Bcc"] is None


def test_lead_fields_are_rendered_on_one_line() -> None:
    lead = LeadFacts(
        "l", name="New\nLine X\r\nBcc: evil@x.com", company="Acme\u2028Corp\tLtd\x00", tier="A"
    )
    msg = render(
        lead,
        "sla.breached",
        {"due_at": "2026-11-17T08:59:00Z"},
        Recipient("m", "manager"),
        1,
        None,
        NOW,
    )
    assert (
        msg.subject
        == "SLA breached: New Line X Bcc: evil@x.com (Acme Corp Ltd), tier A, 1 min late"
    )
    assert msg.slack["blocks"][0]["text"]["text"] == msg.subject


def test_a_mail_is_marked_automatic_so_out_of_office_replies_stay_away() -> None:
    # Without Auto-Submitted (RFC 3834), every manager away on holiday answered every escalation
    # with an out-of-office reply, to the Reply-To: lead ops' mailbox filled with them.
    mail = email_message(CHANNEL, PAYLOAD, "k", NOW)
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["X-Auto-Response-Suppress"] == "All"  # Exchange and Outlook read this instead


def test_a_mail_names_its_recipient_and_its_message_id_has_a_domain() -> None:
    # To was the bare address, and the Message-ID's right side `leadsla` had no dot, which spam
    # filters score as a forged id (SpamAssassin MSGID_NOFQDN): the sender's domain is used.
    wire = flatten_message(email_message(CHANNEL, PAYLOAD, "k", NOW), cte_type="7bit")
    mail = message_from_bytes(wire, policy=policy.default)
    assert mail["To"] == "山田 太郎 <yamada@example.jp>"
    assert mail["To"].addresses[0].addr_spec == "yamada@example.jp"
    assert mail["Message-ID"] == "<k@example.com>"
    nameless = {**PAYLOAD, "recipient": {**PAYLOAD["recipient"], "name": None}}
    assert email_message(CHANNEL, nameless, "k", NOW)["To"] == "yamada@example.jp"
