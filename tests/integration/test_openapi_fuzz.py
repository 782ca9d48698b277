"""Property-based HTTP fuzzing of every service's API from its own OpenAPI (`GET /openapi.json`),
with schemathesis generating the requests (valid ones and, where an operation takes input,
invalid ones) and hypothesis driving them. The apps are the services' own (bootstrap +
create_app), called in-process on the real Postgres. Each generated request is sent three times:
without a key, with a source key and with an admin key. Properties:

- no 5xx, ever (the database is up here: a 503 would be a lie too);
- every 4xx is application/problem+json whose `errors` name a field (CONTRACT.md, HTTP);
- without a key: 401; a source key on an admin route: 403; the admin key passes the key check;
- the status code, content type, headers and body are the ones the OpenAPI documents.

The plain regression tests of what this found are in test_security_routes.py.

Fast by default (a few examples per operation, derandomized: the same run each time). A longer,
random run: `LEADSLA_SCHEMA_EXAMPLES=300 pytest tests/integration/test_openapi_fuzz.py` (examples
per operation; hypothesis then prints the failing request to copy).
"""
from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.auth import create_key
from shared.settings import Settings
from tests.integration.test_security_routes import OPEN_ROUTES, SOURCE_ROUTES
from tests.support import service_apps

LONG_RUN = int(os.environ.get("LEADSLA_SCHEMA_EXAMPLES", "0"))
EXAMPLES = LONG_RUN or 15
SUFFIX = uuid.uuid4().hex[:6]  # owners of their own: the session's database is shared with other modules

CONFIG = f"""
intake: {{sources: {{webform: {{}}}}}}
tiers: {{default: A}}
owners: [{{id: fz-alice-{SUFFIX}, manager_id: fz-maria-{SUFFIX}}}, {{id: fz-maria-{SUFFIX}}}]
teams: [{{id: fz-sdr-{SUFFIX}, members: [fz-alice-{SUFFIX}]}}]
routing: {{rules: [{{id: inbound, team: fz-sdr-{SUFFIX}}}]}}
sla_policies:
  - {{id: p, filter: {{tiers: [A]}}, metrics: {{first_response: {{target: 10m}}}}}}
channels:
  hook: {{url: "http://127.0.0.1:9/hook", secret: "s"}}
escalation_policies:
  - {{id: e, triggers: [sla.breached], steps: [{{step: 1, notify: [owner], channels: [hook]}}]}}
disposition_reasons:
  disqualified: [no_budget]
"""

# Every operation fuzzed, by service; test_the_fuzzed_operations_are_every_documented_one keeps it current.
OPERATIONS: dict[str, list[tuple[str, str]]] = {
    "intake": [("GET", "/v1/config"), ("POST", "/v1/leads"), ("POST", "/v1/leads:batch"),
               ("PATCH", "/v1/leads/{lead_id}"), ("POST", "/v1/leads/{lead_id}/activities")],
    "router": [("GET", "/v1/config"), ("GET", "/v1/owners"), ("PUT", "/v1/owners/{owner_id}"),
               ("POST", "/v1/leads/{lead_id}/reassign"), ("GET", "/v1/queue")],
    "sla_clock": [("GET", "/v1/config"), ("GET", "/v1/leads/{lead_id}/sla"), ("GET", "/v1/watermark")],
    "notifier": [("GET", "/v1/config"), ("GET", "/v1/subscriptions"), ("POST", "/v1/subscriptions"),
                 ("DELETE", "/v1/subscriptions/{subscription_id}"),
                 ("GET", "/v1/subscriptions/{subscription_id}/deliveries"),
                 ("POST", "/v1/subscriptions/{subscription_id}/redeliver"),
                 ("GET", "/v1/leads/{lead_id}/notifications")],
    "reporting": [("GET", "/v1/config"), ("GET", "/v1/leads/{lead_id}"), ("GET", "/v1/leads"),
                  ("GET", "/v1/reports/sla"), ("GET", "/v1/reports/routing"), ("GET", "/v1/reports/dispositions"),
                  ("GET", "/v1/reports/breaches"), ("GET", "/board")],
}
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
async def apps(engine, producer, database_url, kafka_bootstrap) -> AsyncIterator[dict[str, FastAPI]]:
    settings = Settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)
    yield {name: app for name, (app, _) in service_apps(engine, producer, settings, CONFIG).items()}


@pytest.fixture(scope="module")
async def keys(engine) -> dict[str, str]:
    async with engine.begin() as conn:
        return {"source": await create_key(conn, "webform", "source"),
                "admin": await create_key(conn, "fuzz-admin", "admin")}


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture(scope="module")
async def schemas(apps) -> dict[str, BaseSchema]:
    """Each service's OpenAPI as the service itself serves it."""
    out = {}
    for name, app in apps.items():
        async with client(app) as c:
            response = await c.get("/openapi.json")
        assert response.status_code == 200
        out[name] = schemathesis.openapi.from_dict(response.json())
    return out


