"""The state store's tables (SQLModel). The schema itself is owned by the Alembic migrations under
``migrations/``; these classes must match them (a test compares a migrated database with this metadata).

Invariants the database enforces: one active lease per pod slot (partial unique index
``ux_leases_active_slot``), one lease per idempotency key, one record per RunPod pod id.
"""

from __future__ import annotations

from sqlalchemy import Index, Text, text
from sqlmodel import Field, SQLModel

_ACTIVE_SQL = "state IN ('pending', 'ready') AND pod_id IS NOT NULL"


class PodRow(SQLModel, table=True):
    __tablename__ = "pods"

    id: str = Field(primary_key=True)
    runpod_id: str | None = Field(default=None, unique=True)
    role: str
    phase: str = Field(index=True)
    gpu_type: str
    cost_per_hr: float = 0.0
    secret: str
    created_at: float
    phase_since: float
    cordoned: bool = False
    was_ready: bool = False
    ready_at: float | None = None
    idle_since: float | None = None
    unhealthy_since: float | None = None
    backoff_until: float = 0.0
    failures: int = 0
    endpoint_host: str | None = None
    endpoint_port: int | None = None
    reason: str = ""


class LeaseRow(SQLModel, table=True):
    __tablename__ = "leases"
    __table_args__ = (
        Index(
            "ux_leases_active_slot", "pod_id", "slot", unique=True,
            sqlite_where=text(_ACTIVE_SQL), postgresql_where=text(_ACTIVE_SQL),
        ),
    )

    id: str = Field(primary_key=True)
    session_id: str = Field(index=True)
    voice_id: str | None = None
    language: str | None = None
    state: str = Field(index=True)
    pod_id: str | None = Field(default=None, index=True)
    slot: int | None = None
    path: str | None = None
    idempotency_key: str = Field(unique=True)
    request_hash: str
    first_response: str = Field(default="", sa_type=Text)
    created_at: float
    expires_at: float
    ready_at: float | None = None
    ended_at: float | None = None
    reason: str = ""


class PolicyRow(SQLModel, table=True):
    __tablename__ = "policy"

    id: int = Field(default=1, primary_key=True)
    body: str = Field(sa_type=Text)


class GpuTypeRow(SQLModel, table=True):
    __tablename__ = "gpu_types"

    gpu_type: str = Field(primary_key=True)
    price_per_hr: float = 0.0
    unavailable_until: float = 0.0


class EventRow(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    time: float = Field(index=True)
    object: str
    reason: str
    message: str


class SpendRow(SQLModel, table=True):
    __tablename__ = "spend"

    key: str = Field(primary_key=True)  # "gpu:<pod id>" | "storage:<pod id>"
    usd: float = 0.0
    seconds: float = 0.0


class SpendDailyRow(SQLModel, table=True):
    __tablename__ = "spend_daily"

    day: str = Field(primary_key=True)  # UTC date, YYYY-MM-DD
    kind: str = Field(primary_key=True)  # gpu | storage
    usd: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})


class LockRow(SQLModel, table=True):
    """The controller lock (``reconciler.claim``): at most one row, id 1."""

    __tablename__ = "controller_lock"

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    token: str  # this claim's random id: renewals and the release match on it
    host: str
    pid: int
    process: str = ""  # where the holder's liveness can be checked (``claim.process_key``); "" if unknown
    api_url: str = ""
    since: float
    renewed_at: float
    stale_after_s: float
