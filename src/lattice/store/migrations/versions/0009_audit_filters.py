"""Audit filters that stay flat as the log grows: (column, seq) indexes.

``GET /api/audit`` asks for the newest (or oldest) N events matching a filter,
ordered by ``seq`` and paged by a ``seq`` cursor.  An index on ``(column,
seq)`` answers that with one seek and N steps whatever the log's size; an
index on the column alone still needs every matching row sorted (and on
SQLite, where ``seq`` is not the rowid, a lookup per row).  Target and actor
also get ``(column, decision, seq)``, so "the newest denials for X" is a seek
too rather than a walk over X's allowed events.  ``ix_audit_actor`` is
replaced by its ``(actor, seq)`` form, which serves everything it did, and
``ix_audit_action`` is dropped: the action filter is a prefix match written
``action LIKE :p || '%'``, which neither SQLite (case-insensitive LIKE) nor
PostgreSQL (a pattern built at run time) can serve from a plain index, so it
only cost every append a write.

Building the indexes reads the whole table once; on a large log this takes a
while at upgrade (about a second per million events on SQLite).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_target_seq", "audit_events", ["target", "seq"])
    op.create_index("ix_audit_actor_seq", "audit_events", ["actor", "seq"])
    op.create_index("ix_audit_decision_seq", "audit_events", ["decision", "seq"])
    op.create_index("ix_audit_target_decision_seq", "audit_events", ["target", "decision", "seq"])
    op.create_index("ix_audit_actor_decision_seq", "audit_events", ["actor", "decision", "seq"])
    op.drop_index("ix_audit_actor", table_name="audit_events")
    op.drop_index("ix_audit_action", table_name="audit_events")


def downgrade() -> None:
    op.create_index("ix_audit_action", "audit_events", ["action"])
    op.create_index("ix_audit_actor", "audit_events", ["actor"])
    op.drop_index("ix_audit_actor_decision_seq", table_name="audit_events")
    op.drop_index("ix_audit_target_decision_seq", table_name="audit_events")
    op.drop_index("ix_audit_decision_seq", table_name="audit_events")
    op.drop_index("ix_audit_actor_seq", table_name="audit_events")
    op.drop_index("ix_audit_target_seq", table_name="audit_events")
