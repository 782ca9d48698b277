"""Every route of every service, walked from its OpenAPI (issue 12, item 3): no key and a wrong
key get 401, a source key on an admin route gets 403, the right key gets past auth, an oversized
body gets 413; keys are stored hashed; a revoked key stops working within a second everywhere.
The apps are the services' own (bootstrap + create_app), in-process on the real Postgres."""
from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from leadsla.cli import _keys
from services import SERVICE_NAMES
from services.sla_clock.tables import leads, timers
from shared.auth import create_key
from shared.db import api_keys
from shared.http import BODY_LIMIT_OVERRIDES, MAX_BODY_BYTES
from shared.settings import Settings
from tests.support import service_apps

CONFIG = """
tiers: {default: A}
owners: [{id: alice, manager_id: maria}, {id: maria}]
teams: [{id: sdr, members: [alice]}]
routing: {rules: [{id: inbound, team: sdr}]}
sla_policies:
  - {id: p, filter: {tiers: [A]}, metrics: {first_response: {target: 10m}}}
channels:
  hook: {url: "http://127.0.0.1:9/hook", secret: "s"}
escalation_policies:
  - {id: e, triggers: [sla.breached], steps: [{step: 1, notify: [owner], channels: [hook]}]}
"""
# Open on purpose, each for a stated reason; any other route without a key is a finding.
OPEN_ROUTES = {("reporting", "GET", "/board")}  # a wall screen: ids and tiers, no contact data
WRITE_METHODS = {"POST", "PUT", "PATCH"}


# Routes a source key may use (submitting, and reading what it submitted needs); every other
# route needs an admin key. A new route not listed here is expected to be admin-only.
SOURCE_ROUTES = {
    ("intake", "POST", "/v1/leads"), ("intake", "POST", "/v1/leads:batch"),
    ("intake", "PATCH", "/v1/leads/{lead_id}"), ("intake", "POST", "/v1/leads/{lead_id}/activities"),
    ("router", "GET", "/v1/queue"),
    ("sla_clock", "GET", "/v1/leads/{lead_id}/sla"), ("sla_clock", "GET", "/v1/watermark"),
}


@pytest.fixture(scope="module")
async def apps(engine, producer, database_url, kafka_bootstrap) -> AsyncIterator[dict[str, FastAPI]]:
    settings = Settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)
    yield {name: app for name, (app, _) in service_apps(engine, producer, settings, CONFIG).items()}


@pytest.fixture(scope="module")
async def keys(engine) -> dict[str, str]:
    async with engine.begin() as conn:
        return {"source": await create_key(conn, "webform", "source"),
                "admin": await create_key(conn, "security-admin", "admin")}


def every_route(apps: dict[str, FastAPI]) -> list[tuple[str, str, str, str]]:
    """(service, method, path as declared, path to call) for every operation in every OpenAPI."""
    found = []
    for service, app in apps.items():
        for path, operations in app.openapi()["paths"].items():
            concrete = path
            for part in path.split("/"):
                if part.startswith("{"):
                    concrete = concrete.replace(part, "no-such-id")
            for method in operations:
                found.append((service, method.upper(), path, concrete))
    return found


def names_the_header(response: httpx.Response) -> bool:
    """A problem+json body whose field-level errors name the Authorization header."""
    return (response.headers.get("content-type", "").startswith("application/problem+json")
            and [e["field"] for e in response.json().get("errors", [])] == ["Authorization"])


