"""The committed JSON Schemas and AsyncAPI document are what the payload models generate, they
hold together, and they accept real events and refuse broken ones."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient

from shared import events, schemas
from shared.events import DeadLetter, LeadQueued, SlaEventData, new_event

NOW = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).parents[2]


def validator(event_type: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schemas.event_schema(event_type), format_checker=jsonschema.FormatChecker())


def test_committed_files_are_current() -> None:
    assert schemas.DOCS == ROOT / "docs"
    assert schemas.stale() == [], "regenerate with `leadsla schemas`"


def test_a_changed_model_makes_the_committed_files_stale(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    assert schemas.stale(tmp_path) == []
    path = tmp_path / "schemas" / "lead.queued.json"
    path.write_text(path.read_text().replace('"queue"', '"queue_name"'))
    (tmp_path / "schemas" / "lead.gone.json").write_text("{}")
    assert schemas.stale(tmp_path) == ["schemas/lead.gone.json", "schemas/lead.queued.json"]
    assert schemas.main(["--check", "--docs", str(tmp_path)]) == 1


@pytest.mark.parametrize("event_type", schemas.event_types())
def test_every_event_type_has_a_valid_draft7_schema(event_type: str) -> None:
    schema = json.loads((ROOT / "docs" / "schemas" / f"{event_type}.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["properties"]["type"] == {"const": event_type}
    assert schema["properties"]["data"]["required"]  # generated from the model, not a blank object


def test_every_event_type_is_on_exactly_one_topic() -> None:
    placed = [t for info in schemas.TOPICS.values() for t in info["types"]]
    assert sorted(placed) == schemas.event_types()
    assert set(schemas.TOPICS) == set(events.ALL_TOPICS)


def sla_breached():
    return new_event("sla.breached", service="sla_clock", lead_id="l1", time=NOW, data=SlaEventData(
        lead_id="l1", sla_id="s", metric="first_response", policy_id="p", policy_version=1, owner_id=None,
        due_at=NOW, breached_at=NOW, root_cause="no_owner"))


def test_events_as_built_validate() -> None:
    cases = [
        sla_breached(),
        new_event("lead.queued", service="router", lead_id="l1", time=NOW,
                  data=LeadQueued(lead_id="l1", tier="A", queue="q", reason="no_owner")),
        new_event("deadletter", service="intake", lead_id="", time=NOW, data=DeadLetter(
            topic="t", partition=0, offset=1, key=None, original_bytes_b64="", error="e", service="intake")),
    ]
    for event in cases:
        validator(event.type).validate(json.loads(event.to_bytes()))


@pytest.mark.parametrize("breakage", [
    lambda e: e["data"].pop("due_at"),
    lambda e: e["data"].update(policy_version="one"),
    lambda e: e.update(type="sla.met"),
    lambda e: e.update(traceparent="not-a-traceparent"),
    lambda e: e.update(specversion="0.3"),
    lambda e: e.pop("time"),
    lambda e: e["data"].update(due_at="tomorrow"),
])
def test_broken_events_are_refused(breakage) -> None:
    event = json.loads(sla_breached().to_bytes())
    breakage(event)
    assert list(validator("sla.breached").iter_errors(event))


def _resolve(document: dict, ref: str):
    node = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_document_holds_together() -> None:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert {c["address"] for c in doc["channels"].values()} == set(events.ALL_TOPICS)
    refs: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    external = {r for r in refs if not r.startswith("#")}
    assert external == {f"./schemas/{t}.json" for t in schemas.event_types()}
    for ref in external:
        assert (ROOT / "docs" / ref).is_file()
    for ref in (r for r in refs if r.startswith("#")):
        _resolve(doc, ref)  # raises KeyError when dangling
    for op in doc["operations"].values():
        channel = _resolve(doc, op["channel"]["$ref"])
        for message in op["messages"]:
            assert message["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
            _resolve(doc, message["$ref"])
        assert op["action"] in ("send", "receive") and channel["address"]


def test_every_service_serves_the_schemas_and_the_document() -> None:
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(schemas.schema_router())
    with TestClient(app) as client:
        index = client.get("/v1/schemas").json()
        assert set(index["types"]) == set(schemas.event_types())
        one = client.get("/v1/schemas/lead.assigned")
        assert one.status_code == 200 and one.headers["content-type"] == "application/schema+json"
        assert one.json() == json.loads((ROOT / "docs" / "schemas" / "lead.assigned.json").read_text())
        assert client.get("/schemas/lead.assigned.json").json() == one.json()
        document = client.get("/asyncapi.yaml")
        assert document.text == (ROOT / "docs" / "asyncapi.yaml").read_text()
