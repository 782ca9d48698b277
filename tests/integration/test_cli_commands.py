"""The operator commands as a sales-ops admin or an SRE runs them: `leadsla ...` in a process of
its own against the real Postgres (a database of this module's own) and broker. What they rely
on: a command that cannot reach what it needs says so in one line and exits 2 (replay's 1 means
"differs"), never with a traceback; `config apply --dry-run` shows what would change and applies
nothing; an error message reaches the terminal as written."""
from __future__ import annotations

import asyncio
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import make_url

from leadsla.cli import DEV_SMTP_PORT, DEV_WEBHOOK_PORT, _dev_admin_key
from leadsla.devstack import free_port, port_is_free
from services import SERVICE_PORTS
from shared.auth import verify_key
from shared.db import api_keys, config_versions, make_engine
from tests.integration.own_database import fresh_database

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "leadsla" / "example-config.yaml"


@pytest.fixture(scope="module")
async def database(postgres_server_url: str):
    async with fresh_database(postgres_server_url, "leadsla_cli") as own:
        yield own


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


async def leadsla(*args: str, database_url: str, kafka_bootstrap: str = "127.0.0.1:9",
                  timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `leadsla ARGS`; (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEADSLA_DATABASE_URL": database_url,
           "LEADSLA_KAFKA_BOOTSTRAP": kafka_bootstrap, "LEADSLA_HTTP_PORT": str(closed_port()), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "leadsla.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


def assert_one_line_error(code: int, out: str, err: str, *expected: str, after_logs: bool = False) -> None:
    """Exit 2 and one line saying why; `after_logs`: a service's JSON log lines may come before it."""
    assert code == 2, (out, err)
    assert "Traceback" not in err + out, err
    lines = err.strip().splitlines()
    if after_logs:
        lines = [line for line in lines if not line.startswith('{"event"')]
    assert len(lines) == 1, err
    for part in expected:
        assert part in lines[0], lines[0]


def unreachable_urls(server_url: str) -> dict[str, tuple[str, str]]:
    """name -> (LEADSLA_DATABASE_URL, what the error line must say)."""
    url = make_url(server_url)
    return {
        "closed port": (url.set(host="127.0.0.1", port=closed_port(), database="x").render_as_string(False),
                        "cannot reach the database"),
        "missing database": (url.set(database="no_such_leadsla_db").render_as_string(False),
                             'database "no_such_leadsla_db" does not exist'),
        "not a postgres URL": ("mysql://root@127.0.0.1/leadsla", "must be a postgresql:// URL"),
    }


@pytest.mark.parametrize(("command", "kind"), [
    (["migrate"], "closed port"), (["migrate"], "missing database"), (["migrate"], "not a postgres URL"),
    (["config", "apply", str(EXAMPLE)], "closed port"), (["keys", "list"], "missing database"),
    (["keys", "create", "--admin", "ops"], "closed port"), (["keys", "revoke", "abc"], "not a postgres URL"),
    (["replay", "intake", "--verify"], "closed port"), (["replay", "reporting", "--verify"], "missing database"),
])
async def test_a_database_it_cannot_use_ends_the_command_with_one_line_and_exit_2(
        postgres_server_url: str, command: list[str], kind: str) -> None:
    url, expected = unreachable_urls(postgres_server_url)[kind]
    assert_one_line_error(*await leadsla(*command, database_url=url), expected)


async def test_serve_with_a_broker_it_cannot_reach_ends_with_one_line_and_exit_2(database) -> None:
    code, out, err = await leadsla("config", "apply", str(EXAMPLE), database_url=database.url)
    assert code == 0, err
    bootstrap = f"127.0.0.1:{closed_port()}"
    assert_one_line_error(*await leadsla("serve", "intake", database_url=database.url, kafka_bootstrap=bootstrap,
                                         env={"LEADSLA_KAFKA_STARTUP_WAIT_SECONDS": "3"}),
                          "cannot reach the broker", bootstrap, after_logs=True)


async def test_serve_with_a_database_it_cannot_reach_ends_with_one_line_and_exit_2(postgres_server_url) -> None:
    url, expected = unreachable_urls(postgres_server_url)["closed port"]
    assert_one_line_error(*await leadsla("serve", "router", database_url=url), expected, after_logs=True)


async def test_an_error_message_reaches_the_terminal_as_written(database, tmp_path: Path) -> None:
    # Square brackets are markup to the terminal library: they were eaten ("...first_reply.: ...").
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("first_response: {target: 1h}", "first_reply: {target: 1h}"))
    code, out, err = await leadsla("config", "apply", str(bad), database_url=database.url)
    assert code == 2
    assert "sla_policies.1.metrics.first_reply.[key]" in err


async def versions(database) -> int:
    async with database.engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(config_versions))


