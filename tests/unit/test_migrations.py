"""The migration history stays one line: `leadsla migrate` upgrades to a single head."""
from __future__ import annotations

from alembic.script import ScriptDirectory

from shared.migrate import _alembic_config


def test_the_migrations_have_exactly_one_head() -> None:
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    assert len(heads) == 1, f"several heads {heads}: chain the newest migration after the others"