@pytest.fixture(scope="module")
async def known_ids(apps, keys) -> dict[str, list[str]]:
    """Ids that name something, so that generated requests also reach past the 404s."""
    async with client(apps["intake"]) as c:
        lead = await c.post("/v1/leads", headers={"Authorization": f"Bearer {keys['source']}"},
                            json={"contact": {"email": f"fuzz-{SUFFIX}@example.com"}})
    assert lead.status_code == 201, lead.text
    async with client(apps["notifier"]) as c:
        sub = await c.post("/v1/subscriptions", headers={"Authorization": f"Bearer {keys['admin']}"},
                           json={"url": "https://crm.example.com/hook", "event_types": ["lead.assigned"]})
    assert sub.status_code == 201, sub.text
    return {"lead_id": [lead.json()["lead_id"]], "owner_id": [f"fz-alice-{SUFFIX}", f"fz-maria-{SUFFIX}"],
            "subscription_id": [sub.json()["id"]]}


def cases(operation: APIOperation, known: dict[str, list[str]]) -> st.SearchStrategy:
    """Valid and (where the operation takes input) invalid requests; path ids sometimes real ones."""
    takes_input = bool(operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody"))
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
    names = [p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == "path"]
    strategies = [operation.as_strategy(mode) for mode in modes]
    if names and all(n in known for n in names):
        strategies += [st.fixed_dictionaries({n: st.sampled_from(known[n]) for n in names}).flatmap(
            lambda ids, mode=mode: operation.as_strategy(mode, path_parameters=ids)) for mode in modes]
    return st.one_of(strategies)


def request_kwargs(case: schemathesis.Case, key: str | None) -> dict[str, Any]:
    kwargs = case.as_transport_kwargs(base_url="http://t")
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() != "authorization"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    out: dict[str, Any] = {"method": kwargs["method"], "url": kwargs["url"], "headers": headers,
                           "params": kwargs.get("params") or None}
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        out["content"] = kwargs["data"]
    return out


def problems_with(response: httpx.Response) -> list[str]:
    """The contract's own properties of an answer: no 5xx; a 4xx is problem+json naming fields."""
    found = []
    if response.status_code >= 500:
        found.append(f"server error {response.status_code}: {response.text[:300]}")
    elif response.status_code >= 400:
        if not response.headers.get("content-type", "").startswith("application/problem+json"):
            found.append(f"{response.status_code} is {response.headers.get('content-type')}, not problem+json")
        else:
            errors = response.json().get("errors")
            if not errors or not all(isinstance(e, dict) and isinstance(e.get("field"), str) and e["field"]
                                     and isinstance(e.get("message"), str) for e in errors):
                found.append(f"{response.status_code} without field-level errors: {response.text[:300]}")
    return found


@pytest.mark.parametrize("service,method,path",
                         [(s, m, p) for s, operations in OPERATIONS.items() for m, p in operations])
@settings(max_examples=EXAMPLES, derandomize=not LONG_RUN, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_every_operation_keeps_the_contract_on_generated_requests(
    service, method, path, apps, keys, schemas, known_ids, data
) -> None:
    operation = schemas[service][path][method]
    role = "open" if (service, method, path) in OPEN_ROUTES else (
        "source" if (service, method, path) in SOURCE_ROUTES else "admin")
    case = data.draw(cases(operation, known_ids), label="case")
    found: list[str] = []
    async with client(apps[service]) as c:
        for label, key in (("no key", None), ("source key", keys["source"]), ("admin key", keys["admin"])):
            sent = request_kwargs(case, key)
            response = await c.request(**sent)
            note(f"{label}: {sent['method']} {response.request.url} {sent.get('json', sent.get('content'))!r:.300}"
                 f" -> {response.status_code} {response.text[:300]}")
            found += [f"{label}: {p}" for p in problems_with(response)]
            code = response.status_code
            if role != "open" and label == "no key" and code != 401:
                found.append(f"no key: {code}, not 401")
            if role == "admin" and label == "source key" and code != 403:
                found.append(f"source key on an admin route: {code}, not 403")
            if label == "admin key" and code == 401:
                found.append("admin key: 401")
            try:
                case.validate_response(response, checks=CHECKS)
            except BaseExceptionGroup as exc:  # schemathesis's FailureGroup, with its own report
                found.append(f"{label}: {exc}")
    assert found == [], "\n".join(found)


def test_the_fuzzed_operations_are_every_documented_one(schemas) -> None:
    documented = {name: sorted((op.method.upper(), op.path) for op in
                               (result.ok() for result in schema.get_all_operations()))
                  for name, schema in schemas.items()}
    assert documented == {name: sorted(ops) for name, ops in OPERATIONS.items()}
