"""The controller lock: one row naming the controller that holds this database (see ``reconciler.claim``).

Revision ID: 0002_lock
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_lock"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "controller_lock",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process", sa.String(), nullable=False, server_default=""),
        sa.Column("api_url", sa.String(), nullable=False, server_default=""),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("renewed_at", sa.Float(), nullable=False),
        sa.Column("stale_after_s", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("controller_lock")