async def test_config_apply_dry_run_shows_the_change_and_applies_nothing(database, tmp_path: Path) -> None:
    code, _, err = await leadsla("config", "apply", str(EXAMPLE), database_url=database.url)
    assert code == 0, err
    before = await versions(database)
    changed = tmp_path / "changed.yaml"
    changed.write_text(EXAMPLE.read_text().replace("first_response: {target: 1h}", "first_response: {target: 2h}"))

    code, out, err = await leadsla("config", "apply", "--dry-run", str(changed), database_url=database.url)
    assert code == 0, err
    shown = out + err
    assert "-      first_response: {target: 1h}" in shown and "+      first_response: {target: 2h}" in shown
    assert "sla_policies" in shown  # the sections that change
    assert "nothing applied" in shown
    assert await versions(database) == before

    code, out, err = await leadsla("config", "apply", "--dry-run", str(EXAMPLE), database_url=database.url)
    assert code == 0 and "no change" in out + err
    assert await versions(database) == before


async def test_config_apply_dry_run_never_prints_an_inline_secret(database, tmp_path: Path) -> None:
    """The dry run's diff printed a webhook channel's inline `secret:` in clear, the active one (read
    back from the database) and the new one: dry runs go to CI logs. Each is masked; the diff still
    shows that it changes."""
    inline = EXAMPLE.read_text().replace("secret_env: LEADSLA_WEBHOOK_SECRET", "secret: whsec_old_0123456789")
    assert inline != EXAMPLE.read_text()
    first = tmp_path / "first.yaml"
    first.write_text(inline)
    code, _, err = await leadsla("config", "apply", str(first), database_url=database.url)
    assert code == 0, err
    changed = tmp_path / "changed.yaml"
    changed.write_text(inline.replace("whsec_old_0123456789", '"whsec_new_9876543210"'))
    code, out, err = await leadsla("config", "apply", "--dry-run", str(changed), database_url=database.url)
    assert code == 0, err
    shown = out + err
    assert "whsec_old" not in shown and "whsec_new" not in shown
    assert [line.split("(sha256")[0] for line in shown.splitlines() if line.startswith(("-", "+")) and "secret:" in line] \
        == ["-    secret: '********' ", "+    secret: '********' "]


async def test_config_apply_dry_run_refuses_an_invalid_file_like_apply(database, tmp_path: Path) -> None:
    before = await versions(database)
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("warn_at: [50, 80]", "warn_at: [50, 120]"))
    code, _, err = await leadsla("config", "apply", "--dry-run", str(bad), database_url=database.url)
    assert code == 2 and "sla_policies.0.metrics.first_response.warn_at" in err
    assert await versions(database) == before


async def test_config_apply_warns_of_a_likely_mistake_and_applies_the_file(database, tmp_path: Path) -> None:
    before = await versions(database)
    typo = tmp_path / "typo.yaml"
    typo.write_text(EXAMPLE.read_text().replace("when: {intent: [trial]}", "when: {intent: [trail]}"))
    code, _, err = await leadsla("config", "apply", str(typo), database_url=database.url)
    assert code == 0, err
    assert "warning: tiers.rules.1.when.intent.0: intent type 'trail' is not a known one; did you mean 'trial'?" in err
    assert await versions(database) == before + 1


