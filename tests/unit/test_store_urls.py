"""Database URLs: which driver the store and Alembic use, and the one clear error when a driver is missing."""

import sys

import pytest

from reconciler.store import Store, StoreError, async_url, migrate, sync_url


@pytest.mark.parametrize(
    ("url", "store", "alembic"),
    [
        ("sqlite+aiosqlite:///harper.db", "sqlite+aiosqlite:///harper.db", "sqlite:///harper.db"),
        ("postgresql+asyncpg://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ],
)
def test_each_url_gets_an_async_driver_for_the_store_and_a_sync_one_for_alembic(url, store, alembic):
    assert async_url(url) == store
    assert sync_url(url) == alembic


@pytest.mark.parametrize("call", [Store, migrate])
def test_a_missing_postgres_driver_is_one_clear_error_without_the_password(call, monkeypatch):
    for driver in ("asyncpg", "psycopg"):
        monkeypatch.setitem(sys.modules, driver, None)  # as if the postgres extra were not installed
    with pytest.raises(StoreError, match=r"^cannot use a postgresql\+asyncpg:// database URL: .*(asyncpg|psycopg).* "
                                         r"\(install the postgres extra: pip install 'harper-voice-pods\[postgres\]'\)$") as e:
        call("postgresql+asyncpg://harper:s3cret@db.example:5432/harper")
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("call", [Store, migrate])
def test_an_unreadable_url_is_a_store_error(call):
    with pytest.raises(StoreError, match=r"^cannot use the database URL: Could not parse"):
        call("harper.db")
