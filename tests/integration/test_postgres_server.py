"""The PostgreSQL test server's availability rule: skipped where the binaries are missing, except in CI."""

import pytest

from .postgres import require_bin_dir


def test_missing_binaries_skip_the_postgresql_runs_but_fail_them_in_ci(tmp_path):
    nowhere = {"HARPER_TEST_PG_BIN": str(tmp_path)}  # no initdb there
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        require_bin_dir(nowhere)
    with pytest.raises(pytest.fail.Exception, match="CI=true: required"):
        require_bin_dir(nowhere | {"CI": "true"})
    (tmp_path / "initdb").touch()
    assert require_bin_dir(nowhere | {"CI": "true"}) == tmp_path


def test_the_server_serves_fresh_databases(postgres_server, postgres_url):
    import psycopg

    with psycopg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql")) as conn:
        assert conn.execute("SHOW server_version").fetchone()[0]
        assert conn.execute("SELECT current_user").fetchone()[0] == "harper"
