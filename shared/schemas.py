"""The event interfaces integrators read: one JSON Schema per event type (the whole CloudEvent,
its `data` generated from the payload class registered for the type in `shared.events`) and an AsyncAPI 3.0
document of the topics. Committed under docs/ (regenerate with `leadsla schemas`, checked
by a unit test; also `leadsla schemas [--check]`) and served by every service:

  GET /v1/schemas                 the event types and where their schemas are
  GET /v1/schemas/{type}          one event type's JSON Schema (also /schemas/{type}.json)
  GET /asyncapi.yaml              the AsyncAPI document (its message payloads reference
                                  ./schemas/{type}.json, resolvable next to it on disk and over HTTP)
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from services import SERVICES

from . import events
from .tracing import HEADER as TRACEPARENT

DOCS = Path(__file__).resolve().parent.parent / "docs"
JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
SCHEMA_FORMAT = "application/schema+json;version=draft-07"
SCHEMA_BASE = "https://leadsla.dev/schemas/"
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"

# Which event types each topic carries, who writes it and who reads it (CONTRACT.md "Kafka topics").
TOPICS: dict[str, dict[str, Any]] = {
    events.TOPIC_SUBMISSIONS_RAW: {
        "writers": [], "readers": ["intake"], "types": [],
        "description": "Lead submissions from form, chat and webinar systems: a CloudEvent "
                       "(structured JSON) or the bare JSON body of intake's POST /v1/leads.",
    },
    events.TOPIC_ACTIVITIES_RAW: {
        "writers": [], "readers": ["intake"], "types": [],
        "description": "Touches from CRMs and engagement tools: a CloudEvent or the bare JSON body of "
                       "POST /v1/leads/{lead_id}/activities with `lead_id` added (or as the subject).",
    },
    events.TOPIC_INTAKE: {
        "writers": ["intake"], "readers": ["router", "sla_clock", "reporting"],
        "types": ["lead.received", "lead.merged", "lead.updated", "activity.recorded"],
        "description": "Accepted, normalized and tiered leads and their activities.",
    },
    events.TOPIC_ROUTING: {
        "writers": ["router"], "readers": ["sla_clock", "notifier", "reporting"],
        "types": ["lead.assigned", "lead.reassigned", "lead.queued", "lead.dequeued"],
        "description": "Assignments; CRMs consume these to set the owner on their side.",
    },
    events.TOPIC_SLA: {
        "writers": ["sla_clock"], "readers": ["notifier", "router", "reporting"],
        "types": [f"sla.{kind}" for kind in
                  ("started", "warning", "met", "breached", "paused", "resumed", "cancelled")],
        "description": "SLA timer transitions.",
    },
    events.TOPIC_NOTIFICATIONS: {
        "writers": ["notifier"], "readers": ["reporting"],
        "types": ["escalation.triggered", "notification.sent", "notification.failed"],
        "description": "Escalation steps and the delivery of each notification.",
    },
    events.TOPIC_DEADLETTER: {
        "writers": list(SERVICES), "readers": [],
        "types": ["deadletter"],
        "description": "Records that can never be processed, with their bytes and the reason; for operators.",
    },
}


def registry() -> dict[str, type]:
    """Event type -> payload class: `shared.events.PAYLOADS` once the events package has it,
    `EVENT_DATA` before."""
    return dict(getattr(events, "PAYLOADS", None) or events.EVENT_DATA)


def event_types() -> list[str]:
    return sorted(registry())


@functools.cache
def event_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of one event type: the CloudEvent envelope, `data` from its payload model."""
    model = registry()[event_type]
    data = model.model_json_schema(mode="validation")
    defs = data.pop("$defs", {})
    envelope = events.CloudEvent.model_fields
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE}{event_type}.json",
        "title": event_type,
        "description": " ".join(filter(None, [
            f"A `{event_type}` CloudEvent (1.0, structured JSON mode); `data` is {model.__name__}.",
            " ".join((model.__doc__ or "").split("\n\n")[0].split())])),
        "type": "object",
        "required": ["specversion", "id", "source", "type", "time", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1},
            "source": {"type": "string", "pattern": "^leadsla/"},
            "type": {"const": event_type},
            "subject": {"type": "string", "description": "the lead id (the Kafka record key)"},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": envelope["datacontenttype"].default},
            "correlationid": {"type": "string", "description": "id of the submission that started it"},
            "causationid": {"type": "string", "description": "id of the event that caused this one; without one on the bus (an HTTP request, a timer), the correlation id"},
            "traceparent": {"type": "string", "pattern": TRACEPARENT_PATTERN,
                            "description": "W3C trace context (CloudEvents distributed-tracing extension)"},
            "data": data,
        },
        "additionalProperties": True,
    }
    if defs:
        schema["$defs"] = defs
    return schema


