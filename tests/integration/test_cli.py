"""The controller's command line: help, clear errors for a missing controller and for bad settings."""

import os
import subprocess
import sys

from alembic.script import ScriptDirectory

from reconciler.store import MIGRATIONS_DIR


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HARPER_")}
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True,
                          timeout=60, env=clean | env)


def test_every_command_has_help():
    for command in ([], ["run"], ["migrate"], ["demo"], ["demo-local"]):
        done = run(*command, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout, command


def test_demo_without_a_controller_says_so():
    done = run("demo", "--url", "http://127.0.0.1:9", "--token", "t")
    assert done.returncode == 3
    assert "no controller is reachable at http://127.0.0.1:9" in done.stderr


def test_demo_without_a_token_says_how_to_get_one():
    done = run("demo")
    assert done.returncode == 2 and "HARPER_API_TOKEN" in done.stderr


def test_bad_setting_is_named_before_anything_starts():
    done = run("run", HARPER_SESSIONS_PER_POD="1000")
    assert done.returncode == 2 and "HARPER_SESSIONS_PER_POD=1000" in done.stderr and "Traceback" not in done.stderr


def test_migrate_creates_the_schema(tmp_path):
    db = tmp_path / "m.db"
    done = run("migrate", "--database-url", f"sqlite+aiosqlite:///{db}")
    assert done.returncode == 0 and "newest schema" in done.stdout
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert {"pods", "leases", "policy", "gpu_types", "events", "spend", "controller_lock"} <= tables
    assert version == head
