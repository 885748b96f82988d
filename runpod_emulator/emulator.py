"""The emulator service: the fleet, the billing ledger, the fault book and a pod runner, kept in step.

The GraphQL resolvers, the REST handlers and the admin routes call this object and nothing below it, so a pod
created through one API is seen, stopped and billed through the other. Each operation reads the clock once,
applies the pure fleet operation, tells the ledger the pod's new rates, notes it in the pod's system log and
then tells the runner what to start or stop, all under one asyncio lock so a runner never sees a pod that has
already moved on.

Time-driven changes happen in ``tick()``: pods whose boot delay has passed boot (fresh public ports, runtime
appears, the runner starts them), processes that ended by themselves turn their pods to ERROR, and other
tenants churn. A named background task owned by the app's lifespan calls it every ``tick_seconds``; the APIs
also call it before answering, so a test that moves a ``FakeClock`` sees the result at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
from pathlib import Path

from runpod_emulator.billing import Record, Window, records
from runpod_emulator.clock import Clock
from runpod_emulator.faults import FaultBook
from runpod_emulator.fleet import Fleet, Machine, Pod, PodSpec, PodState
from runpod_emulator.ledger import Bill, Ledger
from runpod_emulator.operations import RequestCounter
from runpod_emulator.podlogs import Cursor, LogLine, LogSource, PodLogs
from runpod_emulator.process import ProcessRunner
from runpod_emulator.ratelimit import RateLimiter, RateLimitPolicy
from runpod_emulator.runner import PodLaunch, PodRunner, allocate_port
from runpod_emulator.settings import EmulatorSettings
from runpod_emulator.simulated import SimulatedRunner
from runpod_emulator.tenants import churn

log = logging.getLogger("runpod_emulator")
CONTAINER, SYSTEM = LogSource.CONTAINER, LogSource.SYSTEM


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
        # Churn draws from its own stream: how often it runs depends on wall-clock ticks, and it must not
        # shift the ids or fault draws of a seeded run.
        seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(seed)
        self.churn_rng = random.Random(f"tenants-{seed}")
        self.fleet = Fleet(
            self.rng,
            machines_per_type=settings.machines_per_type,
            gpus_per_machine=settings.gpus_per_machine,
            boot_seconds=settings.boot_seconds,
            resume_boot_seconds=settings.resume_boot_seconds,
            ports_delay_seconds=settings.ports_delay_seconds,
        )
        self.ledger = Ledger()
        self.faults = FaultBook(self.rng)
        self.requests = RequestCounter()
        self.rate_limiter = RateLimiter(settings.rate_limit_policy())
        self.logs = PodLogs()
        self.tenant_take_per_hour = settings.tenant_take_per_hour
        self.tenant_release_per_hour = settings.tenant_release_per_hour
        self._churned_at = clock.now()
        self._lock = asyncio.Lock()

    def _bill_rates(self, pod: Pod, now: float) -> None:
        self.ledger.set_rates(pod.id, now, pod.gpu_usd_per_hour(), pod.storage_usd_per_hour())

    def _collect_output(self, pod_id: str, now: float) -> None:
        for line in self.runner.read_output(pod_id):
            self.logs.append(pod_id, CONTAINER, line, now)

    async def _stop_container(self, pod: Pod, now: float) -> None:
        await self.runner.stop(pod.id)
        self._collect_output(pod.id, now)

    # Pod operations (raise errors.FleetError with RunPod's message) ---------------------------------------

    async def create(self, spec: PodSpec, *, never_boot: bool = False) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.create(spec, now, never_boot=never_boot)
            self._bill_rates(pod, now)
            self.logs.append(pod.id, SYSTEM, f"pod created on machine {pod.machine_id}; pulling image", now)
        log.info(
            "pod %s created: %r on machine %s, %d x %s, %s cloud, ports %r%s",
            pod.id,
            spec.name,
            pod.machine_id,
            pod.gpu_count,
            pod.gpu_type.id,
            spec.cloud,
            spec.ports,
            " (it will never get a runtime)" if never_boot else "",
        )
        return pod

    async def resume(self, pod_id: str, gpu_count: int, *, never_boot: bool = False) -> Pod:
        async with self._lock:
            now = self.clock.now()
            before = self.fleet.get(pod_id).state
            pod = self.fleet.resume(pod_id, gpu_count, now, never_boot=never_boot)
            self._bill_rates(pod, now)
            if before in (PodState.EXITED, PodState.ERROR):
                self.logs.append(pod.id, SYSTEM, "pod starting", now)
        log.info("pod %s resumed on machine %s", pod.id, pod.machine_id)
        return pod

    async def restart(self, pod_id: str, *, never_boot: bool = False) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.restart(pod_id, now, never_boot=never_boot)
            await self._stop_container(pod, now)
            self.logs.append(pod.id, SYSTEM, "container restarting", now)
        log.info("pod %s restarting", pod.id)
        return pod

    async def stop(self, pod_id: str) -> Pod:
        async with self._lock:
            now = self.clock.now()
            was = self.fleet.get(pod_id).state
            pod = self.fleet.stop(pod_id, now)
            self._bill_rates(pod, now)
            await self._stop_container(pod, now)
            if was is not PodState.EXITED:
                self.logs.append(pod.id, SYSTEM, "pod stopped", now)
        log.info("pod %s stopped; its GPU on machine %s is free again", pod.id, pod.machine_id)
        return pod

    async def terminate(self, pod_id: str) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.terminate(pod_id, now)
            self._bill_rates(pod, now)
            await self.runner.stop(pod.id)
            self.runner.read_output(pod.id)  # nobody can ask for a terminated pod's logs again
            self.logs.forget(pod.id)
        log.info("pod %s terminated", pod.id)
        return pod

    async def update(self, pod_id: str, changes: dict[str, object]) -> Pod:
        async with self._lock:
            now = self.clock.now()
            pod, restarted = self.fleet.update(pod_id, now, **changes)
            self._bill_rates(pod, now)
            if restarted:
                await self._stop_container(pod, now)
                self.logs.append(pod.id, SYSTEM, "container restarting: its settings changed", now)
        log.info("pod %s updated (%s)%s", pod.id, ", ".join(sorted(changes)), "; restarting" if restarted else "")
        return pod

    async def crash(self, pod_id: str, last_words: str | None = None, exit_code: int | None = 1) -> Pod:
        """Make the pod's container exit by itself (the admin API's crash): it shows ERROR from now on."""
        async with self._lock:
            now = self.clock.now()
            pod = self.fleet.get(pod_id)
            await self._stop_container(pod, now)
            if last_words:
                for line in last_words.splitlines():
                    self.logs.append(pod.id, CONTAINER, line, now)
            self._crashed(pod, now, exit_code)
        return pod

    def _crashed(self, pod: Pod, now: float, exit_code: int | None) -> None:
        self.fleet.crash(pod.id, now, exit_code)
        self._bill_rates(pod, now)
        ending = "container exited" if exit_code is None else f"container exited with code {exit_code}"
        self.logs.append(pod.id, SYSTEM, ending, now)
        log.warning("pod %s: its container exited with code %s; the pod is in ERROR", pod.id, exit_code)

    async def tick(self) -> None:
        """Boot pods whose delay has passed, turn pods whose process ended to ERROR, let other tenants churn."""
        async with self._lock:
            now = self.clock.now()
            host = self.settings.pod_host
            for pod in self.fleet.due_for_boot(now):
                public: dict[int, int] = {}
                for spec in pod.ports:
                    public[spec.private] = allocate_port(host, avoid=pod.past_public_ports | set(public.values()))
                self.fleet.boot(pod.id, public, now)
                self.logs.append(pod.id, SYSTEM, "container started", now)
                try:
                    await self.runner.start(PodLaunch(pod.id, pod.spec.env, pod.ports, public, now, host))
                except OSError as e:
                    log.exception("pod %s: the %s runner could not start it", pod.id, self.runner.kind)
                    self.logs.append(pod.id, CONTAINER, f"failed to start the container: {e}", now)
                    self._crashed(pod, now, None)
                    continue
                log.info("pod %s booted: runtime ports %s", pod.id, public)
            for pod_id, exit_code in self.runner.take_exits():
                pod = self.fleet.pods.get(pod_id)
                if pod is not None and pod.state in (PodState.STARTING, PodState.RUNNING):
                    self._collect_output(pod_id, now)
                    self._crashed(pod, now, exit_code)
            self._churn(now)

    def _churn(self, now: float) -> None:
        dt, self._churned_at = now - self._churned_at, now
        changes = churn(
            self.fleet.machines.values(),
            self.churn_rng,
            dt,
            take_per_hour=self.tenant_take_per_hour,
            release_per_hour=self.tenant_release_per_hour,
        )
        for change in changes:
            log.info(
                "machine %s: other tenants took %d GPUs, gave back %d", change.machine_id, change.taken, change.released
            )

    async def run_boot_watcher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            try:
                await self.tick()
            except Exception:
                # Logged, and retried next tick: one bad boot must not stop every later pod from booting.
                log.exception("boot watcher: booting pods failed")

    # Logs ----------------------------------------------------------------------------------------------

    async def pod_logs(
        self, pod_id: str, *, source: LogSource | None = None, tail: int = 100, cursor: Cursor | None = None
    ) -> tuple[list[LogLine], int]:
        """The backfill a logs request asks for, and the last sequence number it was chosen from."""
        async with self._lock:
            self.fleet.get(pod_id)  # PodNotFound for unknown and terminated pods
            self._collect_output(pod_id, self.clock.now())
            return self.logs.select(pod_id, source=source, tail=tail, cursor=cursor), self.logs.last_seq()

    async def pod_logs_after(self, pod_id: str, seq: int, source: LogSource | None = None) -> list[LogLine] | None:
        """New lines for a live stream; None once the pod is gone (the stream then ends)."""
        async with self._lock:
            pod = self.fleet.pods.get(pod_id)
            if pod is None or pod.state is PodState.TERMINATED:
                return None
            self._collect_output(pod_id, self.clock.now())
            return self.logs.after(pod_id, seq, source)

    # Other tenants, limits and admin ---------------------------------------------------------------------

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

    def set_tenant_churn(self, take_per_hour: float, release_per_hour: float) -> None:
        self._churned_at = self.clock.now()
        self.tenant_take_per_hour, self.tenant_release_per_hour = take_per_hour, release_per_hour
        log.info("other tenants: take %.3g and give back %.3g GPUs per GPU-hour", take_per_hour, release_per_hour)

    def set_rate_limit(self, policy: RateLimitPolicy) -> None:
        """A new policy with fresh windows (every quota full again)."""
        self.rate_limiter = RateLimiter(policy)
        log.info("REST rate limit: %s", policy)

    def bill(self) -> Bill:
        return self.ledger.bill(self.clock.now())

    def billing_records(self, window: Window, pod_id: str | None = None) -> list[Record]:
        return records(self.ledger, window, self.clock.now(), pod_id)

    async def reset(self) -> None:
        async with self._lock:
            for pod in self.fleet.live_pods():
                await self.runner.stop(pod.id)
            self.fleet.clear()
            self.ledger.clear()
            self.faults.clear()
            self.logs.clear()
            self.requests.clear()
            self.rate_limiter = RateLimiter(self.rate_limiter.policy)
        log.info("reset: pods, other tenants, faults, ledger, logs, request counts and rate windows cleared")

    async def aclose(self) -> None:
        async with self._lock:
            await self.runner.aclose()