async def test_an_active_version_that_fails_a_newer_check_stops_serve_and_replay_with_what_to_do(database) -> None:
    # A version stored by an older release, before the check it fails existed.
    async with database.engine.begin() as conn:
        version = await conn.scalar(insert(config_versions).values(digest="older-release", body="lead_ops: [ghost]\n")
                                    .returning(config_versions.c.version))
    try:
        for command in (["serve", "router"], ["replay", "reporting"]):
            code, out, err = await leadsla(*command, database_url=database.url)
            assert code == 2 and "Traceback" not in err, err
            assert f"the active configuration, version {version}, is no longer valid; apply a corrected file" in err
            assert "lead_ops.0: unknown owner 'ghost'" in err
    finally:
        async with database.engine.begin() as conn:
            await conn.execute(delete(config_versions).where(config_versions.c.version == version))


async def test_a_file_saved_in_another_encoding_is_read_or_named_by_its_line(database, tmp_path: Path) -> None:
    example = EXAMPLE.read_text()
    windows = tmp_path / "notepad.yaml"
    windows.write_text(example, encoding="utf-16")  # with its byte-order mark, as Notepad saves "Unicode"
    code, out, err = await leadsla("config", "apply", "--dry-run", str(windows), database_url=database.url)
    assert code == 0, err
    latin = tmp_path / "latin1.yaml"
    latin.write_text(example.replace("Bob Example", "Björn Example"), encoding="latin-1")
    line = next(i + 1 for i, row in enumerate(example.splitlines()) if "Bob Example" in row)
    assert_one_line_error(*await leadsla("config", "apply", str(latin), database_url=database.url),
                          f"line {line} is not UTF-8 text")


@pytest.mark.parametrize("command", [["config", "apply", str(EXAMPLE)], ["keys", "create", "--admin", "ops"],
                                     ["replay", "intake", "--verify"]])
async def test_a_database_not_migrated_says_to_run_migrate(postgres_server_url: str, command: list[str]) -> None:
    dsn = postgres_server_url.replace("postgresql+asyncpg://", "postgresql://")
    name = "leadsla_cli_unmigrated"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
        assert_one_line_error(*await leadsla(*command, database_url=url), "run `leadsla migrate` first")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def key_roles(database) -> list[tuple[str, str]]:
    async with database.engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(select(api_keys.c.name, api_keys.c.role)
                                                         .order_by(api_keys.c.created_at))]


@pytest.mark.parametrize("name", ["", "  "])
async def test_a_source_key_without_a_name_is_refused_never_made_an_admin_key(database, name: str) -> None:
    # `keys create --source "$SOURCE"` with SOURCE unset made an admin key.
    before = await key_roles(database)
    code, out, err = await leadsla("keys", "create", "--source", name, database_url=database.url)
    assert code == 2 and "--source needs a name" in err
    assert "lsk_" not in out
    assert await key_roles(database) == before



async def test_replay_rebuilds_beside_a_running_service(database) -> None:
    # The swap holds the store's append lock (test_intake_replay shows a commit during it kept):
    # an operator need not stop the service.
    running = make_engine(database.url, service="router")  # how a running router connects
    try:
        async with running.connect():
            code, _, err = await leadsla("replay", "router", database_url=database.url)
            assert code == 0 and "rebuilt router from" in err, err
            code, _, err = await leadsla("replay", "router", "--verify", database_url=database.url)
            assert code == 0, err
    finally:
        await running.dispose()


async def test_a_database_from_a_newer_release_is_named_so_by_migrate_and_serve(postgres_server_url: str) -> None:
    async with fresh_database(postgres_server_url, "leadsla_cli_newer") as newer:
        async with newer.engine.begin() as conn:
            await conn.execute(text("UPDATE leadsla.alembic_version SET version_num = '0099_from_the_future'"))
        assert_one_line_error(*await leadsla("migrate", database_url=newer.url),
                              "Can't locate revision identified by '0099_from_the_future'", "newer release")
        code, _, err = await leadsla("serve", "intake", database_url=newer.url)
        assert code == 2 and "0099_from_the_future, which this release does not know" in err, err
        assert "run `leadsla migrate`" not in err  # it cannot help


async def test_outbox_retry_with_a_broker_it_cannot_reach_ends_with_one_line_and_exit_2(database) -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    code, out, err = await leadsla("outbox", "retry", database_url=database.url, kafka_bootstrap=bootstrap)
    assert_one_line_error(code, out, "\n".join(line for line in err.splitlines() if "Unable connect" not in line),
                          "cannot reach the broker", bootstrap)  # the client's own log line may come first


