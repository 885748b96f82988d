"""Initial schema: pods, leases, policy, gpu_types, events, spend.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE = "state IN ('pending', 'ready') AND pod_id IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "pods",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("runpod_id", sa.String(), nullable=True, unique=True),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("phase", sa.String(), nullable=False, index=True),
        sa.Column("gpu_type", sa.String(), nullable=False),
        sa.Column("cost_per_hr", sa.Float(), nullable=False, server_default="0"),
        sa.Column("secret", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("phase_since", sa.Float(), nullable=False),
        sa.Column("cordoned", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("was_ready", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.Column("idle_since", sa.Float(), nullable=True),
        sa.Column("unhealthy_since", sa.Float(), nullable=True),
        sa.Column("backoff_until", sa.Float(), nullable=False, server_default="0"),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("endpoint_host", sa.String(), nullable=True),
        sa.Column("endpoint_port", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False, server_default=""),
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("session_id", sa.String(), nullable=False, index=True),
        sa.Column("voice_id", sa.String(), nullable=True),
        sa.Column("language", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False, index=True),
        sa.Column("pod_id", sa.String(), nullable=True, index=True),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=False, unique=True),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.Column("first_response", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False, server_default=""),
    )
    # The database, not the code, guarantees that one pod slot never has two active leases.
    op.create_index(
        "ux_leases_active_slot", "leases", ["pod_id", "slot"], unique=True,
        sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE),
    )
    op.create_table(
        "policy",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_table(
        "gpu_types",
        sa.Column("gpu_type", sa.String(), primary_key=True),
        sa.Column("price_per_hr", sa.Float(), nullable=False, server_default="0"),
        sa.Column("unavailable_until", sa.Float(), nullable=False, server_default="0"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float(), nullable=False, index=True),
        sa.Column("object", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
    )
    op.create_table(
        "spend",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("seconds", sa.Float(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    for table in ("spend", "events", "gpu_types", "policy"):
        op.drop_table(table)
    op.drop_index("ux_leases_active_slot", table_name="leases")
    op.drop_table("leases")
    op.drop_table("pods")
