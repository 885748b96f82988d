import os

import pytest

from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import EMULATOR_KEY, Api, ControllerServer, EmulatorAdmin, controller_settings
from .postgres import PostgresServer, require_bin_dir


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the test session. Skipped where the binaries are missing, but a
    failure in CI (``CI=true``), so that CI cannot pass by skipping."""
    server = PostgresServer(require_bin_dir(os.environ))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server (dropped after the test)."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture
def database_url(tmp_path):
    """The controller's database: a SQLite file (modules that run on both override this with ``any_database``)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'harper.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request, tmp_path):
    """Each test twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'harper.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def emulator():
    server = EmulatorServer(EmulatorSettings(
        port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=0.2, load_seconds=0.2, seed=7,
        machines_per_type=2, gpus_per_machine=2, rate_limit="off",  # passes every 0.25 s: a test sets its own
    ))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_controller(emulator, database_url):
    """Start a controller against the emulator (settings overridable); all are stopped after the test."""
    started: list[ControllerServer] = []

    async def make(**overrides) -> ControllerServer:
        server = ControllerServer(controller_settings(emulator.url, database_url, **overrides))
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
async def emu(emulator):
    admin = EmulatorAdmin(emulator.url)
    yield admin
    await admin.aclose()


@pytest.fixture
async def stack(make_controller, emu):
    """(controller server, companion Api, emulator admin) with the default test settings."""
    server = await make_controller()
    api = Api(server.url)
    yield server, api, emu
    await api.aclose()
