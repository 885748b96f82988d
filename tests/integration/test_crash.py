"""Crash safety: SIGKILL the real daemon at random moments of a lease workload (mid-boot or at work), 20+ times,
and restart it.

Afterwards: every harper- pod at the emulator is known to the controller, no pod slot was ever held by two
leases at once, and every lease ended released, expired or failed with a reason.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sqlite3
import sys

import httpx
import pytest

from runpod_emulator.runner import allocate_port
from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import COMPANION, EMULATOR_KEY, EmulatorAdmin, until

KILLS = 20
pytestmark = pytest.mark.timeout(600)


class Daemon:
    def __init__(self, env: dict[str, str], log_path: str) -> None:
        self.env, self.log_path = env, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reconciler", "run", env=self.env, stdout=log, stderr=log,
        )
        log.close()

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def terminate(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 20)


async def session(http: httpx.AsyncClient, n: int, rng: random.Random, stop: asyncio.Event) -> None:
    """One companion session: create (retrying with the same key through crashes), hold, release."""
    key = f"crash-session-{n}"
    lease_id = None
    while lease_id is None and not stop.is_set():
        try:
            response = await http.post("/v1/leases", json={"session_id": key}, headers={"Idempotency-Key": key})
            if response.status_code in (200, 201):
                lease_id = response.json()["id"]
        except httpx.TransportError:
            await asyncio.sleep(0.2)
    if lease_id is None:
        return
    hold_until = asyncio.get_running_loop().time() + rng.uniform(0.5, 3.0)
    while asyncio.get_running_loop().time() < hold_until and not stop.is_set():
        try:
            await http.post(f"/v1/leases/{lease_id}/heartbeat")
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.3)
    if rng.random() < 0.8:  # some sessions vanish without releasing: their leases must expire
        for _ in range(50):
            try:
                await http.delete(f"/v1/leases/{lease_id}")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.2)


async def test_sigkill_at_random_moments_loses_no_lease_and_leaks_no_pod(tmp_path):
    rng = random.Random(1234)
    emulator = EmulatorServer(EmulatorSettings(
        port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=0.3, load_seconds=0.3, seed=3,
        machines_per_type=4, gpus_per_machine=4,
    ))
    await emulator.start()
    db = tmp_path / "crash.db"
    port = allocate_port("127.0.0.1")
    env = dict(os.environ) | {
        "HARPER_RUNPOD_API_KEY": EMULATOR_KEY, "HARPER_RUNPOD_API_URL": emulator.url,
        "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{db}", "HARPER_API_TOKEN": COMPANION,
        "HARPER_ADMIN_TOKEN": "admin", "HARPER_PORT": str(port), "HARPER_RECONCILE_INTERVAL_S": "0.2",
        "HARPER_IDLE_TTL_S": "1", "HARPER_STOPPED_TTL_S": "2", "HARPER_LEASE_TTL_S": "3",
        "HARPER_ORPHAN_GRACE_S": "1", "HARPER_CREATE_GRACE_S": "2", "HARPER_MAX_PODS": "12",
        "HARPER_GPU_TYPES": "NVIDIA GeForce RTX 4090,NVIDIA L4", "HARPER_PROVIDER_TIMEOUT_S": "5",
        "HARPER_PENDING_TIMEOUT_S": "60",
    }
    daemon = Daemon(env, str(tmp_path / "daemon.log"))
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5.0,
                             headers={"Authorization": f"Bearer {COMPANION}"})
    admin = EmulatorAdmin(emulator.url)
    stop = asyncio.Event()
    try:
        await daemon.start()
        sessions: list[asyncio.Task] = []
        for _ in range(KILLS):
            for _ in range(rng.randint(1, 3)):
                sessions.append(asyncio.create_task(session(http, len(sessions), rng, stop)))
            if rng.random() < 0.25:
                await asyncio.sleep(rng.uniform(0.0, 2.0))  # mid-boot: migrating, loading, first pass
            else:
                await until(lambda: _serving(http), timeout=30, every=0.05)
                await asyncio.sleep(rng.uniform(0.2, 2.0))  # at work: passes, grants, heartbeats, releases
            await daemon.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await daemon.start()
        await asyncio.wait_for(asyncio.gather(*sessions), 120)
        stop.set()

        async def settled():
            rows = _rows(db, "SELECT state FROM leases WHERE state IN ('pending', 'ready')")
            return not rows

        await until(settled, timeout=60, every=0.5)

        async def no_unknown_pods():
            known = {r[0] for r in _rows(db, "SELECT runpod_id FROM pods WHERE phase != 'terminated' "
                                             "AND runpod_id IS NOT NULL")}
            live = {p["id"] for p in await admin.live()}
            return live <= known

        await until(no_unknown_pods, timeout=60, every=0.5)
    finally:
        stop.set()
        await daemon.terminate()
        await http.aclose()
        await admin.aclose()
        await emulator.stop()

    leases = _rows(db, "SELECT id, state, reason, pod_id, slot, ready_at, ended_at FROM leases")
    assert len(leases) >= KILLS
    for lease_id, state, reason, *_ in leases:
        assert state in ("released", "expired", "failed"), (lease_id, state)
        if state != "released":
            assert reason, f"lease {lease_id} ended {state} without a reason"
    # no slot ever held by two leases: the intervals during which leases were ready never overlap
    held: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _, _, _, pod_id, slot, ready_at, ended_at in leases:
        if ready_at is not None and pod_id is not None:
            held.setdefault((pod_id, slot), []).append((ready_at, ended_at))
    served = sum(len(v) for v in held.values())
    assert served >= KILLS // 2, "the workload should have been served through the crashes"
    for spans in held.values():
        spans.sort()
        for (_, end_a), (start_b, _) in itertools.pairwise(spans):
            assert end_a <= start_b, f"two leases held one slot at once: {spans}"
    with open(tmp_path / "daemon.log") as f:
        log = f.read()
    assert EMULATOR_KEY not in log and COMPANION not in log


async def _serving(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/healthz", timeout=0.5)).status_code == 200
    except httpx.TransportError:
        return False


def _rows(db, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()
