"""Text as Postgres can keep it, and names as people type them: pure, for every service's edge."""
from __future__ import annotations

import re
from typing import Any


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