async def test_every_route_refuses_missing_wrong_and_underprivileged_keys(apps, keys) -> None:
    routes = every_route(apps)
    assert {s for s, *_ in routes} == set(SERVICE_NAMES) and len(routes) >= 20
    assert (SOURCE_ROUTES | OPEN_ROUTES) <= {(s, m, p) for s, m, p, _ in routes}  # the lists are not stale
    problems = []
    for service, method, path, url in routes:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[service]), base_url="http://t") as c:
            async def call(key: str | None, body: bytes = b"{}", method: str = method, url: str = url) -> httpx.Response:
                headers = {"Content-Type": "application/json"}
                if key is not None:
                    headers["Authorization"] = key
                return await c.request(method, url, headers=headers,
                                       content=body if method in WRITE_METHODS else None)

            if (service, method, path) in OPEN_ROUTES:
                continue
            role = "source" if (service, method, path) in SOURCE_ROUTES else "admin"
            for label, key in (("no key", None), ("wrong key", "Bearer lsk_0123456789ab_wrongsecret"),
                               ("garbage", "Bearer nonsense"), ("wrong scheme", f"Basic {keys['admin']}")):
                response = await call(key)
                if response.status_code != 401 or response.headers.get("www-authenticate") != "Bearer":
                    problems.append(f"{service} {method} {path} with {label}: {response.status_code}")
                elif not names_the_header(response):
                    problems.append(f"{service} {method} {path} with {label}: no field-level error {response.text}")
            source = await call(f"Bearer {keys['source']}")
            if role == "admin" and (source.status_code != 403 or not names_the_header(source)):
                problems.append(f"{service} {method} {path} (admin) with a source key: {source.status_code}")
            if role == "source" and source.status_code in (401, 403):
                problems.append(f"{service} {method} {path} (source) refused a source key: {source.status_code}")
            admin = await call(f"Bearer {keys['admin']}")
            if admin.status_code in (401, 403) or admin.status_code >= 500:
                problems.append(f"{service} {method} {path} with an admin key: {admin.status_code} {admin.text[:100]}")
            if method in WRITE_METHODS:
                limit = BODY_LIMIT_OVERRIDES.get(path, MAX_BODY_BYTES)
                big = await call(f"Bearer {keys['admin']}", b"{" + b" " * limit + b"}")
                if big.status_code != 413:
                    problems.append(f"{service} {method} {path} with {limit + 2} bytes: {big.status_code}")
    assert problems == []


async def test_only_the_batch_route_takes_bodies_over_64_kib(apps, keys) -> None:
    """The 5 MiB limit of `POST /v1/leads:batch` was given to every path ending in ":batch": a
    lead or owner id ending so (or any unknown path, without a key) took a 5 MiB body past the
    64 KiB limit into the route. Every other path keeps 64 KiB."""
    over = b"{" + b" " * MAX_BODY_BYTES + b"}"
    calls = [("intake", "PATCH", "/v1/leads/x:batch", keys["source"]), ("router", "PUT", "/v1/owners/x:batch", keys["admin"]),
             ("notifier", "POST", "/v1/subscriptions:batch", keys["admin"]), ("reporting", "POST", "/v1/leads:batch", None)]
    found = []
    for service, method, url, key in calls:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[service]), base_url="http://t") as c:
            headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
            found.append((service, method, url, (await c.request(method, url, headers=headers, content=over)).status_code))
    assert found == [(s, m, u, 413) for s, m, u, _ in calls]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps["intake"]), base_url="http://t") as c:
        batch = await c.post("/v1/leads:batch", content=b'{"leads": []' + b" " * MAX_BODY_BYTES + b"}",
                             headers={"Authorization": f"Bearer {keys['source']}", "Content-Type": "application/json"})
    assert batch.status_code == 200, batch.text


async def test_a_declared_body_over_64_kib_is_refused_on_routes_that_read_none_too(apps, keys) -> None:
    """CONTRACT: bodies over 64 KiB get 413, whatever the method (a 20 MB GET was taken in)."""
    over = b" " * (MAX_BODY_BYTES + 1)
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    for service, method, url in (("reporting", "GET", "/v1/leads"), ("notifier", "DELETE", "/v1/subscriptions/x")):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[service]), base_url="http://t") as c:
            response = await c.request(method, url, headers=admin, content=over)
        assert response.status_code == 413, (service, method, response.status_code)


