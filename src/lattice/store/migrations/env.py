"""Alembic environment: always driven programmatically by lattice.store.migrate."""

from __future__ import annotations

from alembic import context

from lattice.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable via the bare alembic CLI
    raise SystemExit("run migrations with `lattice db upgrade`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
context.run_migrations()
