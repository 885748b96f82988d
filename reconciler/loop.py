"""The reconcile loop: observe RunPod, read the store, ``plan``, act. One pass at a time.

APScheduler runs a pass every ``reconcile_interval_s``; ``wake()`` (a lease created or released, an admin
action) runs one at once. A wake that arrives during a pass makes the pass run again when it ends, so no
event is lost and passes never overlap.

Observation comes first and must succeed: a pass that cannot list RunPod plans nothing (planning on an
empty list would take every pod for vanished). Pods that RunPod reports RUNNING with a mapped port are
probed on ``GET /health``; only a 200 with ``status: ok`` makes them Ready.

RunPod's rate-limit quota (``provider.budget``) paces the loop: passes run no closer than the spacing that
lasts the quota until it resets, a pass makes no more calls than the quota allows, and while a window is spent
no pass runs at all (counted as ``harper_reconcile_total{result="throttled"}``). The lease API never waits
for it: the warm path and the queue need no RunPod call. The GPU catalog (prices, stock) is read at most every
``catalog_ttl_s``; what RunPod billed is read every ``billing_interval_s`` beside the controller's estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .actuator import Actuator, PodTemplate
from .claim import STALE_AFTER_RENEWALS
from .domain import (
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
from .provider import Provider, ProviderError, ProviderPod, RateLimited
from .rates import CONTAINER_DISK_RATE, HOURS_PER_MONTH, VOLUME_RUNNING_RATE, VOLUME_STOPPED_RATE
from .schedule import warm_target
from .store import Store

log = logging.getLogger(__name__)
Clock = Callable[[], float]

BALANCE_RETRY_S = 300.0  # after RunPod's low-balance answer, no create or resume is tried for this long
STOCK_LEVELS = {"NONE": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3}
# What RunPod bills once the controller's calls are carried out: GPU and running storage from a create or
# resume until a stop or terminate; stopped storage (volume only) from a stop; nothing once terminated.
BILLED_RUNNING = frozenset({PodPhase.CREATING, PodPhase.STARTING, PodPhase.READY})
BILLED_STOPPED = frozenset({PodPhase.STOPPING, PodPhase.STOPPED})


class Controller:
    def __init__(
        self, store: Store, provider: Provider, *, template: PodTemplate, default_policy: Policy,
        tuning: Tuning, metrics: ControllerMetrics, interval_s: float = 5.0, health_timeout_s: float = 2.0,
        clock: Clock = time.time, catalog_ttl_s: float = 60.0, billing_interval_s: float = 300.0,
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
        self.stock: dict[str, str] = {}  # gpu type -> RunPod's stock level, where the API reports one
        self.catalog_ttl_s = catalog_ttl_s
        self._catalog_at = -1e18
        self.billing_interval_s = billing_interval_s
        self._billing_at = -1e18
        self.billed: dict | None = None  # what RunPod billed our pods (``/v1/cost``); None: not known (yet)
        self._billed_seen: dict[str, float] | None = None  # totals at the last poll, for the counters
        self._blocked_until = 0.0
        self._blocked_reason = ""
        self._not_before = 0.0  # monotonic: no pass before this (rate-limit pacing)
        self._rates: dict[str, tuple[float, str]] = {}  # spend key -> ($/h, usage), in force since the last pass
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
        self.stopping = False  # shutdown has begun: no pass starts, long polls answer at once
        self._pass_task: asyncio.Task | None = None
        self._dirty = False
        self._scheduler: AsyncIOScheduler | None = None
        self._last_accounted: float | None = None

    # -- lifecycle
    async def start(self) -> None:
        await self.store.get_policy(self.default_policy)  # writes the defaults to a new database
        # Read at scrape time: the schedule's target changes with the clock, not only when a pass runs.
        self.metrics.warm_target.set_function(lambda: warm_target(self.policy.warm_schedule, self.clock()))
        await self._forgive_downtime()
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_job(
            self._scheduled_pass, "interval", seconds=self.interval_s, id="reconcile", max_instances=1,
            coalesce=True, next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()

    async def _forgive_downtime(self) -> None:
        """Before the first pass: leases must not expire for heartbeats that found no controller. After a controller
        died holding the database long enough for a client heartbeating every TTL/3 to miss its window, every active
        lease gets one TTL from now, as a Consul leader failover resets session TTLs (a client that is gone loses
        its lease one TTL later). Shorter gaps, such as a crash loop's quick restarts, change nothing: resetting
        TTLs on every restart would keep the leases of vanished clients, and their pods, for as long as it lasted.
        How long no controller ran is known from the lock row the dead one left (at least since its last renewal
        plus one renewal period); a controller that stopped cleanly released the row, and its gap counts as short."""
        gone = self.store.took_over
        if gone is None:
            return
        now = self.clock()
        down_at_least = now - gone.renewed_at - gone.stale_after_s / STALE_AFTER_RENEWALS
        if down_at_least <= self.tuning.lease_ttl_s / 3:
            return
        extended = await self.store.extend_leases(now + self.tuning.lease_ttl_s)
        log.warning("no controller ran for at least %.0fs: %d active leases given one TTL (%.0fs) from now",
                    down_at_least, extended, self.tuning.lease_ttl_s)

    async def begin_shutdown(self) -> None:
        """No pass starts from now on, and every long poll answers at once (the server can then close)."""
        self.stopping = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()  # no new pass; one in flight gets its grace in ``stop``
        async with self.lease_changed:
            self.lease_changed.notify_all()

    async def stop(self, grace_s: float = 1.5) -> None:
        """Let a running pass finish for ``grace_s``, then cancel it: that is safe at any point, as a SIGKILL
        is (every create's intent is written before the call; the next start observes and adopts)."""
        await self.begin_shutdown()
        try:
            async with asyncio.timeout(grace_s), self._lock:
                pass
        except TimeoutError:
            if self._pass_task is not None and not self._pass_task.done():
                log.warning("shutdown: cancelling the reconcile pass in flight (safe; the next start resumes it)")
                self._pass_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(self._pass_task), 1.0)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
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
                delay = max(0.0, self._not_before - time.monotonic())
                job.modify(next_run_time=datetime.fromtimestamp(time.time() + delay, UTC))

    async def _scheduled_pass(self) -> None:
        if time.monotonic() < self._not_before:
            return  # paced by RunPod's rate-limit quota: a later tick (or a wake) runs it
        try:
            await self.reconcile_once()  # a pass never raises (``_pass``); APScheduler would log it if it did
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            log.info("reconcile pass cancelled by the shutdown")

    # -- one pass
    async def reconcile_once(self) -> list:
        """Run passes until no wake is outstanding; returns the actions of the last pass."""
        async with self._lock:
            self._pass_task = asyncio.current_task()
            actions: list = []
            for attempt in range(5):  # a wake during a pass runs it again, but never forever
                if self.stopping:
                    break
                # Under a burst of wakes, passes would run back to back and starve the API; pending leases
                # lose nothing by a short wait (the warm path is served inside the request).
                gap = self.min_pass_gap_s if attempt else 0.0
                await asyncio.sleep(max(gap, min(60.0, self._not_before - time.monotonic())))
                self._dirty = False
                actions = await self._pass()
                if not self._dirty:
                    break
            return actions

    async def _pass(self) -> list:
        """One pass. A failed pass is counted (``harper_reconcile_total{result="error"}``) and kept for
        ``/readyz`` and ``POST /v1/reconcile``; the next pass starts from observation again."""
        started = time.perf_counter()
        wait = self.provider.budget.wait_s()
        if wait > 0:
            return self._throttled(wait)
        try:
            now, actions = await self._observe_plan_act()
        except RateLimited as e:
            return self._throttled(e.retry_after_s or 1.0)
        except ProviderError as e:  # listing RunPod; every other provider call handles its own errors
            return self._failed(f"listing RunPod failed: {type(e).__name__}: {e}")
        except Exception as e:
            log.exception("reconcile pass failed")
            return self._failed(f"{type(e).__name__}: {e}")
        self.metrics.reconcile.labels(result="ok").inc()
        self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        self.last_pass_ok, self.last_error = now, ""
        self._pace()
        return actions

    def _pace(self) -> None:
        """No pass before the quota's pace allows one more call (plus the one this pass may have to wait)."""
        budget = self.provider.budget
        for window, state in budget.as_dict().items():
            self.metrics.quota_remaining.labels(window=window).set(state["remaining"])
        pace = budget.pace_s()
        self._not_before = time.monotonic() + pace if pace > self.min_pass_gap_s else 0.0

    def _throttled(self, wait: float) -> list:
        """RunPod's quota is spent: no call goes out until it resets. Not a failure: nothing is wrong."""
        self.metrics.reconcile.labels(result="throttled").inc()
        self._not_before = time.monotonic() + wait
        log.info("RunPod rate-limit quota spent: next pass in %.1fs", wait)
        self._dirty = True  # whatever woke this pass still needs one
        return []

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
        await self._refresh_catalog(now)
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
        if outcome.balance_low:
            self._blocked_until = now + BALANCE_RETRY_S
            self._blocked_reason = f"RunPod balance too low: {outcome.balance_low}"
            log.error("%s: no pod is created or resumed for %.0fs; add funds", self._blocked_reason, BALANCE_RETRY_S)
        await self._account(now)
        await self._poll_billing(now)
        await self.store.checkpoint()
        if outcome.leases_changed:
            async with self.lease_changed:
                self.lease_changed.notify_all()
        if outcome.wake_again:
            self._dirty = True
        return now, actions

    async def _desired(self, now: float) -> Desired:
        policy = await self.store.get_policy(self.default_policy)
        unavailable = {row.gpu_type: row.unavailable_until for row in await self.store.gpu_types()}
        pods, leases = await self.store.planning_state()
        return Desired(
            policy, self.tuning, tuple(pods), tuple(leases), unavailable, dict(self.prices), dict(self.orphans_seen),
            stock=dict(self.stock), provider_budget=self.provider.budget.allowance(),
            creates_blocked=self._blocked_reason if now < self._blocked_until else "",
        )

    async def _refresh_catalog(self, now: float) -> None:
        """Prices and stock of the policy's GPU types: when one has no price yet, and every ``catalog_ttl_s``
        where the API reports stock (GraphQL does not, and its prices do not move: read once)."""
        types = self.policy.gpu_types
        missing = [t for t in types if t not in self.prices]
        stale = bool(self.stock) and now - self._catalog_at >= self.catalog_ttl_s
        if not missing and not stale:
            return
        if (self.provider.budget.allowance() or 1) < 1:
            return  # observation first: the catalog can wait for the quota
        try:
            offers = await self.provider.gpu_catalog(list(types) if stale else missing, self.template.cloud_type)
        except ProviderError as e:
            log.warning("GPU catalog not read: %s: %s", type(e).__name__, e)
            return
        self._catalog_at = now
        for gpu_type, offer in offers.items():
            if self.prices.get(gpu_type) != offer.price_per_hr:
                await self.store.set_gpu_type(gpu_type, price_per_hr=offer.price_per_hr)
            self.prices[gpu_type] = offer.price_per_hr
            if offer.stock is not None:
                self.stock[gpu_type] = offer.stock
                self.metrics.gpu_stock.labels(gpu_type=gpu_type).set(STOCK_LEVELS.get(offer.stock, 0))
        for gpu_type in missing:
            if gpu_type not in offers:
                log.warning("RunPod's catalog does not offer %s on %s cloud", gpu_type, self.template.cloud_type)

    async def _poll_billing(self, now: float) -> None:
        """What RunPod billed our pods, every ``billing_interval_s``, beside the estimate. The counters count
        from this process's first poll, as the estimate's do; ``self.billed`` holds the whole lifetime."""
        if now - self._billing_at < self.billing_interval_s or (self.provider.budget.allowance() or 1) < 1:
            return
        rows = await self.store.all_pods()
        ours = {row.runpod_id: row.id for row in rows if row.runpod_id}
        if not ours:
            self._billing_at = now
            self._billed_seen = self._billed_seen or {"gpu": 0.0, "storage": 0.0}
            return
        try:
            records = await self.provider.billing(min(row.created_at for row in rows))
        except ProviderError as e:
            log.warning("RunPod billing not read: %s: %s", type(e).__name__, e)
            return
        self._billing_at = now
        if records is None:
            return  # the API has no billing records (GraphQL)
        by_pod = {ours[r.runpod_id]: {"gpu": r.gpu_usd, "storage": r.storage_usd} for r in records
                  if r.runpod_id in ours}
        totals = {kind: sum(p[kind] for p in by_pod.values()) for kind in ("gpu", "storage")}
        if self._billed_seen is not None:
            for kind, total in totals.items():
                if total > self._billed_seen.get(kind, 0.0):
                    self.metrics.cost_billed.labels(kind=kind).inc(total - self._billed_seen.get(kind, 0.0))
        self._billed_seen = totals
        self.billed = {"as_of": now, "totals": totals, "by_pod": by_pod}

    async def _probe(self, pod: ProviderPod, cached: bool = True) -> ObservedPod:
        """``GET /health`` on a running pod. A pod found healthy is not asked again within one interval, so
        the extra passes that lease events trigger do not re-probe every pod; a pod marked unhealthy (a
        failed probe, or a client reporting it unreachable) is always asked (``cached=False``)."""
        healthy = False
        if pod.desired_status == "RUNNING" and pod.endpoint_host and pod.endpoint_port and not pod.failed:
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
            healthy=healthy, failed=pod.failed,
        )

    async def _account(self, now: float) -> None:
        """Spend and usage since the last pass, and the gauges. RunPod bills from the moment a create or resume
        is carried out until a stop or terminate is, so the rates charged for the interval since the last pass
        are those in force when that pass ended (after its actions); this pass's state sets the next ones."""
        # Timed now, after the pass's calls, not at the pass's start: a create or a stop changed RunPod's bill
        # when it was carried out, a moment ago, and the rates change here.
        changed_at = self.clock()
        dt = 0.0 if self._last_accounted is None else max(0.0, changed_at - self._last_accounted)
        self._last_accounted = changed_at
        if dt > 0:
            spend = {key: (rate * dt / 3600.0, dt) for key, (rate, _) in self._rates.items()}
            for key, (rate, usage) in self._rates.items():
                if key.startswith("gpu:") and rate > 0:
                    self.metrics.gpu_seconds.labels(usage=usage).inc(dt)
            for kind in ("gpu", "storage"):
                self.metrics.cost_total.labels(kind=kind).inc(
                    sum(usd for key, (usd, _) in spend.items() if key.startswith(kind + ":")))
            await self.store.add_spend(spend, day=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d"))
        leases = await self.store.active_leases()
        leased = {lease.pod_id for lease in leases if lease.state == LeaseState.READY}
        self._rates = {}
        standby_ready = 0
        counts: dict[tuple[str, str, str], int] = {}
        running_storage = (self.template.volume_gb * VOLUME_RUNNING_RATE
                           + self.template.container_disk_gb * CONTAINER_DISK_RATE) / HOURS_PER_MONTH
        stopped_storage = self.template.volume_gb * VOLUME_STOPPED_RATE / HOURS_PER_MONTH
        for row in await self.store.live_pods():
            key = (row.role, row.phase, row.gpu_type)
            counts[key] = counts.get(key, 0) + 1
            if not row.runpod_id:
                continue
            if row.phase in BILLED_RUNNING:
                usage = "leased" if row.id in leased else "idle"
                self._rates[f"gpu:{row.id}"] = (row.cost_per_hr, usage)
                self._rates[f"storage:{row.id}"] = (running_storage, usage)
            elif row.phase in BILLED_STOPPED:
                self._rates[f"storage:{row.id}"] = (stopped_storage, "")
                if (row.phase == PodPhase.STOPPED and row.role == PodRole.STANDBY and row.was_ready
                        and not row.cordoned):
                    standby_ready += 1
        self.metrics.pods.clear()
        for (role, phase, gpu_type), count in counts.items():
            self.metrics.pods.labels(role=role, state=phase, gpu_type=gpu_type).set(count)
        self.usd_per_hour = {
            kind: sum(rate for key, (rate, _) in self._rates.items() if key.startswith(kind + ":"))
            for kind in ("gpu", "storage")
        }
        for kind, rate in self.usd_per_hour.items():
            self.metrics.cost_per_hour.labels(kind=kind).set(rate)
        self.metrics.standby_ready.set(standby_ready)
        counts = await self.store.lease_counts()
        for state in LeaseState:  # every state, zeros included: a gauge left alone keeps its last value
            self.metrics.leases.labels(state=state.value).set(counts.get(state.value, 0))
        self.metrics.leases_queued.set(await self.store.queue_length())
        self.metrics.set_state(self.policy, await self.store.live_pods(), self.provider.budget.as_dict())
