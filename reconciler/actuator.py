"""Carries out planned actions through the store and the provider, and records what happened.

It never decides: every choice was made by ``planning.plan``. What it adds is the order that keeps crashes
harmless (the intent row is committed before the create call; a stop is recorded only if no lease holds
the pod, in the same statement) and the bookkeeping of outcomes: events, per-pod backoff, GPU types
marked out of stock, leases put back in the queue when their pod will not come.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .domain import POD_NAME_PREFIX, PodPhase, PodRole, Tuning
from .metrics import ControllerMetrics
from .planning import (
    PROVIDER_ACTIONS,
    Action,
    AssignLease,
    CreatePod,
    EndLease,
    GrantLease,
    NoteLease,
    RequeueLease,
    ResumePod,
    StopPod,
    TerminateOrphan,
    TerminatePod,
    UpdatePod,
)
from .provider import (
    BalanceTooLow,
    CapacityError,
    GpuTypeDenied,
    HostGpuBusy,
    NotFound,
    PodSpec,
    Provider,
    ProviderError,
)
from .store import SlotTaken, Store
from .tables import PodRow

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 300.0
LOG_TAIL_LINES = 20  # read from a failed pod's log into its event


@dataclass
class PodTemplate:
    """What every pod is created with (from settings)."""

    image: str
    cloud_type: str = "SECURE"
    volume_gb: int = 20
    container_disk_gb: int = 20


@dataclass
class Outcome:
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    leases_changed: bool = False
    wake_again: bool = False  # something failed that the next pass can route around at once
    balance_low: str = ""  # RunPod refused for lack of funds: no create or resume will succeed for now

    def event(self, now: float, obj: str, reason: str, message: str) -> None:
        self.events.append((now, obj, reason, message))
        log.info("%s %s: %s", obj, reason, message)


class Actuator:
    def __init__(
        self, store: Store, provider: Provider, template: PodTemplate, tuning: Tuning,
        metrics: ControllerMetrics, prices: dict[str, float], clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # lease grants are stamped when written, not when planned
        self.store = store
        self.provider = provider
        self.template = template
        self.tuning = tuning
        self.metrics = metrics
        self.prices = prices

    async def run(self, actions: list[Action], now: float) -> Outcome:
        out = Outcome()
        for action in actions:
            if not isinstance(action, PROVIDER_ACTIONS):
                await self._record(action, now, out)
        calls = [a for a in actions if isinstance(a, PROVIDER_ACTIONS)]
        results = await asyncio.gather(*(self._call(a, now, out) for a in calls), return_exceptions=True)
        for action, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                log.error("action %s failed unexpectedly", action, exc_info=result)
                out.event(now, _obj(action), "ActionError", f"{type(result).__name__}: {result}")
        await self.store.add_events(out.events)
        return out

    # -- database-only actions
    async def _record(self, action: Action, now: float, out: Outcome) -> None:
        match action:
            case UpdatePod(pod_id, changes, reason):
                row = await self.store.get_pod(pod_id)
                old_phase = row.phase if row else None
                row = await self.store.update_pod(pod_id, changes)
                if row is not None and row.phase != old_phase:
                    out.event(now, f"pod/{pod_id}", f"Phase{row.phase.title()}", f"{old_phase} -> {row.phase}"
                              + (f": {reason}" if reason else ""))
            case AssignLease(lease_id, pod_id, slot, path, ready):
                try:
                    ok = await self.store.assign_lease(lease_id, pod_id, slot, path, ready, self.clock())
                except SlotTaken:
                    ok = False
                if ok:
                    out.leases_changed = True
                    out.event(now, f"lease/{lease_id}", "Assigned", f"pod {pod_id} slot {slot} via {path}")
                    if ready:
                        await self._granted(lease_id, now)
            case GrantLease(lease_id):
                if await self.store.grant_lease(lease_id, self.clock()):
                    out.leases_changed = True
                    out.event(now, f"lease/{lease_id}", "Ready", "its pod is Ready")
                    await self._granted(lease_id, now)
            case RequeueLease(lease_id, reason):
                if await self.store.requeue_lease(lease_id, reason):
                    out.leases_changed = True
                    out.event(now, f"lease/{lease_id}", "Requeued", reason)
            case NoteLease(lease_id, reason):
                if await self.store.note_lease(lease_id, reason):
                    out.event(now, f"lease/{lease_id}", "Waiting", reason)
            case EndLease(lease_id, state, reason):
                await self.store.end_lease(lease_id, state, reason, now)
                out.leases_changed = True
                out.event(now, f"lease/{lease_id}", state.value.title(), reason)

    async def _granted(self, lease_id: str, now: float) -> None:
        lease = await self.store.get_lease(lease_id)
        if lease is not None and lease.path and lease.ready_at:
            self.metrics.lease_wait.labels(path=lease.path).observe(max(0.0, lease.ready_at - lease.created_at))

    # -- provider actions
    async def _call(self, action: Action, now: float, out: Outcome) -> None:
        match action:
            case CreatePod():
                await self._create(action, now, out)
            case ResumePod():
                await self._resume(action, now, out)
            case StopPod(pod_id, reason, make_standby):
                row = await self.store.get_pod(pod_id)
                if row is None or row.runpod_id is None:
                    return
                if not await self.store.begin_stop(pod_id, now, make_standby, reason=reason):
                    return  # a lease arrived in the meantime
                out.event(now, f"pod/{pod_id}", "Stopping", reason)
                try:
                    await self.provider.stop_pod(row.runpod_id)
                except ProviderError as e:
                    await self._backoff(row, now, out, "StopFailed", e)
            case TerminatePod(pod_id, reason, logs):
                row = await self.store.get_pod(pod_id)
                if row is None:
                    return
                if row.runpod_id is None:
                    await self.store.update_pod(pod_id, [("phase", PodPhase.FAILED), ("reason", reason)])
                    return
                message = reason
                if logs:  # before the terminate: the log goes with the pod
                    tail = await self._log_tail(row.runpod_id)
                    if tail:  # the server's own last words say more than RunPod's "container exited"
                        said = [line for line in tail if not line.startswith("[system] ")] or tail
                        reason = f"{reason}: {said[-1]}"
                        message = f"{message}; last log lines: " + " | ".join(tail)
                await self.store.update_pod(pod_id, [("phase", PodPhase.TERMINATING), ("phase_since", now),
                                                     ("reason", reason[:300])])
                out.event(now, f"pod/{pod_id}", "PodFailed" if logs else "Terminating", message[:2000])
                try:
                    await self.provider.terminate_pod(row.runpod_id)
                except NotFound:
                    await self.store.update_pod(pod_id, [("phase", PodPhase.TERMINATED)])
                except ProviderError as e:
                    await self._backoff(row, now, out, "TerminateFailed", e)
            case TerminateOrphan(runpod_id, name):
                try:
                    await self.provider.terminate_pod(runpod_id)
                except NotFound:
                    pass
                except ProviderError as e:
                    out.event(now, f"runpod/{runpod_id}", "OrphanTerminateFailed", str(e))
                    return
                self.metrics.orphans.labels(action="terminated").inc()
                out.event(now, f"runpod/{runpod_id}", "OrphanTerminated", f"{name} was unknown to the controller")

    async def _create(self, action: CreatePod, now: float, out: Outcome) -> None:
        pod_id = secrets.token_hex(6)
        row = PodRow(
            id=pod_id, role=action.role.value, phase=PodPhase.CREATING.value, gpu_type=action.gpu_type,
            cost_per_hr=self.prices.get(action.gpu_type, 0.0), secret=secrets.token_hex(24),
            created_at=now, phase_since=now, reason=action.reason,
        )
        try:
            await self.store.add_pod(row, action.lease_id, now)  # the intent, committed before the call
        except SlotTaken:
            return
        obj = f"pod/{pod_id}"
        out.event(now, obj, "Creating", f"{action.gpu_type} as {action.role}: {action.reason}")
        if action.lease_id:
            out.leases_changed = True
        env = {"GPU_SERVER_SECRET": row.secret, "HARPER_POD_ID": pod_id}
        spec = PodSpec(
            name=POD_NAME_PREFIX + pod_id, gpu_type=action.gpu_type,
            image=self.template.image, env=env, cloud_type=self.template.cloud_type,
            volume_gb=self.template.volume_gb, container_disk_gb=self.template.container_disk_gb,
        )
        try:
            created = await self.provider.create_pod(spec)
        except ProviderError as e:
            await self.store.update_pod(pod_id, [("phase", PodPhase.FAILED), ("reason", str(e)[:300])])
            if isinstance(e, CapacityError):
                until = now + self.tuning.out_of_stock_s
                await self.store.set_gpu_type(action.gpu_type, unavailable_until=until)
                kind = "denied" if isinstance(e, GpuTypeDenied) else "out_of_stock"
                self.metrics.capacity_errors.labels(gpu_type=action.gpu_type, reason=kind).inc()
                out.event(now, obj, "OutOfStock",
                          f"{action.gpu_type} skipped for {self.tuning.out_of_stock_s:.0f}s: {e}")
            else:
                self._note_balance(e, out)
                out.event(now, obj, "CreateFailed", f"{type(e).__name__}: {e}")
            if action.lease_id and await self.store.requeue_lease(action.lease_id, f"create failed: {e}"):
                out.leases_changed = True
            out.wake_again = True
            return
        await self.store.update_pod(
            pod_id, [("runpod_id", created.id), ("phase", PodPhase.STARTING), ("phase_since", now)]
        )
        out.event(now, obj, "Created", f"RunPod pod {created.id}")

    async def _resume(self, action: ResumePod, now: float, out: Outcome) -> None:
        row = await self.store.get_pod(action.pod_id)
        if row is None or row.runpod_id is None:
            return
        try:
            if not await self.store.begin_resume(action.pod_id, action.lease_id, now):
                return
        except SlotTaken:
            return
        obj = f"pod/{action.pod_id}"
        out.event(now, obj, "Resuming", action.reason)
        if action.lease_id:
            out.leases_changed = True
        try:
            await self.provider.resume_pod(row.runpod_id)
        except ProviderError as e:
            if isinstance(e, HostGpuBusy):
                self.metrics.capacity_errors.labels(gpu_type=row.gpu_type, reason="host_gpu_busy").inc()
            self._note_balance(e, out)
            await self.store.update_pod(action.pod_id, [
                ("phase", PodPhase.STOPPED), ("phase_since", now), ("role", PodRole.STANDBY),
                ("backoff_until", now + self.tuning.resume_backoff_s), ("failures", row.failures + 1),
                ("reason", str(e)[:300]),
            ])
            out.event(now, obj, "ResumeFailed", f"{type(e).__name__}: {e}")
            if action.lease_id and await self.store.requeue_lease(action.lease_id, f"resume failed: {e}"):
                out.leases_changed = True
            out.wake_again = True

    def _note_balance(self, err: ProviderError, out: Outcome) -> None:
        if isinstance(err, BalanceTooLow):
            out.balance_low = str(err)[:200]

    async def _log_tail(self, runpod_id: str) -> list[str]:
        try:
            lines = await self.provider.pod_logs(runpod_id, LOG_TAIL_LINES)
        except ProviderError as e:
            log.info("could not read the log of %s: %s", runpod_id, e)
            return []
        return [line.strip()[:300] for line in lines if line.strip()]

    async def _backoff(self, row: PodRow, now: float, out: Outcome, reason: str, err: ProviderError) -> None:
        failures = row.failures + 1
        delay = min(MAX_BACKOFF_S, 2.0**failures)
        await self.store.update_pod(row.id, [("failures", failures), ("backoff_until", now + delay)])
        out.event(now, f"pod/{row.id}", reason, f"{type(err).__name__}: {err} (next try in {delay:.0f}s)")


def _obj(action: Action) -> str:
    for attr in ("pod_id", "lease_id", "runpod_id"):
        value = getattr(action, attr, None)
        if value:
            return f"{attr.removesuffix('_id')}/{value}"
    return type(action).__name__
