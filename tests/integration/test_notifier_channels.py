"""Slack and email channels against real local receivers: a Slack-shaped webhook endpoint and an
SMTP server (aiosmtpd). Messages carry the lead's name, company, tier, owner, times and a link."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from services.notifier.channels import Senders
from services.notifier.delivery import Deliverer
from services.notifier.handlers import HANDLERS, NotifierDeps
from services.notifier.tables import deliveries
from shared.clock import ManualClock
from shared.events import (
    Company,
    Consent,
    Contact,
    Intent,
    LeadAssigned,
    LeadReceived,
    SlaBreached,
    SlaMet,
    SlaWarning,
    new_event,
)
from tests.integration.receivers import SlackLikeReceiver, SmtpCatcher
from tests.support import handle_event, stored_events

SLACK_ENV = "LEADSLA_TEST_SLACK_URL"
SMTP_PASSWORD_ENV = "LEADSLA_TEST_SMTP_PASSWORD"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 17, 9, 0, tzinfo=UTC))


@pytest.fixture(autouse=True)
async def _no_leftovers(engine):
    yield
    async with engine.begin() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.state == "pending").values(state="cancelled"))


def config(smtp_port: int = 1) -> str:
    return f"""
owners:
  - {{id: alice, name: Alice Owner, email: alice@example.com, manager_id: maria}}
  - {{id: maria, name: Maria Manager, email: maria@example.com}}
channels:
  team-slack: {{type: slack, url_env: {SLACK_ENV}}}
  mail: {{type: email, host: 127.0.0.1, port: {smtp_port}, tls: none, from: "leadsla <alerts@example.com>",
          reply_to: leadops@example.com}}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{{step: 1, notify: [owner, manager], channels: [team-slack, mail]}}]
