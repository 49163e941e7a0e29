"""Plugin consent covers the whole identity: publisher, type and entrypoint
are recorded beside the approved digest and capabilities.

Records approved before this revision get ``approved_publisher`` and
``approved_type`` from the record itself (what was last verified, which is what
was approved unless a review was already pending); ``approved_entrypoint`` stays
NULL, and the first scan that finds the rest as approved adopts the bundle's
entrypoint (the entrypoint was not stored before, so there is nothing to copy).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plugins") as batch:
        batch.add_column(sa.Column("entrypoint", sa.String(128), nullable=False, server_default=""))
        batch.add_column(sa.Column("approved_publisher", sa.String(128), nullable=True))
        batch.add_column(sa.Column("approved_type", sa.String(16), nullable=True))
        batch.add_column(sa.Column("approved_entrypoint", sa.String(128), nullable=True))
    plugins = sa.table(
        "plugins",
        sa.column("publisher", sa.String),
        sa.column("type", sa.String),
        sa.column("approved_digest", sa.String),
        sa.column("approved_publisher", sa.String),
        sa.column("approved_type", sa.String),
    )
    op.execute(
        plugins.update()
        .where(plugins.c.approved_digest.is_not(None))
        .values(approved_publisher=plugins.c.publisher, approved_type=plugins.c.type)
    )


def downgrade() -> None:
    with op.batch_alter_table("plugins") as batch:
        batch.drop_column("approved_entrypoint")
        batch.drop_column("approved_type")
        batch.drop_column("approved_publisher")
        batch.drop_column("entrypoint")
