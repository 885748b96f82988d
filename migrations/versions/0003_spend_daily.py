"""Spend by UTC day and kind, for the cost report's today and month to date.

Revision ID: 0003_spend_daily
Revises: 0002_lock
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_spend_daily"
down_revision = "0002_lock"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spend_daily",
        sa.Column("day", sa.String(), primary_key=True),
        sa.Column("kind", sa.String(), primary_key=True),
        sa.Column("usd", sa.Float(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("spend_daily")
