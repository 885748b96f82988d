"""The daemon on fake time: the real controller and the emulator on one ``FakeClock``, with passes run when the
daemon's scheduler would run them (at start, every ``interval_s`` and at once on a lease that has to wait or
on a release while leases queue), but only when the test moves the clock. Every decision is then stamped
with an exact time, so a run can be set beside the simulator's for the same sessions.

The controller's own scheduler is paused after its first pass (the one it runs as it starts); the test then
calls ``Controller.reconcile_once`` itself. The emulator's boot watcher polls in real time, so after each
step of the clock the pods that are due boot at once (``Emulator.tick``), before the pass that observes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.domain import Policy
from reconciler.store import Store, migrate
from runpod_emulator.clock import FakeClock
from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import ADMIN, EMULATOR_KEY, Api, ControllerServer, controller_settings, until


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class Played:
    """What the daemon did: its events and each session's lease, as the API reports them."""

    start: float
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    leases: dict[int, dict[str, Any]] = field(default_factory=dict)  # session index -> lease


class FakeTimeStack:
    def __init__(self, tmp_path: Path, start: float, policy: Policy, *, interval_s: float = 1.0,
                 boot_s: float = 3.0, load_s: float = 1.0, **settings: Any) -> None:
        self.tmp_path, self.start, self.policy = tmp_path, start, policy
        self.interval_s, self.boot_s, self.load_s = interval_s, boot_s, load_s
        self.settings = settings
        self.clock = FakeClock(start)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> FakeTimeStack:
        # RunPod's rate limit, where the emulator has one, would make the controller pace its passes in real
        # time: off, as for conftest's emulator.
        unlimited = {"rate_limit": "off"} if "rate_limit" in EmulatorSettings.model_fields else {}
        self.emulator = EmulatorServer(EmulatorSettings(
            port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=self.boot_s, load_seconds=self.load_s,
            seed=7, machines_per_type=2, gpus_per_machine=8,  # room enough that no resume finds its host full
            **unlimited,
        ), clock=self.clock)
        await self.emulator.start()
        self._stack.push_async_callback(self.emulator.stop)
        db = self.tmp_path / "harper.db"
        url = f"sqlite+aiosqlite:///{db}"
        await asyncio.to_thread(migrate, url)
        store = await Store(url).open()
        await store.set_policy(self.policy)  # in place before the controller's first pass
        await store.close()
        # A probe that timed out on a busy machine would be a decision the simulator cannot know of: wait long.
        settings = controller_settings(self.emulator.url, str(db), reconcile_interval_s=3600.0, lease_ttl_s=1e6,
                                       **({"health_timeout_s": 10.0} | self.settings))
        self.server = ControllerServer(settings, clock=self.clock.now)
        await self.server.start()
        self._stack.push_async_callback(self.server.stop)
        self.ctl = self.server.controller
        await until(self._started, timeout=30)
        self.ctl._scheduler.pause()  # from here on, passes run when the test moves the clock
        self.api = Api(self.server.url)
        self._stack.push_async_callback(self.api.aclose)
        return self

    async def _started(self) -> bool:
        return self.ctl.last_pass_ok is not None

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _pass(self) -> None:
        await self.ctl.reconcile_once()
        assert self.ctl.last_error == "", self.ctl.last_error

    async def play(
        self, sessions: list[tuple[float, float]], until_s: float,
        each_tick: Callable[[float], Awaitable[None]] | None = None,
    ) -> Played:
        """Play ``(arrival, length)`` sessions (seconds after start, on the tick grid) until ``until_s``. A
        session holds its lease for ``length`` seconds from the moment it is ready, then releases it."""
        step = self.interval_s
        arrivals: dict[int, list[int]] = defaultdict(list)
        for index, (arrival, _) in enumerate(sessions):
            arrivals[round(arrival / step)].append(index)
        releases: dict[int, list[str]] = defaultdict(list)  # tick -> lease ids
        waiting: dict[str, int] = {}  # pending lease id -> session index
        played = Played(self.start)
        for k in range(1, round(until_s / step) + 1):
            t = self.start + k * step
            self.clock.advance(t - self.clock.now())
            await self.emulator.emulator.tick()
            woke = False
            for lease_id in releases.pop(k, []):
                response = await self.api.http.delete(f"/v1/leases/{lease_id}", headers=self.api.h())
                assert response.status_code == 200, response.text
                if await self.ctl.store.queue_length():
                    await self._pass()
                    woke = True
            for index in arrivals.pop(k, []):
                response = await self.api.lease(f"session-{index}")
                assert response.status_code == 201, response.text
                lease = response.json()
                played.leases[index] = lease
                if lease["state"] == "pending":
                    waiting[lease["id"]] = index
                    await self._pass()
                    woke = True
                else:
                    releases[k + round(sessions[index][1] / step)].append(lease["id"])
            if not woke:
                await self._pass()  # the scheduler's tick
            for lease_id, index in list(waiting.items()):
                lease = (await self.api.get(f"/v1/leases/{lease_id}")).json()
                if lease["state"] == "ready":
                    del waiting[lease_id]
                    ready_k = round((epoch(lease["ready_at"]) - self.start) / step)
                    releases[ready_k + round(sessions[index][1] / step)].append(lease_id)
            if each_tick is not None:
                await each_tick(t)
        for index, lease in played.leases.items():
            played.leases[index] = (await self.api.get(f"/v1/leases/{lease['id']}")).json()
        events = (await self.api.get("/v1/events", ADMIN, limit=5000)).json()["events"]
        played.events = list(reversed(events))
        return played
