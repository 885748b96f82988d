import pytest

from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import EMULATOR_KEY, Api, ControllerServer, EmulatorAdmin, controller_settings


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
async def make_controller(emulator, tmp_path):
    """Start a controller against the emulator (settings overridable); all are stopped after the test."""
    started: list[ControllerServer] = []

    async def make(**overrides) -> ControllerServer:
        server = ControllerServer(controller_settings(emulator.url, str(tmp_path / "harper.db"), **overrides))
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
