"""Fixtures: a real emulator on a loopback port, and the runpod SDK pointed at it.

``start_emulator`` runs the server on its own thread, because the SDK is synchronous; async tests that
need the server in their own loop use ``EmulatorServer`` directly. ``rest(server)`` is an httpx client for
REST v2 whose every answer is checked against RunPod's published contract (``contract.py``). Tests run under
a generous REST rate-limit policy, so the headers are there to check but no test is throttled unless it
sets its own policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import runpod

from runpod_emulator.clock import Clock
from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .contract import ContractChecker, rest_client

API_KEY = "test-key"
RTX_4090 = "NVIDIA GeForce RTX 4090"
GENEROUS_RATE_LIMIT = "100000/minute,1000000/hour"


def make_settings(**overrides: Any) -> EmulatorSettings:
    defaults: dict[str, Any] = {
        "port": 0,
        "boot_seconds": 0,
        "load_seconds": 0,
        "seed": 7,
        "machines_per_type": 2,
        "gpus_per_machine": 4,
        "rate_limit": GENEROUS_RATE_LIMIT,
    }
    return EmulatorSettings(**{**defaults, **overrides})


StartEmulator = Callable[..., EmulatorServer]


@pytest.fixture
def start_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[StartEmulator]:
    servers: list[EmulatorServer] = []

    def start(clock: Clock | None = None, **overrides: Any) -> EmulatorServer:
        server = EmulatorServer(make_settings(**overrides), clock).start_in_thread()
        servers.append(server)
        monkeypatch.setenv("RUNPOD_API_BASE_URL", server.url)
        monkeypatch.setattr(runpod, "api_key", API_KEY)
        return server

    yield start
    for server in servers:
        server.stop_in_thread()


@pytest.fixture
def emulator(start_emulator: StartEmulator) -> EmulatorServer:
    return start_emulator()


def admin(server: EmulatorServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.request(method, f"{server.url}/_admin{path}", headers=headers, timeout=10, **kwargs)


def graphql(
    server: EmulatorServer,
    query: str,
    variables: dict[str, Any] | None = None,
    key: str | None = API_KEY,
    timeout: float = 10,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{server.url}/graphql", json={"query": query, "variables": variables}, headers=headers, timeout=timeout
    )


def rest(
    server: EmulatorServer, key: str | None = API_KEY, checker: ContractChecker | None = None, **kwargs: Any
) -> httpx.Client:
    """A REST v2 client for the server; every answer it receives is checked against RunPod's contract."""
    if checker is None:
        checker = ContractChecker(rate_limited=not server.emulator.rate_limiter.policy.off)
    return rest_client(server.url, key, checker, **kwargs)


def admin_pod(server: EmulatorServer, pod_id: str) -> dict[str, Any]:
    return next(p for p in admin(server, "GET", "/pods").json() if p["id"] == pod_id)


def alive(pid: int) -> bool:
    """Running and not a zombie (a killed grandchild can linger as a zombie until init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
