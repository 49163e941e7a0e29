"""A keyed audit chain: each event's MAC over its hash.

Existing rows get NULL here; the server fills in their MACs at its first start
with the key (``AuditLog.prepare``), since the key is not in the database.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN on both backends: the audit table may be large, so no copy
    op.add_column("audit_events", sa.Column("mac", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("mac")
