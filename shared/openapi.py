"""What every service's OpenAPI says about the answers its shared HTTP edges give (shared/http.py):
the bearer key and its 401/403, a problem+json 422 (not FastAPI's default `{"detail": [...]}`,
which no route answers), 404 for an id that names nothing, 413 for a body over the limit, 503
while the database is away. A route documents its own other problems (`responses=`) with
`problem()`."""
from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

PROBLEM_JSON = "application/problem+json"
PROBLEM: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details, with field-level errors",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["field", "message"],
            "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}
BEARER = {"type": "http", "scheme": "bearer", "description": "A source or admin key: `lsk_<id>_<secret>`"}
WRITE_METHODS = ("post", "put", "patch")


def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response entry for a problem+json answer."""
    out: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: {"schema": PROBLEM}}}
    if headers:
        out["headers"] = headers
    return out


def key_role(dependant: Dependant) -> str | None:
    """The role a route's key check needs (`shared.http.require_key` marks it), None without one."""
    for dep in dependant.dependencies:
        role = getattr(dep.call, "key_role", None) or key_role(dep)
        if role:
            return role
    return None


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI keeps those as one route each)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (inner := getattr(route, "original_router", None)) is not None:
            found += api_routes(inner.routes)
    return found


def _is_fastapi_default_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == "#/components/schemas/HTTPValidationError"


def document_problems(app: FastAPI) -> None:
    """Make `app.openapi()` document the shared edges' answers on every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = FastAPI.openapi(app)
        roles = {(route.path, method.lower()): key_role(route.dependant)
                 for route in api_routes(app.routes) for method in route.methods}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                role = roles.get((path, method))
                if role or operation.get("security"):
                    operation.setdefault("security", [{"bearer": []}])
                    responses.setdefault("401", problem("No key, or an unknown or revoked one",
                                                        {"WWW-Authenticate": {"schema": {"type": "string"}}}))
                if role == "admin":
                    responses.setdefault("403", problem("Needs an admin key"))
                if role and getattr(app.state, "key_limiter", None) is not None:
                    responses.setdefault("429", problem(
                        "Over the key's rate limit", {"Retry-After": {"description": "seconds",
                                                                      "schema": {"type": "integer"}}}))
                if "422" in responses and _is_fastapi_default_422(responses["422"]):
                    responses["422"] = problem("Invalid fields, each named in `errors`")
                elif operation.get("parameters") or operation.get("requestBody"):
                    responses.setdefault("422", problem("Invalid fields, each named in `errors`"))
                if "{" in path:
                    responses.setdefault("404", problem("No such resource"))
                if method in WRITE_METHODS:
                    responses.setdefault("413", problem("Body too large"))
                responses.setdefault("503", problem(
                    "The database is unreachable; nothing was stored",
                    {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}))
        components = schema.setdefault("components", {})
        if any(op.get("security") for ops in schema.get("paths", {}).values() for op in ops.values()):
            components.setdefault("securitySchemes", {}).setdefault("bearer", BEARER)
        # FastAPI's default validation error models describe no answer any route gives.
        schemas = components.get("schemas", {})
        if "#/components/schemas/HTTPValidationError" not in json.dumps(schema.get("paths", {})):
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
        if "schemas" in components and not schemas:
            del components["schemas"]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