notifier: {{link_base_url: "https://leads.example.com"}}
"""


def lead_events(lead_id: str, now: datetime) -> list:
    received = new_event("lead.received", service="intake", lead_id=lead_id, time=now - timedelta(minutes=20),
                         data=LeadReceived(
                             lead_id=lead_id, source="webform", tier="A",
                             contact=Contact(first_name="Ada", last_name="Lovelace", email="ada@example.org"),
                             company=Company(name="Analytical Engines"), intent=Intent(type="demo_request"),
                             consent=Consent(), contactable=True, received_at=now - timedelta(minutes=20)))
    assigned = new_event("lead.assigned", service="router", lead_id=lead_id, time=now - timedelta(minutes=20),
                         data=LeadAssigned(lead_id=lead_id, owner_id="alice", team_id="sdr", rule_id="r",
                                           method="round_robin", reason="rule", assignment_no=1, candidates=[],
                                           assigned_at=now - timedelta(minutes=20), tier="A"))
    breached = new_event("sla.breached", service="sla_clock", lead_id=lead_id, time=now, data=SlaBreached(
        lead_id=lead_id, sla_id="s", metric="first_response", policy_id="p", policy_version=1, owner_id="alice",
        due_at=now - timedelta(minutes=15), breached_at=now - timedelta(minutes=15), root_cause="owner_missed"))
    return [received, assigned, breached]


async def escalate_and_deliver(ctx, clock, lead_id: str) -> None:
    for event in lead_events(lead_id, clock.now()):
        async with ctx.uow() as uow:
            await handle_event(HANDLERS, uow, event, NotifierDeps(ctx.config.config, clock.now()))
            await uow.commit()
    async with httpx.AsyncClient() as http:
        d = Deliverer(ctx.uow, lambda: ctx.config.config, Senders(http, ctx.engine, lambda: ctx.config.config),
                      clock, jitter=lambda: 0.0)
        await d.run_once()


async def test_slack_gets_a_block_kit_message_and_email_a_plain_and_html_mail(make_ctx, clock, engine,
                                                                              monkeypatch):
    with SlackLikeReceiver() as slack, SmtpCatcher() as smtp:
        monkeypatch.setenv(SLACK_ENV, slack.url)
        ctx = make_ctx("notifier", config(smtp.port))
        lead_id = str(uuid.uuid4())
        await escalate_and_deliver(ctx, clock, lead_id)

        link = f"https://leads.example.com/v1/leads/{lead_id}"
        mine = [p for p in slack.payloads if link in str(p)]
        assert len(mine) == 2  # owner and manager
        assert mine[0]["text"] == "SLA breached: Ada Lovelace (Analytical Engines), tier A, 15 min late"
        fields = str(mine[0]["blocks"])
        assert "Alice Owner" in fields and "2026-11-17 08:45 UTC" in fields
        assert mine[0]["blocks"][-1]["elements"][0]["url"] == link

        mails = [m for m in smtp.messages if link in m.get_body(("plain",)).get_content()]
        assert sorted(m["To"] for m in mails) == ["Alice Owner <alice@example.com>",
                                                  "Maria Manager <maria@example.com>"]
        mail = mails[0]
        assert mail["From"] == "leadsla <alerts@example.com>" and mail["Reply-To"] == "leadops@example.com"
        assert mail["Auto-Submitted"] == "auto-generated" and mail["Message-ID"].endswith("@example.com>")
        assert mail["Subject"] == "SLA breached: Ada Lovelace (Analytical Engines), tier A, 15 min late"
        assert "Owner: Alice Owner" in mail.get_body(("plain",)).get_content()
        assert f'href="{link}"' in mail.get_body(("html",)).get_content()

    sent = [e for e in await stored_events(engine, "notifier", lead_id, published_only=True) if e.type == "notification.sent"]
    assert sorted(e.data["channel"] for e in sent) == ["mail", "mail", "team-slack", "team-slack"]


async def test_a_mail_server_that_is_down_is_retried_not_given_up(make_ctx, clock, engine, monkeypatch):
    with SlackLikeReceiver() as slack:
        monkeypatch.setenv(SLACK_ENV, slack.url)
        ctx = make_ctx("notifier", config(smtp_port=1))  # nothing listens on port 1
        lead_id = str(uuid.uuid4())
        await escalate_and_deliver(ctx, clock, lead_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(deliveries.select().where(deliveries.c.lead_id == lead_id,
                                                              deliveries.c.channel == "mail"))).all()
    assert [(r.state, r.attempts) for r in rows] == [("pending", 1), ("pending", 1)]
    assert all(r.last_error and "example.com" not in r.last_error for r in rows)


def people_config(manager: str, extra: str) -> str:
    return f"""
calendars:
  london: {{timezone: Europe/London, hours: {{mon: ["09:00-17:30"], tue: ["09:00-17:30"], wed: ["09:00-17:30"],
                                             thu: ["09:00-17:30"], fri: ["09:00-17:30"]}}}}
owners:
  - {{id: alice, manager_id: {manager}}}
  - {{id: {manager}, name: Storm Manager, calendar: london}}
channels:
  team-slack: {{type: slack, url_env: {SLACK_ENV}}}
escalation_policies:
  - id: breach
    triggers: [sla.breached]
    steps: [{{step: 1, notify: [manager], channels: [team-slack]}}]
