"""Alembic environment: one migration history for all service schemas."""
import importlib

from alembic import context

from services import SERVICE_NAMES
from shared import eventstore  # noqa: F401 - registers every schema's event store tables
from shared.db import metadata

# Each service owns its tables; importing them registers them on the shared metadata.
for _service in SERVICE_NAMES:
    importlib.import_module(f"services.{_service}.tables")

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `leadsla migrate`")

context.configure(connection=connection, target_metadata=metadata, include_schemas=True,
                  version_table_schema="leadsla")
with context.begin_transaction():
    context.run_migrations()
