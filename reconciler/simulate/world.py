"""The controller's records in the simulator, and the actuator's effects on them and on the modelled RunPod.

``World`` holds what the store holds for the daemon (live pods, active leases, GPU types out of stock) and
applies ``planning``'s actions the way ``reconciler.actuator`` does: database-only actions first, in order,
then the provider calls; the same preconditions (a stop only while no lease holds the pod, a resume only of
a stopped pod, one lease per slot) and the same outcomes (a failed create marks its GPU type out of stock
and requeues the lease; a failed resume backs the pod off and requeues). It decides nothing.

It also keeps the books: every stretch of simulated time is charged to each pod by what it was doing
(``_charge``), and each lease's wait is kept by its claim path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

from ..domain import (
    ClaimPath,
    Lease,
    LeaseState,
    Pod,
    PodPhase,
    PodRole,
    Policy,
    Tuning,
    check_pod_transition,
)
from ..planning import (
    PROVIDER_ACTIONS,
    Action,
    AssignLease,
    CreatePod,
    EndLease,
    GrantLease,
    RequeueLease,
    ResumePod,
    StopPod,
    TerminatePod,
    UpdatePod,
)
from ..rates import CONTAINER_DISK_RATE, HOURS_PER_MONTH, VOLUME_RUNNING_RATE, VOLUME_STOPPED_RATE
from .model import Cloud, CloudError, CloudPod, CloudState, OutOfStock, Session

R = TypeVar("R", Pod, Lease)
_set_slot = object.__setattr__
NEVER = 1e18  # a lease's expiry: the simulated client heartbeats until it releases
KINDS = ("gpu_leased", "gpu_idle", "gpu_booting", "storage_running", "storage_stopped")


@dataclass
class Books:
    """Dollars and GPU seconds by kind, waits by path, and counts."""

    usd: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    gpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("leased", "idle", "booting"), 0.0))
    waits: dict[str, list[float]] = field(default_factory=dict)  # claim path -> seconds from request to ready
    failed: Counter[str] = field(default_factory=Counter)  # why sessions got no pod (pending timeout, queue full)
    sessions: int = 0
    pods_created: int = 0
    peak_gpu_pods: int = 0


class World:
    def __init__(self, policy: Policy, tuning: Tuning, cloud: Cloud, record: bool = False) -> None:
        self.policy = policy
        self.tuning = tuning
        self.cloud = cloud
        self.pods: dict[str, Pod] = {}  # live records (terminated ones leave)
        self.leases: dict[str, Lease] = {}  # active leases
        self.slots: dict[tuple[str, int], str] = {}  # (pod id, slot) -> active lease
        self.ready_on: Counter[str] = Counter()  # pod id -> ready leases on it
        self.unavailable: dict[str, float] = {}
        self.sessions: dict[str, Session] = {}  # lease id -> the session it serves
        self.releases: list[tuple[float, str]] = []  # (time, lease id) handed to the engine's queue
        self.books = Books()
        self.log: list[tuple[float, str, str, str]] | None = [] if record else None
        m = cloud.model
        self.storage_running = (m.volume_gb * VOLUME_RUNNING_RATE + m.container_disk_gb * CONTAINER_DISK_RATE) / (
            HOURS_PER_MONTH * 3600.0)
        self.storage_stopped = m.volume_gb * VOLUME_STOPPED_RATE / (HOURS_PER_MONTH * 3600.0)
        self._ids = 0
        self._gpu_pods = 0

    def event(self, now: float, obj: str, reason: str, detail: str = "") -> None:
        if self.log is not None:
            self.log.append((now, obj, reason, detail))

    # -- the books: a pod is charged up to now whenever what it does changes, and at the end
    def _charge(self, cp: CloudPod, now: float) -> None:
        last, cp.charged_at = cp.charged_at, now
        dt = now - last
        if dt <= 0:
            return
        usd = self.books.usd
        if cp.state is CloudState.EXITED:
            usd["storage_stopped"] += dt * self.storage_stopped
            return
        usd["storage_running"] += dt * self.storage_running
        booting = min(max(cp.ready_at - last, 0.0), dt)
        busy = dt - booting
        rate = cp.price / 3600.0
        gpu_s = self.books.gpu_s
        gpu_s["booting"] += booting
        usd["gpu_booting"] += booting * rate
        kind = "leased" if self.ready_on[cp.pod_id] else "idle"
        gpu_s[kind] += busy
        usd["gpu_" + kind] += busy * rate

    def _charge_pod(self, pod_id: str | None, now: float) -> None:
        pod = self.pods.get(pod_id or "")
        cp = self.cloud.pods.get(pod.runpod_id or "") if pod is not None else None
        if cp is not None:
            self._charge(cp, now)

    def _gpu(self, delta: int) -> None:
        self._gpu_pods += delta
        self.books.peak_gpu_pods = max(self.books.peak_gpu_pods, self._gpu_pods)

    def close_books(self, now: float) -> None:
        """Charge every pod up to ``now`` (the end of the simulated time)."""
        for cp in self.cloud.pods.values():
            self._charge(cp, now)

    # -- the lease API (what POST and DELETE /v1/leases do)
    def request(self, session: Session, now: float) -> Lease | None:
        """A new lease: the warm path inline if a Ready pod has a free slot, else pending (None: queue full)."""
        self.books.sessions += 1
        self._ids += 1
        lease = Lease(id=f"l{self._ids:07d}", session_id=f"s{self._ids}", state=LeaseState.PENDING,
                      created_at=now, expires_at=NEVER)
        per_pod = self.policy.sessions_per_pod
        best: tuple[int, float, Pod] | None = None
        slots = self.slots
        for pod in self.pods.values():  # busiest Ready pod with a free slot, oldest first (the store's order)
            if pod.phase is not PodPhase.READY or pod.cordoned or pod.unhealthy_since is not None:
                continue
            used = ((pod.id, 0) in slots) if per_pod == 1 else sum((pod.id, s) in slots for s in range(per_pod))
            if used < per_pod and (best is None or (-used, pod.created_at) < best[:2]):
                best = (-used, pod.created_at, pod)
        self.sessions[lease.id] = session
        if best is not None:
            pod = best[2]
            slot = next(s for s in range(per_pod) if (pod.id, s) not in self.slots)
            self.leases[lease.id] = lease
            self._place(lease.id, pod.id, slot, ClaimPath.WARM, now, ready=True)
            return self.leases[lease.id]
        if self.queued() >= self.tuning.queue_limit:
            self.books.failed["queue_full"] += 1
            del self.sessions[lease.id]
            return None
        self.leases[lease.id] = lease
        return lease

    def release(self, lease_id: str, now: float) -> bool:
        """The session ended: release its lease. Returns whether leases wait in the queue (a pass is due)."""
        if lease_id in self.leases:
            self._end(lease_id, LeaseState.RELEASED, now)
        return self.queued() > 0

    def queued(self) -> int:
        return sum(1 for lease in self.leases.values() if lease.pod_id is None)

    # -- the actuator
    def apply(self, actions: list[Action], now: float) -> bool:
        """Carry out one pass's actions. Returns whether something failed that the next pass can route around
        at once (the actuator's ``wake_again``)."""
        for action in actions:
            if not isinstance(action, PROVIDER_ACTIONS):
                self._record(action, now)
        wake = False
        for action in actions:
            if isinstance(action, PROVIDER_ACTIONS):
                wake = self._call(action, now) or wake
        return wake

    def _record(self, action: Action, now: float) -> None:
        match action:
            case UpdatePod(pod_id, changes, reason):
                self._update(pod_id, dict(changes), now, reason)
            case AssignLease(lease_id, pod_id, slot, path, ready):
                lease = self.leases.get(lease_id)
                if lease is not None and lease.state is LeaseState.PENDING and lease.pod_id is None and (
                    (pod_id, slot) not in self.slots
                ):
                    self._place(lease_id, pod_id, slot, path, now, ready)
            case GrantLease(lease_id):
                lease = self.leases.get(lease_id)
                if lease is not None and lease.state is LeaseState.PENDING and lease.pod_id is not None:
                    self._ready(lease, now)
            case RequeueLease(lease_id, reason):
                lease = self.leases.get(lease_id)
                if lease is not None and lease.state is LeaseState.PENDING:
                    self._unplace(lease)
                    self.event(now, f"lease/{lease_id}", "Requeued", reason)
            case EndLease(lease_id, state, reason):
                if lease_id in self.leases:
                    if state is LeaseState.FAILED and self.leases[lease_id].state is LeaseState.PENDING:
                        self.books.failed["pending_timeout"] += 1
                    self._end(lease_id, state, now)

    def _call(self, action: Action, now: float) -> bool:
        match action:
            case CreatePod():
                return self._create(action, now)
            case ResumePod(pod_id, lease_id, _):
                pod = self.pods.get(pod_id)
                if pod is None or pod.runpod_id is None or pod.phase is not PodPhase.STOPPED:
                    return False
                self._set(pod, phase=PodPhase.STARTING, phase_since=now, role=PodRole.SERVING)
                self._take(lease_id, pod_id, ClaimPath.STANDBY_RESUME, now)
                self.event(now, f"pod/{pod_id}", "Resuming", action.reason)
                cp = self.cloud.pods[pod.runpod_id]
                self._charge(cp, now)
                try:
                    self.cloud.resume(pod.runpod_id, now)
                    self._gpu(+1)
                except CloudError as e:
                    self._set(self.pods[pod_id], phase=PodPhase.STOPPED, phase_since=now, role=PodRole.STANDBY,
                              backoff_until=now + self.tuning.resume_backoff_s, failures=pod.failures + 1,
                              reason=str(e)[:300])
                    self.event(now, f"pod/{pod_id}", "ResumeFailed", str(e))
                    self._requeue(lease_id, now, f"resume failed: {e}")
                    return True
            case StopPod(pod_id, reason, make_standby):
                pod = self.pods.get(pod_id)
                if pod is None or pod.runpod_id is None:
                    return False
                held = any(lease.pod_id == pod_id for lease in self.leases.values())
                if held or pod.phase not in (PodPhase.READY, PodPhase.STARTING, PodPhase.STOPPING):
                    return False
                self._set(pod, phase=PodPhase.STOPPING, phase_since=now,
                          **({"role": PodRole.STANDBY} if make_standby else {}))
                self.event(now, f"pod/{pod_id}", "Stopping", reason)
                self._stop_billing(pod.runpod_id, now)
                self.cloud.stop(pod.runpod_id)
            case TerminatePod(pod_id, reason):
                pod = self.pods.get(pod_id)
                if pod is None:
                    return False
                if pod.runpod_id is None:
                    self._set(pod, phase=PodPhase.FAILED, reason=reason)
                    return False
                self._set(pod, phase=PodPhase.TERMINATING, phase_since=now, reason=reason)
                self.event(now, f"pod/{pod_id}", "Terminating", reason)
                self._stop_billing(pod.runpod_id, now)
                self.cloud.terminate(pod.runpod_id)
        return False

    def _create(self, action: CreatePod, now: float) -> bool:
        self._ids += 1
        pod = Pod(id=f"p{self._ids:07d}", role=action.role, phase=PodPhase.CREATING, gpu_type=action.gpu_type,
                  created_at=now, phase_since=now, cost_per_hr=self.cloud.model.prices.get(action.gpu_type, 0.0),
                  reason=action.reason)
        self.pods[pod.id] = pod  # the intent, written before the call
        self._take(action.lease_id, pod.id, ClaimPath.COLD_CREATE, now)
        obj = f"pod/{pod.id}"
        self.event(now, obj, "Creating", f"{action.gpu_type} as {action.role}")
        try:
            created = self.cloud.create(pod.id, action.gpu_type, now)
        except CloudError as e:
            self._set(pod, phase=PodPhase.FAILED, reason=str(e)[:300])
            if isinstance(e, OutOfStock):
                self.unavailable[action.gpu_type] = now + self.tuning.out_of_stock_s
            self.event(now, obj, "OutOfStock" if isinstance(e, OutOfStock) else "CreateFailed", str(e))
            self._requeue(action.lease_id, now, f"create failed: {e}")
            return True
        self.books.pods_created += 1
        self._gpu(+1)
        self._set(self.pods[pod.id], runpod_id=created.runpod_id, phase=PodPhase.STARTING, phase_since=now)
        self.event(now, obj, "Created", created.runpod_id)
        return False

    def _stop_billing(self, runpod_id: str, now: float) -> None:
        cp = self.cloud.pods.get(runpod_id)
        if cp is not None:
            self._charge(cp, now)
            if cp.state is CloudState.RUNNING:
                self._gpu(-1)

    # -- records
    def _set(self, pod: Pod, **changes: object) -> None:
        if "phase" in changes:
            check_pod_transition(pod.phase, changes["phase"])  # type: ignore[arg-type]
        new = _with(pod, changes)
        if new.phase is PodPhase.TERMINATED:
            self.pods.pop(pod.id, None)
        else:
            self.pods[pod.id] = new

    def _update(self, pod_id: str, changes: dict[str, object], now: float, reason: str) -> None:
        pod = self.pods.get(pod_id)
        if pod is None:
            return
        self._set(pod, **changes)
        if "phase" in changes and changes["phase"] != pod.phase:
            phase = PodPhase(changes["phase"])  # type: ignore[arg-type]
            self.event(now, f"pod/{pod_id}", f"Phase{phase.title()}", reason)

    def _take(self, lease_id: str | None, pod_id: str, path: ClaimPath, now: float) -> None:
        """Put a lease on slot 0 of a pod being created or resumed for it (if it is still waiting)."""
        if lease_id is None:
            return
        lease = self.leases.get(lease_id)
        if lease is not None and lease.state is LeaseState.PENDING and lease.pod_id is None and (
            (pod_id, 0) not in self.slots
        ):
            self._place(lease_id, pod_id, 0, path, now, ready=False)

    def _place(self, lease_id: str, pod_id: str, slot: int, path: ClaimPath, now: float, ready: bool) -> None:
        lease = _with(self.leases[lease_id], {"pod_id": pod_id, "slot": slot, "path": path})
        self.leases[lease_id] = lease
        self.slots[(pod_id, slot)] = lease_id
        self.event(now, f"lease/{lease_id}", "Assigned", path.value)
        if ready:
            self._ready(lease, now)

    def _ready(self, lease: Lease, now: float) -> None:
        lease = _with(lease, {"state": LeaseState.READY, "ready_at": now})
        self.leases[lease.id] = lease
        self._charge_pod(lease.pod_id, now)
        self.ready_on[lease.pod_id or ""] += 1
        self.books.waits.setdefault(lease.path.value if lease.path else "none", []).append(now - lease.created_at)
        self.releases.append((now + self.sessions[lease.id].length_s, lease.id))
        self.event(now, f"lease/{lease.id}", "Ready", "")

    def _unplace(self, lease: Lease) -> None:
        if lease.pod_id is not None:
            self.slots.pop((lease.pod_id, lease.slot or 0), None)
        self.leases[lease.id] = _with(lease, {"pod_id": None, "slot": None, "path": None})

    def _requeue(self, lease_id: str | None, now: float, reason: str) -> None:
        lease = self.leases.get(lease_id) if lease_id else None
        if lease is not None and lease.state is LeaseState.PENDING:
            self._unplace(lease)
            self.event(now, f"lease/{lease.id}", "Requeued", reason)

    def _end(self, lease_id: str, state: LeaseState, now: float) -> None:
        lease = self.leases.pop(lease_id)
        if lease.pod_id is not None:
            self.slots.pop((lease.pod_id, lease.slot or 0), None)
            if lease.state is LeaseState.READY:
                self._charge_pod(lease.pod_id, now)
                self.ready_on[lease.pod_id] -= 1
        self.sessions.pop(lease_id, None)
        self.event(now, f"lease/{lease_id}", state.value.title(), "")


def _with(record: R, changes: dict[str, object]) -> R:
    """``dataclasses.replace`` for the frozen, slotted records, at a third of its cost (it goes through
    ``__init__`` and the fields' metadata; these records have no ``__post_init__`` to run)."""
    new = object.__new__(type(record))
    for name in record.__slots__:
        _set_slot(new, name, changes[name] if name in changes else getattr(record, name))
    return new