notifier: {{link_base_url: "https://leads.example.com", {extra}}}
"""


async def breach_leads(ctx, clock, tiers: list[str]) -> list[str]:
    ids = []
    for tier in tiers:
        lead_id = str(uuid.uuid4())
        ids.append(lead_id)
        async with ctx.uow() as uow:
            await handle_event(HANDLERS, uow, new_event(
                "sla.breached", service="sla_clock", lead_id=lead_id, time=clock.now(), data=SlaBreached(
                    lead_id=lead_id, sla_id=lead_id, metric="first_response", policy_id="p", policy_version=1,
                    owner_id="alice", due_at=clock.now(), breached_at=clock.now(), root_cause="owner_missed",
                    tier=tier)), NotifierDeps(ctx.config.config, clock.now()))
            await uow.commit()
    return ids


async def test_a_storm_of_breaches_reaches_the_manager_as_a_few_messages_and_one_digest(make_ctx, clock,
                                                                                    monkeypatch):
    manager = f"m-{uuid.uuid4().hex[:8]}"
    with SlackLikeReceiver() as slack:
        monkeypatch.setenv(SLACK_ENV, slack.url)
        ctx = make_ctx("notifier", people_config(manager, "digest: {window: 5m, after: 3}"))
        async with httpx.AsyncClient() as http:
            d = Deliverer(ctx.uow, lambda: ctx.config.config,
                          Senders(http, ctx.engine, lambda: ctx.config.config), clock, jitter=lambda: 0.0)
            await breach_leads(ctx, clock, ["B"] * 40)
            for _ in range(3):
                await d.run_once()
            assert len(slack.payloads) == 3  # the first three as they happen; the rest wait
            clock.advance(timedelta(minutes=5))
            await d.run_once()
        assert len(slack.payloads) == 4
        digest = slack.payloads[-1]
        assert digest["text"].startswith("37 lead escalations for you")
        listed, more = digest["blocks"][1]["elements"]  # rich_text: a bullet list, then the rest
        more_text = more["elements"][0]["text"]
        assert len(listed["elements"]) + int(more_text.removeprefix("... and ").removesuffix(" more")) == 37


async def test_quiet_hours_hold_a_message_until_the_recipient_works_but_let_urgent_tiers_through(make_ctx,
                                                                                               monkeypatch):
    clock = ManualClock(datetime(2026, 11, 17, 22, 0, tzinfo=UTC))  # Tuesday evening in London
    manager = f"m-{uuid.uuid4().hex[:8]}"
    with SlackLikeReceiver() as slack:
        monkeypatch.setenv(SLACK_ENV, slack.url)
        ctx = make_ctx("notifier", people_config(manager, "quiet_hours: {urgent_tiers: [A]}"))
        ctx.clock = clock
        async with httpx.AsyncClient() as http:
            d = Deliverer(ctx.uow, lambda: ctx.config.config,
                          Senders(http, ctx.engine, lambda: ctx.config.config), clock, jitter=lambda: 0.0)
            await breach_leads(ctx, clock, ["A", "C"])
            [answered_overnight] = await breach_leads(ctx, clock, ["B"])
            await d.run_once()
            assert [p["text"].split(", tier ")[1][0] for p in slack.payloads] == ["A"]
            async with ctx.uow() as uow:  # the SLA is met before morning: its held message is dropped
                await handle_event(HANDLERS, uow, new_event(
                    "sla.met", service="sla_clock", lead_id=answered_overnight, time=clock.now(), data=SlaMet(
                        lead_id=answered_overnight, sla_id=answered_overnight, metric="first_response",
                        policy_id="p", policy_version=1, owner_id="alice", due_at=clock.now())), NotifierDeps(ctx.config.config, clock.now()))
                await uow.commit()
            clock.advance(timedelta(hours=10, minutes=59))  # 08:59 London
            await d.run_once()
            assert len(slack.payloads) == 1
            clock.advance(timedelta(minutes=1))
            await d.run_once()
        assert [p["text"].split(", tier ")[1][0] for p in slack.payloads] == ["A", "C"]


async def test_a_digest_keeps_quiet_hours_and_drops_the_lines_of_chains_that_stopped(make_ctx, monkeypatch):
    """In a storm, a message quiet hours hold went into the digest of the window it fired in, out
    at that window's end (22:05 in London, not 09:00); and a line whose SLA was met meanwhile
    was still sent."""
    clock = ManualClock(datetime(2026, 11, 17, 22, 0, tzinfo=UTC))  # Tuesday evening in London
    manager = f"m-{uuid.uuid4().hex[:8]}"
    with SlackLikeReceiver() as slack:
        monkeypatch.setenv(SLACK_ENV, slack.url)
        ctx = make_ctx("notifier", people_config(manager, "digest: {window: 5m, after: 2}, "
                                                          "quiet_hours: {urgent_tiers: [A]}"))
        ctx.clock = clock
        async with httpx.AsyncClient() as http:
            d = Deliverer(ctx.uow, lambda: ctx.config.config,
                          Senders(http, ctx.engine, lambda: ctx.config.config), clock, jitter=lambda: 0.0)
            await breach_leads(ctx, clock, ["A", "A"])
            await d.run_once()
            assert len(slack.payloads) == 2  # urgent: at once
            _, _, answered = await breach_leads(ctx, clock, ["A", "B", "C"])  # a storm now: into digests
            await d.run_once()
            assert len(slack.payloads) == 2
            async with ctx.uow() as uow:
                await handle_event(HANDLERS, uow, new_event(
                    "sla.met", service="sla_clock", lead_id=answered, time=clock.now(), data=SlaMet(
                        lead_id=answered, sla_id=answered, metric="first_response", policy_id="p",
                        policy_version=1, owner_id="alice", due_at=clock.now())),
                    NotifierDeps(ctx.config.config, clock.now()))
                await uow.commit()
            clock.advance(timedelta(minutes=5))
            await d.run_once()
            assert len(slack.payloads) == 3  # the urgent line's digest, at the window's end
            tonight = str(slack.payloads[-1])
            assert "tier A" in tonight and "tier B" not in tonight and "tier C" not in tonight
            clock.advance(timedelta(hours=11))  # 09:05 London: the end of the first window of the day
            await d.run_once()
        assert len(slack.payloads) == 4
        digest = str(slack.payloads[-1])
        assert slack.payloads[-1]["text"].startswith("1 lead escalation for you")
        assert "tier B" in digest and "tier C" not in digest


async def test_a_breach_drops_its_warning_s_message_still_held_so_no_countdown_goes_out_after_it(make_ctx,
                                                                                                 monkeypatch):
    """A warning's step fired into quiet hours (held until morning); the SLA then breached. The
    breach's own message went at 09:00, and so did the warning, "due in 5 min", eleven hours after
    the deadline: a breach stopped only its warnings' steps not fired yet, not their messages."""
    clock = ManualClock(datetime(2026, 11, 17, 22, 0, tzinfo=UTC))  # Tuesday evening in London
    manager = f"m-{uuid.uuid4().hex[:8]}"
    warn_and_breach = people_config(manager, "quiet_hours: {urgent_tiers: [A]}").replace(
        "  - id: breach\n", "  - id: warn\n    triggers: [sla.warning]\n"
        "    steps: [{step: 1, notify: [manager], channels: [team-slack]}]\n  - id: breach\n")
    lead_id = str(uuid.uuid4())
    timer = {"lead_id": lead_id, "sla_id": lead_id, "metric": "first_response", "policy_id": "p",
             "policy_version": 1, "owner_id": "alice", "tier": "C"}
    with SlackLikeReceiver() as slack:
        monkeypatch.setenv(SLACK_ENV, slack.url)
        ctx = make_ctx("notifier", warn_and_breach)
        ctx.clock = clock
        async with httpx.AsyncClient() as http:
            d = Deliverer(ctx.uow, lambda: ctx.config.config,
                          Senders(http, ctx.engine, lambda: ctx.config.config), clock, jitter=lambda: 0.0)
            due = clock.now() + timedelta(minutes=5)
            for event in (new_event("sla.warning", service="sla_clock", lead_id=lead_id, time=clock.now(),
                                    data=SlaWarning(**timer, due_at=due, percent=50)),
                          new_event("sla.breached", service="sla_clock", lead_id=lead_id, time=due,
                                    data=SlaBreached(**timer, due_at=due, breached_at=due, root_cause="owner_missed"))):
                clock.advance(max(event.time - clock.now(), timedelta(0)))
                async with ctx.uow() as uow:
                    await handle_event(HANDLERS, uow, event, NotifierDeps(ctx.config.config, clock.now()))
                    await uow.commit()
                await d.run_once()
            assert slack.payloads == []  # both held by quiet hours
            clock.advance(timedelta(hours=11))  # 09:05 London
            await d.run_once()
        assert [p["text"].split(":")[0] for p in slack.payloads] == ["SLA breached"]
