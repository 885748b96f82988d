"""A throwaway PostgreSQL server for the tests, from Debian's ``postgresql`` package binaries.

``initdb`` into a temporary directory, the ``postgres`` server on a free loopback port (no Unix socket) as a
child of the test run (which it does not outlive, even SIGKILLed), one fresh database per test, everything
removed at the end. PostgreSQL refuses to run as root, so as root (here and in CI) the server runs as the
``postgres`` user the package creates (``nobody`` if there is none).

Durability is off (``fsync``, ``synchronous_commit``): the tests check behaviour, not crash recovery of the
server itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from runpod_emulator.runner import allocate_port

from ..requirements import missing

USER = "harper"
PR_SET_PDEATHSIG = 1
MISSING = ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
           "`apt-get install postgresql` to run the tests against PostgreSQL")


def find_bin_dir(env: Mapping[str, str]) -> Path | None:
    """The server's bin directory: ``HARPER_TEST_PG_BIN`` if set, else the newest installed server's (Debian
    keeps one per major version), else ``initdb`` on the PATH; None if there is none."""
    if "HARPER_TEST_PG_BIN" in env:
        explicit = Path(env["HARPER_TEST_PG_BIN"])
        return explicit if (explicit / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def require_bin_dir(env: Mapping[str, str]) -> Path:
    """The bin directory, or skip the test where PostgreSQL is not installed; under ``CI=true`` fail instead,
    so that CI cannot pass by skipping."""
    bin_dir = find_bin_dir(env)
    if bin_dir is None:
        missing(MISSING, env)
    return bin_dir


def _die_with_parent() -> None:
    """In the server's process, before it runs: a SIGKILLed test run takes the server with it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)  # SIGQUIT: immediate stop


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="harper-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._run_as: dict = {}
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    entry = pwd.getpwnam(name)
                    self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
                    os.chown(self.root, entry.pw_uid, entry.pw_gid)
                    break

    def start(self) -> None:
        done = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "--encoding=UTF8",
             "--locale=C", "--no-sync"],
            capture_output=True, text=True, cwd=self.root, timeout=120, **self._run_as,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")
        for _ in range(3):  # the free port may be taken between picking and binding it
            self.port = allocate_port("127.0.0.1")
            # The postmaster itself (not pg_ctl, which detaches it) so that it stays our child.
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(self.bin_dir / "postgres"), "-D", str(self.data), "-c", "listen_addresses=127.0.0.1",
                     "-c", f"port={self.port}", "-c", "unix_socket_directories=", "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.root, preexec_fn=_die_with_parent, **self._run_as,
                )
            if self._wait_ready():
                return
        raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()}")

    def _wait_ready(self, timeout: float = 60.0) -> bool:
        import psycopg

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # e.g. the port was taken: try another
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={database}"

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # FORCE: ends connections left open

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, no waiting for clients
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
