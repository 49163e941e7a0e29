"""Failed logins in the database: per (user, address) and per address windows
that survive restarts and are shared by every server process.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.String(32)


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("addr", sa.String(64), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_login_failures_user_addr", "login_failures", ["username", "addr", "at"])
    op.create_index("ix_login_failures_addr", "login_failures", ["addr", "at"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_addr", "login_failures")
    op.drop_index("ix_login_failures_user_addr", "login_failures")
    op.drop_table("login_failures")
