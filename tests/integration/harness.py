"""Real servers on loopback for integration tests: the RunPod emulator and the controller, each on uvicorn
in the test's event loop, talking real HTTP (the controller through the official runpod SDK)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn

from reconciler.app import create_app
from reconciler.settings import Settings
from runpod_emulator.server import GuestServer

COMPANION = "companion-token-for-tests"
ADMIN = "admin-token-for-tests"
EMULATOR_KEY = "emulator-key-for-tests"
GPU_A, GPU_B = "NVIDIA GeForce RTX 4090", "NVIDIA L4"


class ControllerServer:
    def __init__(self, settings: Settings, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings) if clock is None else create_app(settings, clock=clock)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                log_config=None, access_log=False)
        self._server = GuestServer(config)
        self._task: asyncio.Task | None = None
        self.url = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                raise RuntimeError("controller failed to start") from self._task.exception()
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 15)

    @property
    def controller(self):
        return self.app.state.controller


def controller_settings(emulator_url: str, database: str, **overrides: Any) -> Settings:
    """Test settings on ``database``: a SQLite file's path, or a database URL."""
    url = database if "://" in database else f"sqlite+aiosqlite:///{database}"
    values: dict[str, Any] = dict(
        runpod_api_key=EMULATOR_KEY, runpod_api_url=emulator_url,
        database_url=url, api_token=COMPANION, admin_token=ADMIN,
        reconcile_interval_s=0.25, gpu_types=f"{GPU_A},{GPU_B}", standby_count=1, idle_ttl_s=1.0,
        stopped_ttl_s=600.0, lease_ttl_s=30.0, health_timeout_s=1.0, provider_timeout_s=5.0,
        create_grace_s=5.0, orphan_grace_s=1.0, resume_backoff_s=30.0, out_of_stock_s=60.0,
        max_pods=10, budget_usd_per_hour=20.0,
    )
    values.update(overrides)
    return Settings(**values)


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


def daemon_env(emulator_url: str, database: str, port: int, **settings: Any) -> dict[str, str]:
    """The environment of a real daemon on ``port`` against the emulator; ``settings`` as ``name=value`` (each
    becomes ``HARPER_NAME``). Nothing of the test run's own ``HARPER_*`` environment leaks in."""
    url = database if "://" in database else f"sqlite+aiosqlite:///{database}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARPER_")}
    values = {"runpod_api_key": EMULATOR_KEY, "runpod_api_url": emulator_url, "database_url": url,
              "api_token": COMPANION, "admin_token": ADMIN, "port": port, "gpu_types": f"{GPU_A},{GPU_B}"} | settings
    return env | {f"HARPER_{name.upper()}": str(value) for name, value in values.items()}


def _die_with_parent() -> None:
    """In the daemon's process, before it runs: a test run or bench that dies takes its daemon with it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Daemon:
    """The real daemon (``python -m reconciler run``) as a subprocess; everything it prints goes to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: str) -> None:
        self.env, self.log_path = env, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "reconciler", "run", env=self.env, stdout=log, stderr=log,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def terminate(self) -> None:
        if self.running:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                await self.kill()

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


class Api:
    """The controller's REST API as the tests call it."""

    def __init__(self, url: str, token: str = COMPANION) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=30.0)
        self.token = token

    def h(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}", **extra}

    async def lease(self, session_id: str, key: str | None = None, **body: Any) -> httpx.Response:
        headers = self.h(**({"Idempotency-Key": key} if key else {}))
        return await self.http.post("/v1/leases", json={"session_id": session_id, **body}, headers=headers)

    async def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        return await self.http.get(path, headers=self.h(token), params=params)

    async def post(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return await self.http.post(path, headers=self.h(token), **kw)

    async def pods(self) -> list[dict]:
        return (await self.get("/v1/pods", ADMIN)).json()["pods"]

    async def serving(self) -> bool:
        """The API answers (a daemon that is starting, or was just killed, does not)."""
        try:
            return (await self.http.get("/healthz", timeout=0.5)).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self.http.aclose()


class EmulatorAdmin:
    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=30.0,
                                      headers={"Authorization": f"Bearer {EMULATOR_KEY}"})

    async def pods(self) -> list[dict]:
        return (await self.http.get("/_admin/pods")).json()

    async def live(self, prefix: str = "harper-") -> list[dict]:
        return [p for p in await self.pods() if p["state"] != "TERMINATED" and p["name"].startswith(prefix)]

    async def fault(self, **rule: Any) -> None:
        response = await self.http.post("/_admin/faults", json=rule)
        assert response.status_code == 201, response.text

    async def clear_faults(self) -> None:
        assert (await self.http.delete("/_admin/faults")).status_code == 200

    async def crash(self, pod_id: str, line: str, exit_code: int = 1) -> None:
        response = await self.http.post(f"/_admin/pods/{pod_id}/crash", json={"log": line, "exit_code": exit_code})
        assert response.status_code == 200, response.text

    async def rate_limit(self, policy: str) -> None:
        response = await self.http.put("/_admin/rate-limit", json={"policy": policy})
        assert response.status_code == 200, response.text

    async def requests(self) -> dict:
        return (await self.http.get("/_admin/requests")).json()

    async def bill(self) -> dict:
        return (await self.http.get("/_admin/bill")).json()

    async def fill(self, machine_id: str) -> None:
        assert (await self.http.post(f"/_admin/machines/{machine_id}/fill")).status_code == 200

    async def machines(self) -> list[dict]:
        return (await self.http.get("/_admin/machines")).json()

    async def aclose(self) -> None:
        await self.http.aclose()