async def test_a_nul_character_in_a_path_or_query_parameter_is_never_a_server_error(apps, keys) -> None:
    """Postgres text cannot hold NUL: a NUL in an id or a filter reached the database and answered
    500. An id with one names nothing (404); a query parameter with one is a 422 naming it."""
    problems = []
    for service, app in apps.items():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     headers={"Authorization": f"Bearer {keys['admin']}"}) as c:
            for path, operations in app.openapi()["paths"].items():
                for method, operation in operations.items():
                    body = b"{}" if method.upper() in WRITE_METHODS else None
                    if "{" in path:
                        url = "/".join("no%00such" if part.startswith("{") else part for part in path.split("/"))
                        response = await c.request(method.upper(), url, content=body)
                        if response.status_code != 404:
                            problems.append(f"{service} {method} {path} NUL id: {response.status_code}")
                    for param in operation.get("parameters", []):
                        if param["in"] != "query":
                            continue
                        concrete = path.replace("{", "").replace("}", "")
                        response = await c.request(method.upper(), f"{concrete}?{param['name']}=a%00b",
                                                   content=body)
                        fields = [e["field"] for e in response.json().get("errors", [])] \
                            if response.status_code == 422 else []
                        if fields != [param["name"]]:
                            problems.append(f"{service} {method} {path} NUL in {param['name']}: "
                                            f"{response.status_code} {fields}")
    assert problems == []


async def test_a_subscription_url_with_a_nul_character_is_a_problem_naming_it(apps, keys) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps["notifier"]), base_url="http://t",
                                 headers={"Authorization": f"Bearer {keys['admin']}"}) as c:
        response = await c.post("/v1/subscriptions", json={"url": "https://crm.example.com/\u0000",
                                                           "event_types": ["lead.assigned"]})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["url"]


async def test_keys_are_stored_hashed(engine, keys) -> None:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(api_keys))).mappings().all()
        dumped = (await conn.execute(text("SELECT string_agg(t::text, '|') FROM leadsla.api_keys t"))).scalar()
    for key in keys.values():
        key_id, secret = key.split("_", 2)[1:]
        assert secret not in dumped and key not in dumped
        [row] = [r for r in rows if r["key_id"] == key_id]
        assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()


async def test_a_revoked_key_fails_on_every_service_within_a_second(apps, engine, database_url) -> None:
    async with engine.begin() as conn:
        key = await create_key(conn, "short-lived", "admin")
    probes = {"intake": "/v1/config", "router": "/v1/owners", "sla_clock": "/v1/config",
              "notifier": "/v1/subscriptions", "reporting": "/v1/leads?limit=1"}

    async def statuses() -> set[int]:
        codes = set()
        for service, path in probes.items():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[service]), base_url="http://t",
                                         headers={"Authorization": f"Bearer {key}"}) as c:
                codes.add((await c.get(path)).status_code)
        return codes

    for _ in range(3):
        assert await statuses() == {200}  # and now cached everywhere
    assert await _keys(database_url, revoke=key.split("_")[1]) is True
    revoked = time.monotonic()
    while (seen := await statuses()) != {401}:
        assert time.monotonic() - revoked < 1.0, seen
        await asyncio.sleep(0.05)
    listed = await _keys(database_url)
    [row] = [r for r in listed if r["key_id"] == key.split("_")[1]]
    assert row["revoked_at"] is not None and "secret_sha256" not in row


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after_and_other_keys_go_on(
    engine, producer, database_url, kafka_bootstrap, keys
) -> None:
    """Router, sla_clock, notifier and reporting limit each key (a script or a dashboard polling in
    a loop); intake limits per source by its configuration instead."""
    settings = Settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap,
                        api_rate_limit_per_second=0.2, api_rate_limit_burst=3)
    built = service_apps(engine, producer, settings, CONFIG, key_limits=True)
    assert {name: spec.key_limits for name, (_, spec) in built.items()} == {
        "intake": False, "router": True, "sla_clock": True, "notifier": True, "reporting": True}
    app = built["router"][0]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
        admin, source = ({"Authorization": f"Bearer {keys[k]}"} for k in ("admin", "source"))
        answers = [(await client.get("/v1/owners", headers=admin)).status_code for _ in range(3)]
        limited = await client.get("/v1/owners", headers=admin)
        other_key = await client.get("/v1/queue", headers=source)
    assert answers == [200, 200, 200]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert names_the_header(limited)
    assert other_key.status_code == 200
    documented = app.openapi()["paths"]["/v1/owners"]["get"]["responses"]
    assert "application/problem+json" in documented["429"]["content"]


