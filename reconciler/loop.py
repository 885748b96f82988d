"""The reconcile loop: observe RunPod, read the store, ``plan``, act. One pass at a time.

APScheduler runs a pass every ``reconcile_interval_s``; ``wake()`` (a lease created or released, an admin
action) runs one at once. A wake that arrives during a pass makes the pass run again when it ends, so no
event is lost and passes never overlap.

Observation comes first and must succeed: a pass that cannot list RunPod plans nothing (planning on an
empty list would take every pod for vanished). Pods that RunPod reports RUNNING with a mapped port are
probed on ``GET /health``; only a 200 with ``status: ok`` makes them Ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .actuator import Actuator, PodTemplate
from .domain import (
    GPU_PHASES,
    POD_NAME_PREFIX,
    Desired,
    LeaseState,
    Observed,
    ObservedPod,
    PodPhase,
    PodRole,
    Policy,
    Tuning,
)
from .metrics import ControllerMetrics
from .planning import find_orphans, plan
from .provider import Provider, ProviderError, ProviderPod
from .rates import CONTAINER_DISK_RATE, HOURS_PER_MONTH, VOLUME_RUNNING_RATE, VOLUME_STOPPED_RATE
from .schedule import warm_target
from .store import Store

log = logging.getLogger(__name__)
Clock = Callable[[], float]



class Controller:
    def __init__(
        self, store: Store, provider: Provider, *, template: PodTemplate, default_policy: Policy,
        tuning: Tuning, metrics: ControllerMetrics, interval_s: float = 5.0, health_timeout_s: float = 2.0,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.provider = provider
        self.template = template
        self.default_policy = default_policy
        self.usd_per_hour = {"gpu": 0.0, "storage": 0.0}  # the rates as of the last pass (``/v1/cost``)
        self.tuning = tuning
        self.metrics = metrics
        self.interval_s = interval_s
        self.min_pass_gap_s = min(0.25, interval_s)
        self.clock = clock
        self.prices: dict[str, float] = {}
        self.actuator = Actuator(store, provider, template, tuning, metrics, self.prices, clock)
        self.orphans_seen: dict[str, float] = {}
        self.lease_changed = asyncio.Condition()
        self.last_pass_ok: float | None = None
        self.last_error: str = ""
        self._http = httpx.AsyncClient(timeout=health_timeout_s)
        # Few probes at once: each costs the event loop ~1 ms, and a burst of them queues API requests behind.
        # Not too few either: unreachable pods hold a slot for health_timeout_s each.
        self._probe_limit = asyncio.Semaphore(8)
        self._healthy_seen: dict[tuple[str, str, int], float] = {}  # (runpod id, host, port) -> last 200
        self._lock = asyncio.Lock()
        self._dirty = False
        self._scheduler: AsyncIOScheduler | None = None
        self._last_accounted: float | None = None

    # -- lifecycle
    async def start(self) -> None:
        await self.store.get_policy(self.default_policy)  # writes the defaults to a new database
        # Read at scrape time: the schedule's target changes with the clock, not only when a pass runs.
        self.metrics.warm_target.set_function(lambda: warm_target(self.policy.warm_schedule, self.clock()))
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_job(
            self._scheduled_pass, "interval", seconds=self.interval_s, id="reconcile", max_instances=1,
            coalesce=True, next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        async with self._lock:  # let a running pass finish its writes
            pass
        await self._http.aclose()

    @property
    def policy(self) -> Policy:
        """The stored policy (the store keeps it in memory)."""
        return self.store.policy or self.default_policy

    def exclusive(self) -> asyncio.Lock:
        """Held for a whole pass; admin overrides take it so they never act on a pod mid-pass."""
        return self._lock

    def wake(self) -> None:
        """Run a pass now (or right after the current one)."""
        self._dirty = True
        if self._scheduler is not None and not self._lock.locked():
            job = self._scheduler.get_job("reconcile")
            if job is not None:
                job.modify(next_run_time=datetime.now(UTC))

    async def _scheduled_pass(self) -> None:
        await self.reconcile_once()  # a pass never raises (``_pass``); APScheduler would log it if it did

    # -- one pass
    async def reconcile_once(self) -> list:
        """Run passes until no wake is outstanding; returns the actions of the last pass."""
        async with self._lock:
            actions: list = []
            for attempt in range(5):  # a wake during a pass runs it again, but never forever
                if attempt:
                    # Under a burst of wakes, passes would run back to back and starve the API; pending leases
                    # lose nothing by a short wait (the warm path is served inside the request).
                    await asyncio.sleep(self.min_pass_gap_s)
                self._dirty = False
                actions = await self._pass()
                if not self._dirty:
                    break
            return actions

    async def _pass(self) -> list:
        """One pass. A failed pass is counted (``harper_reconcile_total{result="error"}``) and kept for
        ``/readyz`` and ``POST /v1/reconcile``; the next pass starts from observation again."""
        started = time.perf_counter()
        try:
            now, actions = await self._observe_plan_act()
        except ProviderError as e:  # listing RunPod; every other provider call handles its own errors
            return self._failed(f"listing RunPod failed: {type(e).__name__}: {e}")
        except Exception as e:
            log.exception("reconcile pass failed")
            return self._failed(f"{type(e).__name__}: {e}")
        self.metrics.reconcile.labels(result="ok").inc()
        self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        self.last_pass_ok, self.last_error = now, ""
        return actions

    def _failed(self, error: str) -> list:
        self.metrics.reconcile.labels(result="error").inc()
        self.last_error = error
        log.warning("reconcile pass failed: %s", error)
        return []

    async def _observe_plan_act(self) -> tuple[float, list]:
        listed = await self.provider.list_pods(POD_NAME_PREFIX)
        suspect = {pod.runpod_id for pod in await self.store.live_pods() if pod.unhealthy_since is not None}
        probes = await asyncio.gather(*(self._probe(p, cached=p.id not in suspect) for p in listed))
        observed = Observed({o.name: o for o in probes})
        now = self.clock()  # after observing: the decisions are about the state read next
        desired = await self._desired(now)
        for orphan in find_orphans(desired, observed):
            if orphan.runpod_id not in self.orphans_seen:
                self.orphans_seen[orphan.runpod_id] = now
                self.metrics.orphans.labels(action="seen").inc()
                log.warning("unknown pod %s (%s) has our prefix: terminating after %.0fs unless adopted",
                            orphan.name, orphan.runpod_id, self.tuning.orphan_grace_s)
        listed_ids = {p.id for p in listed}
        for runpod_id in list(self.orphans_seen):
            if runpod_id not in listed_ids:
                del self.orphans_seen[runpod_id]
        for key in [k for k in self._healthy_seen if k[0] not in listed_ids]:
            del self._healthy_seen[key]
        # plan() is pure CPU; in a thread the GIL still switches every few ms, so API requests keep flowing
        # while thousands of leases are planned.
        actions = await asyncio.to_thread(plan, desired, observed, now)
        outcome = await self.actuator.run(actions, now)
        await self._account(desired, now)
        await self.store.checkpoint()
        if outcome.leases_changed:
            async with self.lease_changed:
                self.lease_changed.notify_all()
        if outcome.wake_again:
            self._dirty = True
        return now, actions

    async def _desired(self, now: float) -> Desired:
        policy = await self.store.get_policy(self.default_policy)
        await self._refresh_prices(policy)
        unavailable = {row.gpu_type: row.unavailable_until for row in await self.store.gpu_types()}
        pods, leases = await self.store.planning_state()
        return Desired(policy, self.tuning, tuple(pods), tuple(leases), unavailable, dict(self.prices),
                       dict(self.orphans_seen))

    async def _refresh_prices(self, policy: Policy) -> None:
        for gpu_type in policy.gpu_types:
            if gpu_type in self.prices:
                continue
            try:
                self.prices[gpu_type] = await self.provider.gpu_price(gpu_type)
                await self.store.set_gpu_type(gpu_type, price_per_hr=self.prices[gpu_type])
            except ProviderError as e:
                log.warning("no price for %s: %s", gpu_type, e)

    async def _probe(self, pod: ProviderPod, cached: bool = True) -> ObservedPod:
        """``GET /health`` on a running pod. A pod found healthy is not asked again within one interval, so
        the extra passes that lease events trigger do not re-probe every pod; a pod marked unhealthy (a
        failed probe, or a client reporting it unreachable) is always asked (``cached=False``)."""
        healthy = False
        if pod.desired_status == "RUNNING" and pod.endpoint_host and pod.endpoint_port:
            key = (pod.id, pod.endpoint_host, pod.endpoint_port)
            now = time.monotonic()
            if cached and now - self._healthy_seen.get(key, -1e9) < self.interval_s:
                healthy = True
            else:
                async with self._probe_limit:
                    try:
                        response = await self._http.get(f"http://{pod.endpoint_host}:{pod.endpoint_port}/health")
                        healthy = response.status_code == 200 and response.json().get("status") == "ok"
                    except (httpx.HTTPError, ValueError, AttributeError):
                        healthy = False
                if healthy:
                    self._healthy_seen[key] = now
                else:
                    self._healthy_seen.pop(key, None)
        return ObservedPod(
            runpod_id=pod.id, name=pod.name, desired_status=pod.desired_status, gpu_type=pod.gpu_display_name,
            cost_per_hr=pod.cost_per_hr, endpoint_host=pod.endpoint_host, endpoint_port=pod.endpoint_port,
            healthy=healthy,
        )

    async def _account(self, desired: Desired, now: float) -> None:
        """Spend and usage since the last pass, and the gauges. The state read at the start of this pass is
        the state the pods were in during the interval being billed."""
        rows = desired.pods
        leased = {lease.pod_id for lease in desired.leases if lease.state == LeaseState.READY}
        dt = 0.0 if self._last_accounted is None else min(max(0.0, now - self._last_accounted), 60.0)
        self._last_accounted = now
        spend: dict[str, tuple[float, float]] = {}
        gpu_rate = storage_rate = 0.0
        standby_ready = 0
        self.metrics.pods.clear()
        counts: dict[tuple[str, str, str], int] = {}
        for row in rows:
            phase = row.phase
            key = (row.role.value, row.phase.value, row.gpu_type)
            counts[key] = counts.get(key, 0) + 1
            if phase in GPU_PHASES and row.runpod_id:
                gpu_rate += row.cost_per_hr
                storage = (self.template.volume_gb * VOLUME_RUNNING_RATE
                           + self.template.container_disk_gb * CONTAINER_DISK_RATE) / HOURS_PER_MONTH
                usage = "leased" if row.id in leased else "idle"
                self.metrics.gpu_seconds.labels(usage=usage).inc(dt)
                spend[f"gpu:{row.id}"] = (row.cost_per_hr * dt / 3600.0, dt)
            elif phase == PodPhase.STOPPED:
                storage = self.template.volume_gb * VOLUME_STOPPED_RATE / HOURS_PER_MONTH
                if row.role == PodRole.STANDBY and row.was_ready and not row.cordoned:
                    standby_ready += 1
            else:
                continue
            storage_rate += storage
            spend[f"storage:{row.id}"] = (storage * dt / 3600.0, dt)
        for (role, phase, gpu_type), count in counts.items():
            self.metrics.pods.labels(role=role, state=phase, gpu_type=gpu_type).set(count)
        self.usd_per_hour = {"gpu": gpu_rate, "storage": storage_rate}
        for kind, rate in self.usd_per_hour.items():
            self.metrics.cost_per_hour.labels(kind=kind).set(rate)
        self.metrics.cost_total.labels(kind="gpu").inc(sum(v for k, (v, _) in spend.items() if k[0] == "g"))
        self.metrics.cost_total.labels(kind="storage").inc(sum(v for k, (v, _) in spend.items() if k[0] == "s"))
        self.metrics.standby_ready.set(standby_ready)
        if dt > 0:
            await self.store.add_spend(spend)
        for state, count in (await self.store.lease_counts()).items():
            self.metrics.leases.labels(state=state).set(count)
        self.metrics.leases_queued.set(await self.store.queue_length())
