"""Plugin lifecycle records, plugin logs and per-plugin operator policy.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.String(32)


def upgrade() -> None:
    op.create_table(
        "plugins",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("publisher", sa.String(128), nullable=False),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("digest_sha256", sa.String(64), nullable=False),
        sa.Column("approved_digest", sa.String(64), nullable=True),
        sa.Column("approved_capabilities", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("review_required", sa.Boolean, nullable=False),
        sa.Column("bundle", sa.String(255), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("verified_at", TS, nullable=True),
        sa.Column("installed_at", TS, nullable=True),
        sa.Column("activated_at", TS, nullable=True),
        sa.Column("disabled_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "plugin_logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("plugin_id", sa.String(128), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("correlation_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_plugin_logs_plugin", "plugin_logs", ["plugin_id", "id"])
    op.create_table(
        "plugin_policies",
        sa.Column("plugin_id", sa.String(128), primary_key=True),
        sa.Column("allow_hosts", sa.Text, nullable=True),
        sa.Column("static_buckets", sa.Text, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("plugin_policies")
    op.drop_table("plugin_logs")
    op.drop_table("plugins")