def _problem_documented(operation: dict, status: str) -> bool:
    return "application/problem+json" in operation.get("responses", {}).get(status, {}).get("content", {})


def test_every_openapi_documents_the_key_and_the_problems_its_routes_answer(apps) -> None:
    """Only intake documented its key and problems: every other service's OpenAPI named no bearer
    scheme and no 401/403 (which every keyed route answers), and documented 422 as FastAPI's
    `{"detail": [...]}` in application/json, which no route answers (problem+json with `errors`)."""
    problems = []
    for service, app in apps.items():
        document = app.openapi()
        if "bearer" not in document.get("components", {}).get("securitySchemes", {}):
            problems.append(f"{service}: no bearer security scheme")
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                route = (service, method.upper(), path)
                if route in OPEN_ROUTES:
                    continue
                expected = ["401"] + (["403"] if route not in SOURCE_ROUTES else [])
                expected += ["422"] if "422" in operation["responses"] else []
                expected += ["404"] if "{" in path else []
                expected += ["413"] if method.upper() in WRITE_METHODS else []
                problems += [f"{service} {method} {path}: {status} is not documented as problem+json"
                             for status in expected if not _problem_documented(operation, status)]
                if operation.get("security") != [{"bearer": []}]:
                    problems.append(f"{service} {method} {path}: no bearer security")
        assert "HTTPValidationError" not in str(document), service
    assert problems == []


async def test_an_id_naming_nothing_and_a_request_without_a_route_are_problems_naming_the_field(apps, keys) -> None:
    """Found by schemathesis: a 404 for an unknown id (every service), a 409, a 404 for a path
    no route serves and a 405 answered problem+json without `errors`, which the contract promises
    on every problem. The field is the path parameter; `(path)` or `(method)` when no route matched."""
    bodies = {("router", "PUT"): {"status": "away"}, ("router", "POST"): {"reason": "x"},
              ("intake", "POST"): {"type": "note"}, ("intake", "PATCH"): {}}
    found, expected = [], []
    for service, method, path, url in every_route(apps):
        if "{" not in path or (service, path) == ("notifier", "/v1/leads/{lead_id}/notifications"):
            continue  # (a lead's notifications: the notifier keeps no list of leads; none is an empty list)
        name = path[path.rindex("{") + 1:path.rindex("}")]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[service]), base_url="http://t",
                                     headers={"Authorization": f"Bearer {keys['admin']}"}) as c:
            response = await c.request(method, url, json=bodies.get((service, method)))
        found.append((service, method, path, response.status_code, [e["field"] for e in response.json().get("errors", [])]))
        expected.append((service, method, path, 404, [name]))
    assert found == expected
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps["router"]), base_url="http://t",
                                 headers={"Authorization": f"Bearer {keys['admin']}"}) as c:
        responses = [await c.get("/v1/no-such-route"), await c.delete("/v1/config"), await c.put("/v1/owners/a%00b", json={"status": "away"})]
    assert [(r.status_code, [e["field"] for e in r.json()["errors"]]) for r in responses] == \
        [(404, ["(path)"]), (405, ["(method)"]), (404, ["(path)"])]


async def test_the_key_is_checked_before_anything_the_request_sends_is_judged(apps, keys) -> None:
    """Found by schemathesis: a body that is not JSON (FastAPI reads it before the route's key
    check) and a NUL character in an id or a query value (refused by a middleware before any
    route) answered 422 or 404 without a key, or with a source key on an admin route: a caller
    without the right key is told only that (401, 403)."""
    problems = []
    for service, method, path, url in every_route(apps):
        route = (service, method, path)
        if route in OPEN_ROUTES:
            continue
        queries = [p["name"] for p in apps[service].openapi()["paths"][path][method.lower()].get("parameters", [])
                   if p["in"] == "query"]
        tries = [(url, b"not json" if method in WRITE_METHODS else None)]
        if "{" in path:
            tries.append((url.replace("no-such-id", "no%00such"), None))
        tries += [(f"{url}?{name}=a%00b", None) for name in queries]
        for target, body in tries:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[service]), base_url="http://t") as c:
                for key, expected in ((None, 401), (keys["source"], 403 if route not in SOURCE_ROUTES else None)):
                    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
                    response = await c.request(method, target, content=body, headers=headers)
                    if expected is not None and (response.status_code != expected or not names_the_header(response)):
                        problems.append(f"{service} {method} {target} {body!r} key={key is not None}: "
                                        f"{response.status_code}, not {expected}")
    assert problems == []


