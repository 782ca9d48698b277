"""OpenAPI descriptions of intake's endpoints as they are on the wire (the routes read raw JSON
leniently, so FastAPI cannot infer these)."""
from __future__ import annotations

from typing import Any

from shared.openapi import PROBLEM, problem

WARNINGS = {"type": "array", "items": {
    "type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}
_open = {"type": "object", "additionalProperties": True}
SUBMISSION = {
    "type": "object",
    "description": "A lead. Unknown fields at any level are kept under `attributes`; values that "
                   "cannot be normalized are kept as sent and named in `warnings`. Refused only "
                   "without a usable email or phone.",
    "additionalProperties": True,
    "properties": {
        "external_id": {"type": "string"},
        "submitted_at": {"type": "string", "description": "RFC 3339; without an offset it is read "
                         "in the source's configured time zone (with a warning)"},
        "score": {"type": ["number", "string"]},
        "contact": {"type": ["object", "null"], "additionalProperties": True, "properties": {
            k: {"type": "string"} for k in (
                "first_name", "last_name", "email", "phone", "country", "timezone", "language", "title")}},
        "company": {"type": ["object", "null"], "additionalProperties": True, "properties": {
            "name": {"type": "string"}, "domain": {"type": "string"}, "website": {"type": "string"},
            "size": {"type": ["integer", "string"], "description": "a head count or a band like 201-500"},
            "industry": {"type": "string"}, "country": {"type": "string"}}},
        "intent": {"type": ["object", "string", "null"], "additionalProperties": True, "properties": {
            "type": {"type": "string"}, "product": {"type": "string"}, "message": {"type": "string"}}},
        "consent": {"type": ["object", "null"], "additionalProperties": True},
        "attributes": _open,
    },
}


def with_bearer(operation: dict[str, Any]) -> dict[str, Any]:
    """An operation that checks the bearer key itself (not through a FastAPI dependency)."""
    return {**operation, "security": [{"bearer": []}]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_problem = problem


COMMON = {
    "400": _problem("A malformed header (e.g. Idempotency-Key)"),
    "401": _problem("No key, or an unknown or revoked one",
                    {"WWW-Authenticate": {"schema": {"type": "string"}}}),
    "403": _problem("The key may not do this"),
    "405": _problem("Method not allowed", {"Allow": {"schema": {"type": "string"}}}),
    "413": _problem("Body too large"),
    "429": _problem("Rate limit of this key exceeded",
                    {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}),
}
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "schema": {"type": "string", "maxLength": 200}}
LEAD_RESULT = {"type": "object", "required": ["lead_id", "status"], "properties": {
    "lead_id": {"type": "string"}, "status": {"type": "string", "enum": ["accepted", "duplicate"]},
    "warnings": WARNINGS, "tier": {"type": "string"}, "upgraded": {"type": "boolean"}}}

POST_LEAD = {
    "parameters": [IDEMPOTENCY],
    "requestBody": {"required": True, "content": {"application/json": {"schema": SUBMISSION}}},
    "responses": {
        "201": _json(LEAD_RESULT, "Accepted (with warnings for values kept as sent)"),
        "200": _json(LEAD_RESULT, "A repeat (Idempotency-Key, source+external_id or identity); a "
                                  "repeat with a higher intent upgrades the lead"),
        "422": _problem("Not a JSON object, or no usable email and no usable phone"),
        **COMMON,
    },
}
POST_BATCH = {
    "parameters": [IDEMPOTENCY],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["leads"],
        "properties": {"leads": {"type": "array", "maxItems": 500, "items": SUBMISSION}}}}}},
    "responses": {
        "200": _json({"type": "object", "properties": {"results": {"type": "array", "items": {
            "type": "object", "required": ["index", "status"], "properties": {
                "index": {"type": "integer"},
                "status": {"type": "string", "enum": ["accepted", "duplicate", "invalid"]},
                "lead_id": {"type": "string"}, "warnings": WARNINGS,
                "errors": PROBLEM["properties"]["errors"]}}}}}, "One result per lead, in order"),
        "422": _problem("Not {\"leads\": [...]} with at most 500 leads"),
        **COMMON,
    },
}
PATCH_LEAD = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": SUBMISSION}}},
    "responses": {
        "200": _json({"type": "object", "properties": {
            "lead_id": {"type": "string"}, "tier": {"type": "string"},
            "changed": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {"old": {}, "new": {}}}},
            "warnings": WARNINGS}}, "Fields changed (emits lead.updated when anything did)"),
        "404": _problem("Unknown lead"),
        "422": _problem("Not a JSON object"),
        **COMMON,
    },
}
POST_ACTIVITY = {
    # The activity's id on the sender's side, when the body has no external_id: a retry changes nothing.
    "parameters": [IDEMPOTENCY],
    "responses": {
        "202": _json({"type": "object", "properties": {"activity_id": {"type": "string"}, "lead_id": {"type": "string"},
                                                       "warnings": WARNINGS}},
                     "Recorded (unknown fields kept in attributes, named in warnings)"),
        "404": _problem("Unknown lead"),
        "422": _problem("Invalid activity"),
        **COMMON,
    },
}
