"""Alembic migrations on a real SQLite file: they build exactly the schema the tables declare, and the
database (not the code) refuses a second active lease on a slot."""

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from reconciler.store import migrate
from reconciler.tables import SQLModel


def test_migrated_schema_matches_the_tables(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    migrate(url)  # idempotent: a second start changes nothing
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_one_active_lease_per_slot_is_enforced_by_sqlite(tmp_path):
    migrate(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    with sqlite3.connect(tmp_path / "m.db") as conn:
        insert = ("INSERT INTO leases (id, session_id, state, pod_id, slot, idempotency_key, request_hash, "
                  "first_response, created_at, expires_at, reason) VALUES (?, 's', ?, 'p1', 0, ?, 'h', '', 0, 0, '')")
        conn.execute(insert, ("a", "ready", "k1"))
        conn.execute(insert, ("b", "released", "k2"))  # ended leases do not hold the slot
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(insert, ("c", "pending", "k3"))
