"""Text as Postgres can keep it, and names as people type them: pure, for every service's edge."""
from __future__ import annotations

import json
import re
from typing import Any


def loads_json(data: str | bytes) -> Any:
    """`json.loads`, but an integer too long for Python to read (over 4,300 digits: CPython's guard
    against quadratic parsing) stays its digits, a string. Intake then keeps that field as sent
    with a warning, as any value it cannot read, instead of the whole body failing (a 500, or a
    lead dead-lettered as undecodable). Other errors are json.loads' own."""
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        raise
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        return json.loads(data, parse_int=_int_or_digits)


def _int_or_digits(digits: str) -> int | str:
    try:
        return int(digits)
    except ValueError:
        return digits


def storable(value: Any) -> Any:
    """Refuse text Postgres cannot store (NUL, lone surrogates), however deep in the value: a
    ValueError naming why, for the field that carries it (else the insert fails and answers 500,
    or an event carrying it is dead-lettered by the consumers that keep it as jsonb)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key)
            storable(item)
    elif isinstance(value, list):
        for item in value:
            storable(item)
    return value


def spelled(value: str) -> str:
    """A name as people type it in a CRM picklist ('No Budget', 'Opt-Out') in the one form
    configurations and the contract use ('no_budget', 'opt_out')."""
    return re.sub(r"[\s-]+", "_", value.strip().lower())
