"""The emulator service: the fleet, the billing ledger, the fault book and a pod runner, kept in step.

The GraphQL resolvers and the admin routes call this object and nothing below it. Each operation reads the
clock once, applies the pure fleet operation, tells the ledger the pod's new rates and then the runner
what to start or stop, all under one asyncio lock so a runner never sees a pod that has already moved on.

Booting is driven from here as well: ``tick()`` boots every pod whose boot delay has passed (fresh public
ports, runtime appears, the runner starts it). A named background task owned by the app's lifespan calls
it every ``tick_seconds``; the API also calls it before answering, so a test that moves a ``FakeClock``
sees the result at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
from pathlib import Path

from runpod_emulator.clock import Clock
from runpod_emulator.faults import FaultBook
from runpod_emulator.fleet import Fleet, Machine, Pod, PodSpec
from runpod_emulator.ledger import Bill, Ledger
from runpod_emulator.process import ProcessRunner
from runpod_emulator.runner import PodLaunch, PodRunner, allocate_port
from runpod_emulator.settings import EmulatorSettings
from runpod_emulator.simulated import SimulatedRunner

log = logging.getLogger("runpod_emulator")


def make_runner(settings: EmulatorSettings, clock: Clock) -> PodRunner:
    if settings.runner == "process":
        log_dir = settings.log_dir or Path(tempfile.mkdtemp(prefix="runpod-emulator-logs-"))
        log.info("process runner: pod logs in %s", log_dir)
        return ProcessRunner(
            settings.command_argv(), log_dir=log_dir, stop_grace_s=settings.stop_grace_seconds, host=settings.pod_host
        )
    return SimulatedRunner(clock, load_seconds=settings.load_seconds, host=settings.pod_host)


class Emulator:
    def __init__(self, settings: EmulatorSettings, clock: Clock, runner: PodRunner) -> None:
        self.settings = settings
        self.clock = clock
        self.runner = runner
        # One seed for everything random (ids, placement ties, fault rates), so a --seed run repeats itself.
        seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(seed)
        self.fleet = Fleet(
            self.rng,
            machines_per_type=settings.machines_per_type,
            gpus_per_machine=settings.gpus_per_machine,
            boot_seconds=settings.boot_seconds,
        )
        self.ledger = Ledger()
        self.faults = FaultBook(self.rng)
        self._lock = asyncio.Lock()

    def _bill_rates(self, pod: Pod, now: float) -> None:
        self.ledger.set_rates(pod.id, now, pod.gpu_usd_per_hour(), pod.storage_usd_per_hour())

    # Pod operations (raise fleet.FleetError with RunPod's message) ---------------------------------------

    async def create(self, spec: PodSpec) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.create(spec, now)
            self._bill_rates(pod, now)
        log.info(
            "pod %s created: %r on machine %s, %d x %s, %s cloud, ports %r",
            pod.id,
            spec.name,
            pod.machine_id,
            pod.gpu_count,
            pod.gpu_type.id,
            spec.cloud,
            spec.ports,
        )
        return pod

    async def resume(self, pod_id: str, gpu_count: int) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.resume(pod_id, gpu_count, now)
            self._bill_rates(pod, now)
        log.info("pod %s resumed on machine %s", pod.id, pod.machine_id)
        return pod

    async def stop(self, pod_id: str) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.stop(pod_id, now)
            self._bill_rates(pod, now)
            await self.runner.stop(pod.id)
        log.info("pod %s stopped; its GPU on machine %s is free again", pod.id, pod.machine_id)
        return pod

    async def terminate(self, pod_id: str) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.terminate(pod_id, now)
            self._bill_rates(pod, now)
            await self.runner.stop(pod.id)
        log.info("pod %s terminated", pod.id)
        return pod

    async def tick(self) -> None:
        """Boot every pod whose boot delay has passed: fresh public ports, runtime appears, runner starts."""
        async with self._lock:
            now = self.clock.now()
            host = self.settings.pod_host
            for pod in self.fleet.due_for_boot(now):
                public: dict[int, int] = {}
                for spec in pod.ports:
                    public[spec.private] = allocate_port(host, avoid=pod.past_public_ports | set(public.values()))
                self.fleet.boot(pod.id, public, now)
                try:
                    await self.runner.start(PodLaunch(pod.id, pod.spec.env, pod.ports, public, now, host))
                except OSError:
                    # Like a container that fails to start: RunPod still reports the pod RUNNING.
                    log.exception("pod %s: the %s runner could not start it", pod.id, self.runner.kind)
                log.info("pod %s booted: runtime ports %s", pod.id, public)

    async def run_boot_watcher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            try:
                await self.tick()
            except Exception:
                # Logged, and retried next tick: one bad boot must not stop every later pod from booting.
                log.exception("boot watcher: booting pods failed")

    # Other tenants and admin --------------------------------------------------------------------------

    async def fill_machine(self, machine_id: str) -> Machine:
        async with self._lock:
            machine = self.fleet.fill(machine_id)
        log.info("machine %s: other tenants took every free GPU (%d held)", machine_id, machine.tenant_gpus)
        return machine

    async def free_machine(self, machine_id: str) -> Machine:
        async with self._lock:
            machine = self.fleet.release_tenants(machine_id)
        log.info("machine %s: other tenants gave their GPUs back", machine_id)
        return machine

    def bill(self) -> Bill:
        return self.ledger.bill(self.clock.now())

    async def reset(self) -> None:
        async with self._lock:
            for pod in self.fleet.live_pods():
                await self.runner.stop(pod.id)
            self.fleet.clear()
            self.ledger.clear()
            self.faults.clear()
        log.info("reset: pods, other tenants, faults and ledger cleared")

    async def aclose(self) -> None:
        async with self._lock:
            await self.runner.aclose()
