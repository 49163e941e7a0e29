"""Migrations build exactly the schema the table definitions describe."""

from __future__ import annotations

from sqlalchemy import inspect

from lattice.store.db import Database
from lattice.store.migrate import current_revision, head_revision, upgrade
from lattice.store.tables import metadata


def test_migrated_schema_matches_the_metadata(db_url: str) -> None:
    db = Database(db_url)
    try:
        upgrade(db)
        upgrade(db)  # idempotent
        assert current_revision(db) == head_revision()
        insp = inspect(db.engine)
        tables = set(insp.get_table_names()) - {"alembic_version"}
        assert tables == set(metadata.tables)
        for name, table in metadata.tables.items():
            columns = {c["name"]: c for c in insp.get_columns(name)}
            assert set(columns) == {c.name for c in table.columns}, name
            for col in table.columns:
                assert columns[col.name]["nullable"] == col.nullable, (name, col.name)
    finally:
        db.dispose()
