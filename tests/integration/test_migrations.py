"""Alembic migrations on a real SQLite file and a real PostgreSQL database: they build exactly the schema the
tables declare, and the database (not the code) refuses a second active lease on a slot."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from reconciler.store import migrate, sync_url
from reconciler.tables import SQLModel


@pytest.fixture
def database_url(any_database):
    return any_database


def test_migrated_schema_matches_the_tables(database_url):
    migrate(database_url)
    migrate(database_url)  # idempotent: a second start changes nothing
    engine = create_engine(sync_url(database_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_one_active_lease_per_slot_is_enforced_by_the_database(database_url):
    migrate(database_url)
    engine = create_engine(sync_url(database_url))
    insert = text("INSERT INTO leases (id, session_id, state, pod_id, slot, idempotency_key, request_hash, "
                  "first_response, created_at, expires_at, reason) "
                  "VALUES (:id, 's', :state, 'p1', 0, :key, 'h', '', 0, 0, '')")
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"id": "a", "state": "ready", "key": "k1"})
            conn.execute(insert, {"id": "b", "state": "released", "key": "k2"})  # ended leases do not hold it
        with pytest.raises(IntegrityError, match=r"ux_leases_active_slot|leases\.pod_id, leases\.slot"), engine.begin() as conn:
            conn.execute(insert, {"id": "c", "state": "pending", "key": "k3"})
    finally:
        engine.dispose()
