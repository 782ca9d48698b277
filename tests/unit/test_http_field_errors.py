"""shared.http.field_errors: pydantic's errors as the problem's field-level `errors`."""

from __future__ import annotations

from shared.http import field_errors


def test_a_body_that_is_not_json_is_an_error_on_the_body_not_on_a_field_named_after_its_offset() -> (
    None
):
    errors = [
        {
            "type": "json_invalid",
            "loc": ("body", 40),
            "msg": "JSON decode error",
            "ctx": {"error": "Expecting value"},
        }
    ]
    assert field_errors(errors) == [
        {"field": "(body)", "message": "is not valid JSON: Expecting value (at character 40)"}
    ]


def test_a_field_error_names_the_field_without_where_it_came_from() -> None:
    errors = [
        {
            "type": "value_error",
            "loc": ("body", "contact", "email"),
            "msg": "Value error, not an email",
        },
        {"type": "missing", "loc": ("query", "tier"), "msg": "Field required"},
        {"type": "model_type", "loc": ("body",), "msg": "Input should be an object"},
    ]
    assert field_errors(errors) == [
        {"field": "contact.email", "message": "not an email"},
        {"field": "tier", "message": "Field required"},
        {"field": "(body)", "message": "Input should be an object"},
    ]
