"""The `leadsla` command."""
from __future__ import annotations

import asyncio
import codecs
import difflib
import hashlib
import importlib
import re
import secrets
import shutil
import signal
import time
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from leadsla.logging import configure as configure_logging
from services import SERVICE_PORTS
from shared.settings import Settings

# Help text as Markdown: typer's "rich" mode keeps a docstring's single line breaks in the
# command lists, which broke every multi-line summary mid-sentence.
app = typer.Typer(help="leadsla: no sales lead waits.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="markdown",
                  epilog="Commands use the database LEADSLA_DATABASE_URL names; serve and outbox retry also the "
                         "broker LEADSLA_KAFKA_BOOTSTRAP names. One they cannot use: one line, exit 2.")
config_app = typer.Typer(help="Configuration versions.", no_args_is_help=True, rich_markup_mode="markdown")
keys_app = typer.Typer(help="API keys.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
outbox_app = typer.Typer(help="Outbox rows the broker refused (parked).", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(outbox_app, name="outbox")
console = Console(stderr=True)

SERVICES = tuple(SERVICE_PORTS)
EXAMPLE_CONFIG = Path(__file__).parent / "example-config.yaml"
DEV_WEBHOOK_PORT = 8009
DEV_SMTP_PORT = 8025
# `leadsla dev` restarts a service that exits, unless it exits this often within a minute.
DEV_MAX_EXITS_PER_MINUTE = 5


_Result = TypeVar("_Result")


def _fail(message: str, code: int = 2) -> NoReturn:
    # markup=False: messages quote config paths and YAML ("metrics.x.[key]", "[ops"), which are
    # not markup; soft_wrap: one line however long, so a script can read it.
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(work: Coroutine[Any, Any, _Result], settings: Settings) -> _Result:
    """Run a command's work. A database or broker it cannot use ends the command with one line and
    exit 2 (which a script tells from replay's 1, "differs"), not a traceback."""
    try:
        return asyncio.run(work)
    except Exception as exc:
        problem = _unusable_peer(exc, settings)
        if problem is None:
            raise
        _fail(problem)


def _unusable_peer(exc: BaseException, settings: Settings) -> str | None:
    """One line naming the database or broker `exc` says cannot be used, and why; None when
    `exc` is about something else."""
    from aiokafka.errors import KafkaConnectionError
    from asyncpg import PostgresError
    from sqlalchemy.engine import make_url

    from shared.db import is_database_unavailable, wrapped_errors
    from shared.settings import DatabaseUrlError

    try:
        database = f"the database {_database_address(make_url(settings.database_url))}"
    except Exception:
        database = "the database"
    for error in wrapped_errors(exc):
        if isinstance(error, DatabaseUrlError):
            return str(error)
        if isinstance(error, KafkaConnectionError):
            return (f"cannot reach the broker at {settings.kafka_bootstrap} (LEADSLA_KAFKA_BOOTSTRAP): "
                    "no broker answered there")
        sqlstate = getattr(error, "sqlstate", None) or ""
        if isinstance(error, PostgresError) and (sqlstate == "3D000" or sqlstate.startswith("28")):
            return f"cannot use {database} (LEADSLA_DATABASE_URL): {error}"  # no such database, refused login
        if isinstance(error, PostgresError) and sqlstate in ("42P01", "3F000", "42703"):
            # No such table, schema or column: a database never migrated, or migrated by an older release.
            return f"{database} does not have this release's schema ({error}): run `leadsla migrate` first"
    if is_database_unavailable(exc):
        reason = next((str(e) for e in wrapped_errors(exc) if isinstance(e, OSError) and str(e)), "no answer")
        return f"cannot reach {database} (LEADSLA_DATABASE_URL): {reason}"
    return None


def _database_address(url: Any) -> str:
    """Where a database URL points, without its password: host and port, or the socket directory
    of a `?host=/path` URL (`leadsla dev`'s), and the database."""
    socket = url.query.get("host")
    if not url.host and isinstance(socket, str) and socket.startswith("/"):
        return f"{socket} (socket)/{url.database or ''}"
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def _bootstrap_of(service: str):
    return importlib.import_module(f"services.{service}.bootstrap").bootstrap


@app.command()
def serve(service: Annotated[str, typer.Argument(help=f"one of: {', '.join(SERVICES)}")]) -> None:
    """Run one service against LEADSLA_DATABASE_URL and LEADSLA_KAFKA_BOOTSTRAP."""
    from shared.config import ConfigError
    from shared.runtime import StartupError, run_service

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        _run(run_service(service, _bootstrap_of(service), settings), settings)
    except (StartupError, ConfigError) as exc:
        _fail(f"cannot start {service}: {exc}")


async def _migrate(database_url: str) -> None:
    from shared.db import make_engine
    from shared.migrate import upgrade

    engine = make_engine(database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@app.command()
def migrate() -> None:
    """Bring the database schema to the current version."""
    from alembic.util.exc import CommandError

    from shared.migrate import head_revision

    settings = Settings()
    try:
        _run(_migrate(settings.database_url), settings)
    except CommandError as exc:  # e.g. a revision this release does not have: a newer one migrated it
        _fail(f"cannot migrate: {exc}; this release's newest schema is {head_revision()}, so the database is "
              "probably from a newer release: run that release's `leadsla migrate`, or restore a backup")
    console.print(f"database schema is current ({head_revision()})")


async def _apply_config(database_url: str, text: str, *, dry_run: bool = False):
    """Apply a configuration file (a new version, in one transaction), or with `dry_run` only
    compare it with the active version; with what the file leaves behind in the running system
    (warnings: owners it no longer names who hold open leads)."""
    from services.router.adapters import runtime_owner_changes
    from services.router.views import open_leads_of_unknown_owners
    from shared.config import parse_config
    from shared.config_store import apply_config, preview_config
    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        config = parse_config(text)
        async with engine.connect() as conn:
            left = await open_leads_of_unknown_owners(conn, config)
            changed = await runtime_owner_changes(conn)
        warnings = [f"owners: {owner} is not in the file but holds {n} open lead{'s' * (n != 1)}; they stay "
                    f"assigned to {owner} (reassign them: POST /v1/leads/{{lead_id}}/reassign, or keep {owner} in "
                    f"the file and set them out of office with PUT /v1/owners/{owner} "
                    "{\"status\": \"out_of_office\"}, under routing.on_out_of_office: reroute_untouched)"
                    for owner, n in left.items()]
        warnings += [_runtime_change_stays(owner.id, field, value, written)
                     for owner in config.owners for field, value in (changed.get(owner.id) or {}).items()
                     if (written := owner.model_dump(mode="json").get(field)) != value]
        if dry_run:
            async with engine.connect() as conn:
                return await preview_config(conn, text), warnings
        async with engine.begin() as conn:
            return await apply_config(conn, text), warnings
    finally:
        await engine.dispose()


def _runtime_change_stays(owner_id: str, field: str, value: Any, written: Any) -> str:
    """The warning for a field set with PUT /v1/owners that the file sets otherwise."""
    file_says = "the default" if written is None else f"this file's {written!r}"
    return (f"owners: {owner_id}'s {field} stays {value!r}, as set with PUT /v1/owners/{owner_id}, over {file_says} "
            "(changes made at runtime stay in force over files; PUT the owner again to change it)")


async def _dev_config(database_url: str, config: Path | None) -> tuple[int, str]:
    """The configuration `leadsla dev` runs with, and a line saying where it came from: FILE when
    given (a new version if it changed); else the active one of a data directory used before, so
    what an admin applied with `config apply` survives a restart of `leadsla dev` (it applied the
    example again and silently undid their teams and policies); the example on a first start."""
    from sqlalchemy import func, select

    from shared.config_store import apply_config
    from shared.db import config_versions, make_engine

    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            if config is None:
                active = await conn.scalar(select(func.max(config_versions.c.version)))
                if active is not None:
                    return int(active), ("the active configuration, as `config apply` left it "
                                         f"(--config {EXAMPLE_CONFIG} applies the example again)")
                config = EXAMPLE_CONFIG
            version, _ = await apply_config(conn, _read_text(config))
            return version, f"{'the example ' if config == EXAMPLE_CONFIG else ''}{config}"
    finally:
        await engine.dispose()


def _read_text(file: Path) -> str:
    """The file as text: UTF-8 (with or without a byte-order mark) or UTF-16 with its mark, as
    editors on Windows save it; anything else ends the command with the line to fix."""
    raw = file.read_bytes()
    try:
        return raw.decode("utf-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        _fail(f"{file}: line {line} is not UTF-8 text; save the file as UTF-8")


@config_app.command("apply")
def config_apply(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate FILE and show what would change "
                                          "(the sections and a diff against the active version); apply nothing")]
    = False,
) -> None:
    """Validate FILE and make it the active configuration (a new version if it changed); running
    services pick it up within seconds. Exit 2 when FILE is invalid, naming each bad field's path;
    what is valid but likely a mistake (a tier no lead can have, a misspelt intent) is a warning."""
    from services.intake.normalize import BUILTIN_INTENTS
    from shared.config import ConfigError, changed_sections, config_warnings, parse_config

    settings = Settings()
    text = _read_text(file)
    try:
        for warning in config_warnings(parse_config(text), BUILTIN_INTENTS):
            console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
        if dry_run:
            preview, left_behind = _run(_apply_config(settings.database_url, text, dry_run=True), settings)
        else:
            (version, changed), left_behind = _run(_apply_config(settings.database_url, text), settings)
    except ConfigError as exc:
        _fail(f"{file}: {exc}")
    for warning in left_behind:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    if not dry_run:
        console.print(f"configuration version {version} {'applied' if changed else 'unchanged'}")
        return
    if not preview.changed:
        console.print(f"no change: {file} is the active configuration (version {preview.active_version}); "
                      "nothing applied (--dry-run)", markup=False)
        return
    active = "nothing applied yet" if preview.active_version is None else f"version {preview.active_version}"
    sections = changed_sections(preview.active_text, text)
    console.print(f"{file} is valid and would become a new version (active: {active}); sections that change: "
                  f"{', '.join(sections) or 'none (comments or layout only)'}", markup=False)
    before = f"active (version {preview.active_version})" if preview.active_version is not None else "nothing"
    print("".join(difflib.unified_diff(_masked_lines(preview.active_text or ""), _masked_lines(text),
                                       before, str(file))), end="")
    console.print("nothing applied (--dry-run)")


# A `secret:` value in the YAML (a webhook channel's inline signing secret), block or flow style.
_SECRET_VALUE = re.compile(r"""(\bsecret\s*:\s*)("[^"]*"|'[^']*'|[^\s,}#]+)""")


def _masked_lines(text: str) -> list[str]:
    """The file's lines with each inline secret replaced by a short digest of it: a dry run's diff
    still shows that a secret changes, without printing it (dry runs go to CI logs)."""
    def mask(match: re.Match[str]) -> str:
        digest = hashlib.sha256(match.group(2).strip("\"'").encode()).hexdigest()[:8]
        return f"{match.group(1)}'********' (sha256 {digest}...)"

    masked, block_indent = [], None  # inside a block scalar (`secret: |`): lines indented past its key
    for line in text.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None and (indent > block_indent or not line.strip()):
            digest = hashlib.sha256(line.strip().encode()).hexdigest()[:8]
            masked.append(f"{' ' * indent}******** (sha256 {digest}...)\n" if line.strip() else line)
            continue
        block_indent = None
        block = _SECRET_BLOCK.search(line)
        if block is not None:
            block_indent = indent
            masked.append(line)
        else:
            masked.append(_SECRET_VALUE.sub(mask, line))
    return masked


_SECRET_BLOCK = re.compile(r"\bsecret\s*:\s*[|>][-+0-9]*\s*(?:#.*)?$")


async def _create_key(database_url: str, name: str, role: str) -> str:
    from shared.auth import create_key
    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            return await create_key(conn, name, role)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


async def _dev_admin_key(database_url: str) -> str:
    """This start's admin key; the earlier starts' are revoked (each start prints its own)."""
    from shared.auth import replace_named_key
    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            return await replace_named_key(conn, "dev-admin", "admin")
    finally:
        await engine.dispose()


@keys_app.command("create")
def keys_create(
    source: Annotated[str | None, typer.Option(help="a source key: may submit leads and activities")] = None,
    admin: Annotated[str | None, typer.Option(help="an admin key: may also read and configure")] = None,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    if (source is None) == (admin is None):
        raise typer.BadParameter("give exactly one of --source NAME or --admin NAME")
    # The role comes from which option was given, never from its value: an empty --source "$NAME"
    # made an admin key.
    role, name = ("source", source) if source is not None else ("admin", admin or "")
    if not name.strip():
        raise typer.BadParameter(f"--{role} needs a name (a source key submits as that source)")
    settings = Settings()
    key = _run(_create_key(settings.database_url, name.strip(), role), settings)
    print(key)


async def _keys(database_url: str, revoke: str | None = None) -> list[dict] | bool:
    from shared.auth import list_keys, revoke_key
    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            return await revoke_key(conn, revoke) if revoke is not None else await list_keys(conn)
    finally:
        await engine.dispose()


@keys_app.command("list")
def keys_list() -> None:
    """Show every key: id, name, role, created, revoked. Secrets are never stored, so never shown."""
    settings = Settings()
    rows = _run(_keys(settings.database_url), settings)
    table = Table("key id", "name", "role", "created", "revoked")
    for row in rows:  # type: ignore[union-attr]
        revoked = row["revoked_at"]
        table.add_row(row["key_id"], row["name"], row["role"], f"{row['created_at']:%Y-%m-%d %H:%M:%S}",
                      f"{revoked:%Y-%m-%d %H:%M:%S}" if revoked else "")
    Console().print(table if rows else "no keys")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key id (as `keys list` shows it) or the whole key")]) -> None:
    """Revoke a key; every service refuses it within a second."""
    settings = Settings()
    if not _run(_keys(settings.database_url, revoke=key), settings):
        _fail(f"no live key {key.split('_')[1] if key.startswith('lsk_') else key!r}", 1)
    console.print("key revoked")


async def _parked_rows(database_url: str) -> list[tuple[str, int, str, str, int, str]]:
    from sqlalchemy import func, select

    from shared.db import make_engine
    from shared.eventstore import EVENTS, PARKED

    engine = make_engine(database_url)
    found = []
    try:
        async with engine.connect() as conn:
            for service in SERVICES:
                t, parked = EVENTS[service], PARKED[service]
                rows = await conn.execute(
                    select(t.c.position, t.c.key, t.c.event_type, func.length(t.c.payload),
                           func.coalesce(parked.c.error, "held behind an earlier parked event of this lead"))
                    .join(parked, parked.c.position == t.c.position).order_by(t.c.position))
                found += [(service, *row) for row in rows]
    finally:
        await engine.dispose()
    return found


@outbox_app.command("list")
def outbox_list() -> None:
    """Show every parked event: service, store position, lead, event type, size and the broker's error."""
    settings = Settings()
    rows = _run(_parked_rows(settings.database_url), settings)
    table = Table("service", "position", "lead", "type", "bytes", "error")
    for service, row_id, key, event_type, size, error in rows:
        table.add_row(service, str(row_id), key, event_type, str(size), error or "")
    Console().print(table if rows else "no parked rows")


async def _release(settings: Settings, services: tuple[str, ...]) -> int:
    from shared.bus import make_producer
    from shared.db import make_engine
    from shared.outbox import release_parked

    engine = make_engine(settings.database_url)
    producer = make_producer(settings.kafka_bootstrap)
    try:
        await producer.start()  # inside: a broker that does not answer still leaves it stopped
        return sum([await release_parked(engine, service, producer) for service in services])
    finally:
        await producer.stop()
        await engine.dispose()


async def _replay_reporting(database_url: str, verify: bool, touch_skew: timedelta):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from services.reporting.replay import count_events, rebuild
    from shared.config_store import load_latest
    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            versioned = await load_latest(conn)
        total = await count_events(engine)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("verifying reporting" if verify else "rebuilding reporting", total=total)
            result = await rebuild(engine, versioned.config if versioned else None, verify=verify,
                                   progress=lambda n: bar.advance(task, n), touch_skew=touch_skew)
        return result
    finally:
        await engine.dispose()


@outbox_app.command("retry")
def outbox_retry(service: Annotated[str | None, typer.Argument(help="only this service's rows")] = None) -> None:
    """Send parked events again (after raising the broker's limit, say); they leave in order."""
    if service is not None and service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    settings = Settings()
    released = _run(_release(settings, (service,) if service else SERVICES), settings)
    console.print(f"{released} parked events sent")


async def _skip(database_url: str, service: str, positions: list[int]) -> int:
    from shared.db import make_engine
    from shared.outbox import skip_parked

    engine = make_engine(database_url)
    try:
        return await skip_parked(engine, service, positions)
    finally:
        await engine.dispose()


@outbox_app.command("skip")
def outbox_skip(service: Annotated[str, typer.Argument(help="the service whose store holds the rows")],
                positions: Annotated[list[int], typer.Argument(help="store positions, from `outbox list`")]) -> None:
    """Give up publishing refused events (they stay in the store); the lead's later events then go
    with the next `outbox retry`."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    settings = Settings()
    skipped = _run(_skip(settings.database_url, service, positions), settings)
    if skipped < len(set(positions)):
        # A mistyped position (or one sent since) must not pass in a runbook's script unnoticed.
        _fail(f"{skipped} of {len(set(positions))} refused events skipped: the others are not parked "
              f"in {service}'s store (see `leadsla outbox list`)", 1)
    console.print(f"{skipped} refused events skipped")


@app.command()
def replay(
    service: Annotated[str, typer.Argument(help=f"the service whose state to rebuild: one of {', '.join(SERVICES)}")],
    verify: Annotated[bool, typer.Option(help="rebuild aside, compare with the live state, exit 1 on a difference")]
    = False,
) -> None:
    """Rebuild a service's state from its event store (reporting: its read models, from its
    timeline of the events it consumed from the topics), with a progress bar and events/s;
    --verify rebuilds aside, compares with the live tables and changes nothing."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    from shared.config import ConfigError

    configure_logging("WARNING")
    settings = Settings()
    if service == "reporting":
        try:
            result = _run(_replay_reporting(settings.database_url, verify,
                                            timedelta(seconds=settings.sla_touch_skew_seconds)), settings)
        except ConfigError as exc:
            _fail(f"cannot replay reporting: {exc}")
        source = "its timeline"
    else:
        result = _run(_replay_store(settings.database_url, service, verify), settings)
        source = "its event store"
    events, seconds, differences, examples = result.events, result.seconds, result.differences, result.examples
    rate = events / seconds if seconds > 0 else 0.0
    console.print(f"{'verified' if verify else 'rebuilt'} {service} from {events} events of {source} in "
                  f"{seconds:.2f}s ({rate:,.0f} events/s)")
    if differences:
        for table, rows in differences.items():
            console.print(f"[red]{table}: {rows} rows differ from a rebuild[/red]")
            for example in examples.get(table, []):
                console.print(f"  {example}", markup=False)
        raise typer.Exit(1)
    if verify:
        console.print("live state matches a rebuild")


async def _replay_store(database_url: str, service: str, verify: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.db import make_engine
    from shared.replay import rebuild, stored_events

    projection = importlib.import_module(f"services.{service}.projection").PROJECTION
    engine = make_engine(database_url)
    try:
        total = await stored_events(engine, service)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task(f"{'verifying' if verify else 'rebuilding'} {service}", total=total)
            return await rebuild(engine, projection, verify=verify, progress=lambda n: bar.advance(task, n))
    finally:
        await engine.dispose()


@app.command()
def schemas(
    check: Annotated[bool, typer.Option(help="exit 1 if the files are not what the models generate")] = False,
    docs: Annotated[Path | None, typer.Option(help="where to write (default: the repository's docs/)")] = None,
) -> None:
    """Generate the JSON Schema of every event type and the AsyncAPI document (docs/)."""
    from shared import schemas as generator

    args = (["--check"] if check else []) + (["--docs", str(docs)] if docs else [])
    raise typer.Exit(generator.main(args))


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option(help="where the embedded Postgres keeps its data")] = Path(".leadsla/dev"),
    config: Annotated[Path | None, typer.Option(
        help="configuration file to apply (default: the active one; on a first start the example)",
        exists=True, dir_okay=False, readable=True)] = None,
    kafka_port: Annotated[int, typer.Option(help="port of the embedded broker")] = 9092,
    fresh: Annotated[bool, typer.Option(help="start from an empty database")] = False,
) -> None:
    """The whole system on this machine: embedded Postgres and broker, all five services."""
    from leadsla.devstack import (
        EmbeddedBroker,
        EmbeddedPostgres,
        ServiceProcess,
        port_is_free,
        wait_until,
    )
    from leadsla.webhook_receiver import MailCatcher, WebhookReceiver
    from shared.config import ConfigError

    configure_logging("WARNING")
    taken = [p for p in (*SERVICE_PORTS.values(), DEV_WEBHOOK_PORT, DEV_SMTP_PORT) if not port_is_free(p)]
    if taken:
        console.print(f"[red]ports in use: {', '.join(map(str, taken))}[/red] (is another `leadsla dev` running?)")
        raise typer.Exit(2)
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir = data_dir.resolve()
    postgres, broker = EmbeddedPostgres(data_dir / "pg"), EmbeddedBroker(kafka_port)
    services: list[ServiceProcess] = []
    webhook_secret = secrets.token_urlsafe(24)
    receiver = WebhookReceiver(DEV_WEBHOOK_PORT, webhook_secret.encode(), _print_notification)
    mail_catcher = MailCatcher(DEV_SMTP_PORT, _print_mail)
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        with console.status("starting embedded Postgres and broker"):
            database_url = postgres.start()
            bootstrap = broker.start()
            asyncio.run(_migrate(database_url))
            version, config_origin = asyncio.run(_dev_config(database_url, config))
            admin_key = asyncio.run(_dev_admin_key(database_url))
            receiver.start()
            mail_catcher.start()
        env = {"LEADSLA_DATABASE_URL": database_url, "LEADSLA_KAFKA_BOOTSTRAP": bootstrap,
               "LEADSLA_WEBHOOK_SECRET": webhook_secret, "LEADSLA_KAFKA_SESSION_TIMEOUT_MS": "2000"}
        services = [ServiceProcess(name, port, env, data_dir / "logs" / f"{name}.log")
                    for name, port in SERVICE_PORTS.items()]
        for service in services:
            service.start()
        with console.status("starting the five services (consumer groups take a few seconds to join)"):
            wait_until(lambda: stop_requested or all(s.ready() for s in services), 90, "services to be ready", 0.25)
        if not stop_requested:
            _print_banner(services, bootstrap, admin_key, version, config_origin, data_dir, database_url)
        # A service that dies is started again, as a supervisor would (the rest keep running and
        # nothing is lost: it resumes from its store and its consumer group); one that keeps dying
        # stops everything, its log says why.
        exits: dict[str, list[float]] = {s.name: [] for s in services}
        while not stop_requested:
            for service in services:
                if service.proc is None or service.proc.poll() is None:
                    continue
                now = time.monotonic()
                recent = exits[service.name] = [t for t in exits[service.name] if now - t < 60] + [now]
                console.print(f"[red]{service.name} exited ({service.proc.returncode}); "
                              f"see {service.log_path}[/red]")
                if len(recent) >= DEV_MAX_EXITS_PER_MINUTE:
                    console.print(f"[red]{service.name} keeps exiting: stopping everything[/red]")
                    request_stop()
                    break
                console.print(f"restarting {service.name}")
                service.start()
            time.sleep(0.2)
    except ConfigError as exc:
        console.print(f"{config or EXAMPLE_CONFIG}: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        console.print("stopping…")
        # Each part is stopped whatever the others do: one that fails to stop (or never started)
        # must not leave the broker or Postgres running behind it.
        for stop in (*(service.stop for service in services), receiver.stop, mail_catcher.stop, broker.stop,
                     postgres.stop):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - reported, and the next part is stopped all the same
                console.print(f"[red]while stopping: {type(exc).__name__}: {exc}[/red]")
        console.print("stopped")


def _print_banner(services, bootstrap: str, admin_key: str, version: int, config_origin: str, data_dir: Path,
                  database_url: str) -> None:
    table = Table(title="leadsla dev is running", show_header=True)
    table.add_column("service")
    table.add_column("url")
    for s in services:
        table.add_row(s.name, s.url)
    table.add_row("kafka", bootstrap)
    table.add_row("webhook receiver", f"http://127.0.0.1:{DEV_WEBHOOK_PORT}/hooks/leadsla")
    table.add_row("SMTP catcher", f"smtp://127.0.0.1:{DEV_SMTP_PORT}")
    console.print(table)
    console.print(f"config version {version}: {config_origin}; service logs in {data_dir / 'logs'}", markup=False)
    console.print(f"dev admin key: [bold]{admin_key}[/bold]")
    # Lines to paste into another shell, so `leadsla replay`, `config apply` and `keys` reach this system.
    print(f"LEADSLA_ADMIN_KEY={admin_key}", flush=True)
    print(f"LEADSLA_DATABASE_URL={database_url}", flush=True)
    print(f"LEADSLA_KAFKA_BOOTSTRAP={bootstrap}", flush=True)
    console.print("Ctrl-C stops everything.")


def _print_notification(message: dict, valid: bool) -> None:
    trigger = message.get("trigger", {})
    recipient = message.get("recipient", {})
    mark = "signed ok" if valid else "BAD SIGNATURE"
    console.print(f"[yellow]webhook[/yellow] ({mark}) {trigger.get('type')} lead={message.get('lead_id')} "
                  f"step={message.get('step')} to {recipient.get('role')}:{recipient.get('id')}")


def _print_mail(mail) -> None:
    console.print(f"[cyan]mail[/cyan] to {mail['To']}: {mail['Subject']}")


if __name__ == "__main__":
    app()