async def test_a_body_that_is_not_utf8_is_not_json_like_any_other(apps, keys) -> None:
    """Found by schemathesis: FastAPI answers a JSON body that is not UTF-8 with its own 400
    ("There was an error parsing the body"), before the key check and undocumented; it is a
    body that is not JSON, refused like any other: 401 without a key, else 422 naming (body)."""
    found = []
    for service, method, path, url in every_route(apps):
        if "requestBody" not in apps[service].openapi()["paths"][path][method.lower()]:
            continue
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[service]), base_url="http://t") as c:
            for key in (None, keys["admin"]):
                headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
                response = await c.request(method, url, content=b"\xec\xcbO\x01", headers=headers)
                found.append((service, method, path, key is not None, response.status_code,
                              [e["field"] for e in response.json().get("errors", [])]))
    assert found == [(s, m, p, keyed, 422 if keyed else 401, ["(body)"] if keyed else ["Authorization"])
                     for s, m, p, keyed, *_ in found]


async def test_a_source_key_reads_the_sla_of_its_own_source_s_leads_only(apps, engine, keys) -> None:
    """Another source's lead id is easy to learn (a repeat submission of its email answers with it):
    its owner and deadlines are for that source and admins."""
    now = datetime.now(UTC)
    ours, theirs = f"own-{uuid.uuid4()}", f"other-{uuid.uuid4()}"
    async with engine.begin() as conn:
        for lead_id, source in ((ours, "webform"), (theirs, "webinar")):
            await conn.execute(leads.insert().values(lead_id=lead_id, tier="A", source=source, contactable=True,
                                                     received_at=now, owner_id="alice"))
            await conn.execute(timers.insert().values(
                sla_id=f"sla-{lead_id}", lead_id=lead_id, metric="first_response", policy_id="p", policy_version=1,
                calendar="24x7", owner_id="alice", tier="A", started_at=now, due_at=now + timedelta(minutes=10),
                warnings=[], warned=[], state="open", next_fire_at=now + timedelta(minutes=10)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps["sla_clock"]), base_url="http://sla") as client:
        def get(lead_id: str, role: str):
            return client.get(f"/v1/leads/{lead_id}/sla", headers={"Authorization": f"Bearer {keys[role]}"})

        assert (await get(ours, "source")).status_code == 200
        refused = await get(theirs, "source")
        assert refused.status_code == 403 and names_the_header(refused), refused.text
        assert (await get(theirs, "admin")).status_code == 200


async def test_the_docs_pages_run_only_pinned_integrity_checked_scripts(apps) -> None:
    """/docs and /redoc load their scripts from a CDN: each at a fixed version with its SRI hash
    (a file changed there is not run), and nothing else from outside."""
    for service, app in apps.items():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for page in ("/docs", "/redoc"):
                response = await c.get(page)
                assert response.status_code == 200, (service, page)
                html = response.text
                assert "/openapi.json" in html
                external = re.findall(r'<(?:script|link)[^>]*(?:src|href)="(https?://[^"]+)"[^>]*>', html)
                assert external, (service, page)
                for tag in re.findall(r'<(?:script|link)[^>]*(?:src|href)="https?://[^"]+"[^>]*>', html):
                    assert re.search(r'@\d+\.\d+\.\d+/', tag) and 'integrity="sha384-' in tag, tag
                assert "fonts.googleapis" not in html and "tiangolo" not in html