async def test_outbox_skip_of_a_position_that_is_not_parked_says_so_and_exits_1(database) -> None:
    """Found by an acceptance sweep: a mistyped position printed "0 refused events skipped" and
    exited 0, so a runbook's script went on as if the parked event were skipped."""
    code, out, err = await leadsla("outbox", "skip", "intake", "99999", database_url=database.url)
    assert code == 1, (out, err)
    assert "0 of 1 refused events skipped" in out + err and "not parked in intake's store" in out + err


async def test_config_apply_names_an_owner_taken_out_of_the_file_who_still_holds_leads(database, tmp_path: Path) -> None:
    """Nothing reroutes an owner's leads when the owner leaves the file: they stay with someone
    who is gone (GET /v1/owners lists them as `removed`). `config apply` says so, dry run or not."""
    from services.router.tables import assignments

    engine = make_engine(database.url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(assignments), [
                {"lead_id": f"left-{i}", "owner_id": "gone-rep", "tier": "A", "assignment_no": 1,
                 "assigned_at": datetime(2026, 11, 20, 10, tzinfo=UTC), "closed_at": closed} for i, closed in
                enumerate([None, None, datetime(2026, 11, 21, 10, tzinfo=UTC)])])  # a closed lead is nobody's worry
        for dry_run in (["--dry-run"], []):
            code, _, err = await leadsla("config", "apply", str(EXAMPLE), *dry_run, database_url=database.url)
            assert code == 0, err
            assert "warning: owners: gone-rep is not in the file but holds 2 open leads" in err
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(assignments).where(assignments.c.owner_id == "gone-rep"))
        await engine.dispose()


async def test_each_dev_start_revokes_the_admin_key_the_one_before_printed(database) -> None:
    earlier = await _dev_admin_key(database.url)
    latest = await _dev_admin_key(database.url)
    async with database.engine.connect() as conn:
        assert await verify_key(conn, earlier) is None
        principal = await verify_key(conn, latest)
        live = (await conn.execute(select(func.count()).select_from(api_keys).where(
            api_keys.c.name == "dev-admin", api_keys.c.revoked_at.is_(None)))).scalar_one()
    assert principal is not None and principal.is_admin and live == 1


async def test_dev_with_a_bad_configuration_names_it_exits_2_and_leaves_nothing_running(tmp_path: Path) -> None:
    """`leadsla dev --config FILE` with a mistake in the file: the error, exit 2, and everything it
    had started stopped. The mail catcher, not yet started, failed to stop: a traceback, exit 1,
    and the broker left holding its port, so the next `leadsla dev` could not start."""
    if not all(port_is_free(port) for port in (*SERVICE_PORTS.values(), DEV_WEBHOOK_PORT, DEV_SMTP_PORT)):
        pytest.skip("a `leadsla dev` is running on this machine: its ports are taken")
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("first_response: {target: 1h}", "first_response: {target: soon}"))
    kafka_port = free_port()
    code, out, err = await leadsla("dev", "--config", str(bad), "--data-dir", str(tmp_path / "dev"),
                                   "--kafka-port", str(kafka_port), database_url="", timeout=180)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and "target" in out + err and "stopped" in out + err, out + err
    assert port_is_free(kafka_port)  # the broker it had started is gone


async def test_config_apply_names_an_owner_field_set_at_runtime_that_stays_over_the_file(database) -> None:
    """A capacity set with PUT /v1/owners stays in force over later files (the README says so),
    but `config apply` said nothing: an admin raised it in the file and routing kept the old one."""
    from services.router.tables import owner_state

    engine = make_engine(database.url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(owner_state).values(owner_id="alice", changes={"capacity": 3}, version=1,
                                                          updated_at=datetime(2026, 11, 20, 10, tzinfo=UTC)))
        code, _, err = await leadsla("config", "apply", "--dry-run", str(EXAMPLE), database_url=database.url)
        assert code == 0, err
        assert "warning: owners: alice's capacity stays 3, as set with PUT /v1/owners/alice" in err, err
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(owner_state).where(owner_state.c.owner_id == "alice"))
        await engine.dispose()
