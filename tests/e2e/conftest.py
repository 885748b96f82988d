"""The whole local stack as a user starts it: ``python -m reconciler run`` with no RunPod key, whose
emulator runs each pod as a real ``python -m gpu_server serve`` on the bundled CPU models."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from runpod_emulator.runner import allocate_port

COMPANION, ADMIN = "e2e-companion", "e2e-admin"


class LocalStack:
    def __init__(self, workdir: Path, **env: str) -> None:
        self.port = allocate_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log = workdir / "controller.log"
        self.env = dict(os.environ) | {
            "HARPER_PORT": str(self.port), "HARPER_API_TOKEN": COMPANION, "HARPER_ADMIN_TOKEN": ADMIN,
            "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'e2e.db'}",
            "HARPER_LOCAL_STATE_DIR": str(workdir / "local"), "HARPER_RECONCILE_INTERVAL_S": "0.5",
            "HARPER_LOCAL_BOOT_S": "0.5",
        } | env
        self.env.pop("HARPER_RUNPOD_API_KEY", None)
        self.proc: asyncio.subprocess.Process | None = None
        self.admin = httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)

    async def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "reconciler", "run", env=self.env, stdout=log, stderr=log,
                start_new_session=True,
            )

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()

    async def pods(self) -> list[dict]:
        return (await self.admin.get("/v1/pods")).json()["pods"]

    async def wait_standby(self, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.returncode is None, f"controller exited; log:\n{self.log.read_text()[-3000:]}"
            try:
                for pod in await self.pods():
                    if pod["role"] == "standby" and pod["state"] == "stopped" and pod["was_ready"]:
                        return pod
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        raise AssertionError(f"no standby after {timeout}s; log:\n{self.log.read_text()[-3000:]}")


@pytest.fixture
async def local_stack(tmp_path):
    stacks: list[LocalStack] = []

    async def make(**env: str) -> LocalStack:
        stack = LocalStack(tmp_path, **env)
        await stack.start()
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await stack.stop()
        await stack.admin.aclose()