@functools.cache
def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the topics, their messages and who sends and receives them."""
    messages: dict[str, Any] = {}
    for event_type in event_types():
        model = registry()[event_type]
        messages[event_type] = {
            "name": event_type,
            "title": event_type,
            "summary": f"CloudEvent of type {event_type}; data: {model.__name__}",
            "contentType": "application/cloudevents+json",
            "headers": {"$ref": "#/components/schemas/KafkaHeaders"},
            "payload": {"schemaFormat": SCHEMA_FORMAT, "schema": {"$ref": f"./schemas/{event_type}.json"}},
            "correlationId": {"$ref": "#/components/correlationIds/correlation"},
            "bindings": {"kafka": {"key": {"type": "string", "description": "the lead id"},
                                   "bindingVersion": "0.5.0"}},
        }
    messages["raw"] = {
        "name": "raw",
        "title": "Raw input",
        "summary": "A CloudEvent, or the bare JSON body of the matching HTTP endpoint",
        "contentType": "application/json",
        "payload": {"type": "object"},
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, info in TOPICS.items():
        channel_id = topic.replace(".", "-")
        names = info["types"] or ["raw"]
        channels[channel_id] = {
            "address": topic,
            "description": info["description"],
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in names},
            "bindings": {"kafka": {"topic": topic, "bindingVersion": "0.5.0"}},
        }
        refs = [{"$ref": f"#/channels/{channel_id}/messages/{name}"} for name in names]
        for action, who in (("send", info["writers"]), ("receive", info["readers"])):
            for service in who:
                operations[f"{service}-{action}-{channel_id}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{channel_id}"},
                    "summary": f"{service} {'publishes to' if action == 'send' else 'consumes'} {topic}",
                    "messages": refs,
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "leadsla events",
            "version": "0.1.0",
            "description": "Kafka topics of leadsla. Record key: the lead id (one lead's events stay "
                           "ordered). Value: one CloudEvent in structured JSON mode. Delivery is "
                           "at-least-once: consumers dedupe by event id.",
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {"kafka": {"host": "kafka:9092", "protocol": "kafka",
                              "description": "the broker (LEADSLA_KAFKA_BOOTSTRAP)"}},
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {
                "KafkaHeaders": {
                    "type": "object",
                    "properties": {
                        "content-type": {"const": events.CONTENT_TYPE.decode(),
                                         "description": "CloudEvents Kafka protocol binding, structured mode"},
                        TRACEPARENT: {"type": "string", "pattern": TRACEPARENT_PATTERN,
                                      "description": "W3C trace context, the same as the envelope's"},
                    },
                },
            },
            "correlationIds": {
                "correlation": {"description": "The submission that started the chain",
                                "location": "$message.payload#/correlationid"},
            },
        },
    }


def asyncapi_yaml() -> str:
    return yaml.safe_dump(asyncapi(), sort_keys=False, width=100, allow_unicode=True)


@functools.cache
def _rendered() -> tuple[tuple[str, str], ...]:
    files = {f"schemas/{t}.json": json.dumps(event_schema(t), indent=2, sort_keys=False) + "\n"
             for t in event_types()}
    files["asyncapi.yaml"] = "# Generated by `python -m shared.schemas`; do not edit.\n" + asyncapi_yaml()
    return tuple(files.items())


def rendered() -> dict[str, str]:
    """Every generated file, by its path under docs/."""
    return dict(_rendered())


def stale(docs: Path = DOCS) -> list[str]:
    """The generated files that are missing, differ, or are left over; [] when docs/ is current."""
    files = rendered()
    out = [path for path, text in files.items()
           if not (docs / path).is_file() or (docs / path).read_text() != text]
    if (docs / "schemas").is_dir():
        out += [f"schemas/{p.name}" for p in (docs / "schemas").glob("*.json") if f"schemas/{p.name}" not in files]
    return sorted(out)


def write(docs: Path = DOCS) -> list[str]:
    files = rendered()
    (docs / "schemas").mkdir(parents=True, exist_ok=True)
    for leftover in (docs / "schemas").glob("*.json"):
        if f"schemas/{leftover.name}" not in files:
            leftover.unlink()
    for path, text in files.items():
        (docs / path).write_text(text)
    return sorted(files)


def schema_router() -> APIRouter:
    router = APIRouter(tags=["schemas"])

    @router.get("/v1/schemas", include_in_schema=False)
    async def index() -> dict[str, Any]:
        return {"types": {t: f"/v1/schemas/{t}" for t in event_types()}, "asyncapi": "/asyncapi.yaml"}

    @router.get("/v1/schemas/{event_type}", include_in_schema=False)
    async def one(event_type: str) -> Response:
        event_type = event_type.removesuffix(".json")
        if event_type not in registry():
            from .http import not_found

            raise not_found("event_type", "Not found", f"No event type {event_type!r}; GET /v1/schemas lists them.")
        return JSONResponse(event_schema(event_type), media_type="application/schema+json")

    @router.get("/schemas/{file_name}", include_in_schema=False)
    async def relative(file_name: str) -> Response:  # what asyncapi.yaml's relative $refs resolve to
        return await one(file_name)

    @router.get("/asyncapi.yaml", include_in_schema=False)
    async def document() -> Response:
        return Response(rendered()["asyncapi.yaml"], media_type="application/yaml")

    return router


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.schemas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/ is not current")
    parser.add_argument("--docs", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    if args.check:
        out = stale(args.docs)
        for path in out:
            print(f"stale: {args.docs / path}", file=sys.stderr)
        if out:
            print("regenerate with `leadsla schemas`", file=sys.stderr)
        return 1 if out else 0
    for path in write(args.docs):
        print(args.docs / path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
