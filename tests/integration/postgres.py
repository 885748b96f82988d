"""A throwaway PostgreSQL server for the tests, from Debian's ``postgresql`` package binaries.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port (no Unix socket), one fresh
database per test, everything removed at the end. PostgreSQL refuses to run as root, so as root (here and
in CI) the server runs as the ``postgres`` user the package creates (``nobody`` if there is none).

Durability is off (``fsync``, ``synchronous_commit``): the tests check behaviour, not crash recovery of the
server itself.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from runpod_emulator.runner import allocate_port

USER = "harper"
MISSING = ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
           "`apt-get install postgresql` to run the tests against PostgreSQL")


def find_bin_dir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps one per major version), or None."""
    if explicit := os.environ.get("HARPER_TEST_PG_BIN"):
        return Path(explicit)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="harper-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._run_as: dict = {}
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    entry = pwd.getpwnam(name)
                    self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
                    os.chown(self.root, entry.pw_uid, entry.pw_gid)
                    break

    def _run(self, *args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True, cwd=self.root, timeout=60, **self._run_as)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        for attempt in range(3):  # the free port may be taken between picking and binding it
            self.port = allocate_port("127.0.0.1")
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                          "-l", str(self.log), "-o", options)
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as c:
            c.execute(sql)

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # FORCE: ends connections left open

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
