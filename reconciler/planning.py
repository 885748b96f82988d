"""Reconcile as a pure function: ``plan(desired, observed, now) -> list[Action]``.

The loop reads the database (``Desired``) and lists RunPod plus each pod's /health (``Observed``), calls
``plan``, and hands the actions to the actuator, which carries them out and records the outcomes. Nothing
here does I/O or reads the clock, so every decision is testable on fake time.

The order of a plan is the order of priority: first bring records in line with what RunPod reports, then
end leases, then serve waiting leases (warm -> standby_resume -> cold_create -> queue), then keep the
warm-capacity schedule's idle pods, park other idle pods, keep the standby pool, and collect surplus and
orphans. Provider calls are capped per pass (``Tuning.max_provider_actions``); whatever does not fit waits
for the next pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from .domain import (
    GPU_PHASES,
    POD_NAME_PREFIX,
    ClaimPath,
    Desired,
    Lease,
    LeaseState,
    Observed,
    ObservedPod,
    Pod,
    PodPhase,
    PodRole,
    Tuning,
    waiting_for,
)
from .schedule import warm_target

# ---------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class UpdatePod:
    """Record what was observed (or decided) about a pod; database only."""

    pod_id: str
    changes: tuple[tuple[str, object], ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CreatePod:
    gpu_type: str
    role: PodRole
    lease_id: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ResumePod:
    pod_id: str
    lease_id: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StopPod:
    pod_id: str
    reason: str = ""
    make_standby: bool = False


@dataclass(frozen=True, slots=True)
class TerminatePod:
    pod_id: str
    reason: str = ""
    logs: bool = False  # the pod failed: read the tail of its log into the event first (it is gone after)


@dataclass(frozen=True, slots=True)
class TerminateOrphan:
    runpod_id: str
    name: str


@dataclass(frozen=True, slots=True)
class AssignLease:
    """Put a pending lease on a pod slot; ``ready`` when the pod is Ready already (the warm path)."""

    lease_id: str
    pod_id: str
    slot: int
    path: ClaimPath
    ready: bool


@dataclass(frozen=True, slots=True)
class GrantLease:
    """A pending lease whose pod has become Ready."""

    lease_id: str


@dataclass(frozen=True, slots=True)
class RequeueLease:
    """A pending lease whose pod will not come: back to the queue."""

    lease_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class NoteLease:
    """Why a pending lease still waits, when that changed (paused, max_pods, budget, no GPU type, ...)."""

    lease_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class EndLease:
    lease_id: str
    state: LeaseState  # expired | failed
    reason: str


Action = (
    UpdatePod
    | CreatePod
    | ResumePod
    | StopPod
    | TerminatePod
    | TerminateOrphan
    | AssignLease
    | GrantLease
    | RequeueLease
    | NoteLease
    | EndLease
)
PROVIDER_ACTIONS = (CreatePod, ResumePod, StopPod, TerminatePod, TerminateOrphan)


# ------------------------------------------------------------------------------------- observation sync


def sync_changes(pod: Pod, seen: ObservedPod | None, tuning: Tuning, now: float) -> dict[str, object]:
    """The fields of ``pod`` that differ from what RunPod reports; a new phase brings ``phase_since``."""
    P = PodPhase
    if (  # the common case, a pod as RunPod last reported it, answered without building the changes
        seen is not None and not seen.failed and pod.runpod_id == seen.runpod_id
        and pod.endpoint_host == seen.endpoint_host and pod.endpoint_port == seen.endpoint_port
        and (not seen.cost_per_hr or seen.cost_per_hr == pod.cost_per_hr) and pod.unhealthy_since is None
        and (
            (pod.phase == P.STOPPED and seen.desired_status != "RUNNING")
            or (pod.phase == P.READY and seen.desired_status == "RUNNING" and seen.healthy)
        )
    ):
        return {}
    want: dict[str, object] = {}
    if seen is None:
        if pod.phase == P.TERMINATED:
            pass
        elif pod.phase == P.FAILED:
            # Late adoption (RunPod made it after all) shows up within the create grace; after that the record
            # is closed, so failed creates do not pile up in every pass and in the store's live view.
            if now - pod.phase_since >= tuning.create_grace_s:
                want = {"phase": P.TERMINATED}
        elif pod.phase == P.CREATING:
            if pod.runpod_id is None and now - pod.phase_since >= tuning.create_grace_s:
                want = {"phase": P.FAILED, "reason": "never appeared at RunPod"}
        else:
            want = {"phase": P.TERMINATED, "endpoint_host": None, "endpoint_port": None}
            if pod.phase != P.TERMINATING:  # a terminate we sent keeps its own reason
                want["reason"] = "vanished from RunPod"
    else:
        want = {"runpod_id": seen.runpod_id, "cost_per_hr": seen.cost_per_hr or pod.cost_per_hr,
                "endpoint_host": seen.endpoint_host, "endpoint_port": seen.endpoint_port}
        if pod.phase == P.TERMINATING or seen.failed:
            pass  # a failed pod keeps its phase until the terminate that ``_sync_all`` sends is seen
        elif seen.desired_status != "RUNNING":
            want |= {"phase": P.STOPPED, "unhealthy_since": None}
            if pod.phase != P.STOPPING:  # a stop we sent keeps its own reason
                want["reason"] = f"RunPod reports it {seen.desired_status}"
        elif pod.phase == P.STOPPING and now - pod.phase_since < tuning.stop_timeout_s:
            pass
        elif seen.healthy:
            want["unhealthy_since"] = None
            if pod.phase != P.READY:
                want |= {"phase": P.READY, "was_ready": True, "ready_at": now, "idle_since": now,
                         "reason": "health check passed"}
        elif pod.phase == P.READY:
            # One failed probe does not take a pod out of service; ``unhealthy_timeout_s`` of them does.
            if pod.unhealthy_since is None:
                want["unhealthy_since"] = now
        else:
            want |= {"phase": P.STARTING, "reason": "RunPod reports it running: waiting for its health check"}
    changes = {k: v for k, v in want.items() if getattr(pod, k) != v}
    if "phase" not in changes:
        changes.pop("reason", None)  # a reason goes with a change of phase
    else:
        changes["phase_since"] = now
    return changes


def _diff(old: Pod, new: Pod) -> tuple[tuple[str, object], ...]:
    if old is new:
        return ()
    return tuple((f, getattr(new, f)) for f in old.__slots__ if getattr(old, f) != getattr(new, f))


def find_orphans(desired: Desired, observed: Observed) -> list[ObservedPod]:
    """Pods with our prefix that no record owns. Pods without the prefix are never ours to touch."""
    known = {p.id for p in desired.pods}  # names are the prefix and the id
    cut = len(POD_NAME_PREFIX)
    return [
        o for name, o in observed.pods.items() if name.startswith(POD_NAME_PREFIX) and name[cut:] not in known
    ]


# ------------------------------------------------------------------------------------------------- plan


class _Plan:
    """Working state of one planning pass: the records as they will be once the actions are carried out."""

    def __init__(self, desired: Desired, now: float) -> None:
        self.d = desired
        self.now = now
        self.policy = desired.policy
        self.tuning = desired.tuning
        self.actions: list[Action] = []
        self.provider_budget = desired.tuning.max_provider_actions
        if desired.provider_budget is not None:  # RunPod's rate-limit quota left for this pass
            self.provider_budget = min(self.provider_budget, desired.provider_budget)
        self.pods: dict[str, Pod] = {}
        self.slots: dict[str, set[int]] = defaultdict(set)
        self.warm: set[str] = set()  # idle Ready pods the warm-capacity schedule keeps running this pass

    def emit(self, action: Action) -> bool:
        if isinstance(action, PROVIDER_ACTIONS):
            if self.provider_budget <= 0:
                return False
            self.provider_budget -= 1
        self.actions.append(action)
        return True

    def set_pod(self, old: Pod, new: Pod, reason: str = "") -> None:
        if reason:
            new = replace(new, reason=reason)  # the reason a pod shows is always the latest one
        changes = _diff(old, new)
        if changes:
            self.actions.append(UpdatePod(old.id, changes, reason or new.reason))
        self.pods[new.id] = new

    # -- money and limits
    def pod_cost(self, pod: Pod) -> float:
        return pod.cost_per_hr or self.d.prices.get(pod.gpu_type, 0.0)

    def gpu_usage(self) -> tuple[int, float]:
        running = [p for p in self.pods.values() if p.phase in GPU_PHASES]
        return len(running), sum(self.pod_cost(p) for p in running)

    def may_start(self, cost: float, usage: tuple[int, float] | None = None) -> str | None:
        """None if one more pod may hold a GPU now, else why not. ``usage``: (count, $/h) if known."""
        if self.policy.paused:
            return "paused"
        if self.d.creates_blocked:
            return self.d.creates_blocked
        count, spend = usage or self.gpu_usage()
        if count + 1 > self.policy.max_pods:
            return f"max_pods {self.policy.max_pods} reached"
        if spend + cost > self.policy.budget_usd_per_hour + 1e-9:
            return f"budget ${self.policy.budget_usd_per_hour:.2f}/h would be exceeded"
        return None

    def next_gpu_type(self) -> str | None:
        """The type to create: the policy's priority order, except that a type RunPod reports LOW on stock
        goes after those it reports MEDIUM or HIGH (a create places exactly one type and never falls back, so
        a likely refusal costs a pass), and a type with NONE, or refused recently (``unavailable_until``), or
        without a known price (the budget could not be checked) is skipped."""
        usable = [
            t for t in self.policy.gpu_types
            if self.d.unavailable_until.get(t, 0.0) <= self.now and t in self.d.prices
            and self.d.stock.get(t) != "NONE"
        ]
        usable.sort(key=lambda t: self.d.stock.get(t) == "LOW")  # stable: priority order otherwise
        return usable[0] if usable else None

    def why_no_gpu_type(self) -> str:
        why = []
        for gpu_type in self.policy.gpu_types:
            until = self.d.unavailable_until.get(gpu_type, 0.0)
            if until > self.now:
                why.append(f"{gpu_type} refused by RunPod (retry in {until - self.now:.0f}s)")
            elif gpu_type not in self.d.prices:
                why.append(f"{gpu_type} has no known price")
            elif self.d.stock.get(gpu_type) == "NONE":
                why.append(f"{gpu_type} out of stock")
        return "no usable GPU type: " + "; ".join(why)

    def note(self, lease: Lease, reason: str) -> None:
        if lease.reason != reason:
            self.actions.append(NoteLease(lease.id, reason))

    def free_slot(self, pod: Pod) -> int | None:
        used = self.slots[pod.id]
        for slot in range(self.policy.sessions_per_pod):
            if slot not in used:
                return slot
        return None


def plan(desired: Desired, observed: Observed, now: float) -> list[Action]:
    p = _Plan(desired, now)
    _sync_all(p, observed)
    pending = _settle_leases(p)
    _claim(p, pending)
    _keep_warm_schedule(p)
    _park_idle(p)
    _keep_standby(p)
    _collect(p, observed)
    return p.actions


def _sync_all(p: _Plan, observed: Observed) -> None:
    for pod in p.d.pods:
        seen = observed.pods.get(POD_NAME_PREFIX + pod.id)  # pod.name, without a property call per pod and pass
        changes = sync_changes(pod, seen, p.tuning, p.now)
        if changes:
            new = replace(pod, **changes)
            p.actions.append(UpdatePod(pod.id, tuple(changes.items()), new.reason))
            p.pods[pod.id] = new
        else:
            p.pods[pod.id] = pod
        if seen is not None and seen.failed and pod.phase not in (PodPhase.TERMINATING, PodPhase.TERMINATED):
            # RunPod says the container cannot recover: replace it now rather than after the ready timeout.
            reason = "RunPod reports the container in ERROR"
            if p.emit(TerminatePod(pod.id, reason, logs=True)):
                p.pods[pod.id] = replace(p.pods[pod.id], phase=PodPhase.TERMINATING, phase_since=p.now, reason=reason)


_SERVES_NO_LEASE = frozenset({PodPhase.TERMINATING, PodPhase.TERMINATED, PodPhase.FAILED, PodPhase.STOPPING,
                              PodPhase.STOPPED})


def _settle_leases(p: _Plan) -> list[Lease]:
    """End expired leases and leases whose pod is gone; grant those whose pod is Ready. Returns the queue."""
    P = PodPhase
    queue: list[Lease] = []
    for lease in sorted(p.d.leases, key=lambda lease: (lease.created_at, lease.id)):
        pod = p.pods.get(lease.pod_id) if lease.pod_id else None
        if lease.expires_at <= p.now:
            p.emit(EndLease(lease.id, LeaseState.EXPIRED, "no heartbeat before expiry"))
            continue
        if lease.state == LeaseState.PENDING and p.now - lease.created_at >= p.tuning.pending_timeout_s:
            p.emit(EndLease(lease.id, LeaseState.FAILED, "timed out waiting for a pod"))
            continue
        if lease.pod_id is None:
            queue.append(lease)
            continue
        # A stopped (or stopping) pod serves no lease either: a pending one is left there only when the controller
        # was killed between recording a resume and putting the lease back after the resume failed.
        lost = pod is None or pod.phase in _SERVES_NO_LEASE
        if lost:
            why = f"pod {lease.pod_id} is {pod.phase if pod else 'gone'}" + (
                f" ({pod.reason})" if pod and pod.reason else ""
            )
            if lease.state == LeaseState.READY:
                p.emit(EndLease(lease.id, LeaseState.FAILED, f"pod lost: {why}"))
            else:
                p.emit(RequeueLease(lease.id, why))
                queue.append(replace(lease, pod_id=None, slot=None, path=None))
            continue
        p.slots[lease.pod_id].add(lease.slot or 0)
        if pod.role != PodRole.SERVING:  # e.g. granted warm on a standby in the moment before it was parked
            p.set_pod(pod, replace(pod, role=PodRole.SERVING), "claimed for a lease")
        if lease.state == LeaseState.PENDING:
            if pod.phase == P.READY and pod.unhealthy_since is None:
                p.emit(GrantLease(lease.id))
            else:
                p.note(lease, waiting_for(pod.id))
    return queue


def warm_candidates(pods: list[Pod]) -> list[Pod]:
    """Ready, healthy, uncordoned pods (kept in the caller's order: busiest first)."""
    return [
        pod
        for pod in pods
        if pod.phase == PodPhase.READY and pod.unhealthy_since is None and not pod.cordoned
    ]


def _claim(p: _Plan, queue: list[Lease]) -> None:
    """The claim ladder: warm -> a pod already starting -> standby_resume -> cold_create -> stay queued."""
    if not queue:
        return  # most passes: nothing waits, and the ladder would sort every pod for nothing
    P = PodPhase
    pods = sorted(p.pods.values(), key=lambda pod: (-len(p.slots[pod.id]), pod.created_at, pod.id))
    warm = warm_candidates(pods)
    starting = [
        pod
        for pod in pods
        if pod.phase in (P.CREATING, P.STARTING) and not pod.cordoned and pod.backoff_until <= p.now
    ]
    stopped = sorted(
        (
            pod
            for pod in pods
            if pod.phase == P.STOPPED and pod.was_ready and not pod.cordoned and pod.backoff_until <= p.now
        ),
        key=lambda pod: (_type_rank(p, pod.gpu_type), -(pod.ready_at or 0.0), pod.id),
    )
    blocked = ""  # why the first lease that could not be served waits: the ones behind it wait for the same
    count, spend = p.gpu_usage()  # kept up to date below: one pass over the pods, not one per lease
    coming = 0  # free slots on pods created in this pass
    for lease in queue:
        target = _first_with_slot(p, warm) or _first_with_slot(p, starting)
        if target is not None:
            pod, slot = target
            ready = pod.phase == P.READY
            path = ClaimPath.WARM if ready else (
                ClaimPath.STANDBY_RESUME if pod.was_ready else ClaimPath.COLD_CREATE
            )
            p.emit(AssignLease(lease.id, pod.id, slot, path, ready=ready))
            p.slots[pod.id].add(slot)
            if pod.role != PodRole.SERVING:
                p.set_pod(pod, replace(pod, role=PodRole.SERVING), "claimed for a lease")
            continue
        if blocked:
            p.note(lease, blocked)  # leases are served in order: once one has to wait, later ones wait too
            continue
        if p.provider_budget <= 0:
            p.note(lease, "this pass has spent its RunPod calls (rate-limit quota or max_provider_actions)")
            continue
        if coming > 0:
            coming -= 1  # a pod created this pass has a slot for it: assigned on the next pass
            continue
        if stopped and p.may_start(p.pod_cost(stopped[0]), (count, spend)) is None:
            pod = stopped.pop(0)
            count, spend = count + 1, spend + p.pod_cost(pod)
            p.emit(ResumePod(pod.id, lease.id, "standby resumed for a lease"))
            resumed = replace(pod, phase=P.STARTING, phase_since=p.now, role=PodRole.SERVING)
            p.pods[pod.id] = resumed
            p.slots[pod.id].add(0)
            starting.append(resumed)
            continue
        gpu_type = p.next_gpu_type()
        why = p.why_no_gpu_type() if gpu_type is None else p.may_start(p.d.prices[gpu_type], (count, spend))
        if why is None:
            assert gpu_type is not None
            p.emit(CreatePod(gpu_type, PodRole.SERVING, lease.id, "cold create for a lease"))
            count, spend = count + 1, spend + p.d.prices[gpu_type]
            coming += p.policy.sessions_per_pod - 1
            placeholder = Pod(
                id=f"~{lease.id}", role=PodRole.SERVING, phase=P.CREATING, gpu_type=gpu_type,
                created_at=p.now, phase_since=p.now, cost_per_hr=p.d.prices[gpu_type],
            )  # counts against max_pods and budget for the rest of this pass
            p.pods[placeholder.id] = placeholder
            continue
        blocked = why
        p.note(lease, why)


def _first_with_slot(p: _Plan, pods: list[Pod]) -> tuple[Pod, int] | None:
    while pods:
        pod = p.pods[pods[0].id]
        slot = p.free_slot(pod)
        if slot is not None and pod.phase in (PodPhase.READY, PodPhase.STARTING, PodPhase.CREATING):
            return pod, slot
        pods.pop(0)
    return None


def _type_rank(p: _Plan, gpu_type: str) -> int:
    types = p.policy.gpu_types
    return types.index(gpu_type) if gpu_type in types else len(types)


def _park_idle(p: _Plan) -> None:
    """Stop Ready pods that hold no lease: standbys at once, serving pods after the idle TTL."""
    for pod in list(p.pods.values()):
        if pod.phase != PodPhase.READY or pod.id[0] == "~":
            continue
        if p.slots.get(pod.id):
            if pod.idle_since is not None:
                p.set_pod(pod, replace(pod, idle_since=None), "leased")
            continue
        if pod.idle_since is None:
            pod = replace(pod, idle_since=p.now)
            p.set_pod(p.pods[pod.id], pod, "idle")
        if pod.id in p.warm or pod.backoff_until > p.now:
            continue
        if pod.role == PodRole.STANDBY:
            reason = "standby is Ready: parking it stopped"
        elif p.now - pod.idle_since >= p.policy.idle_ttl_s:
            reason = f"idle for {p.now - pod.idle_since:.0f}s (idle_ttl_s {p.policy.idle_ttl_s:.0f})"
        else:
            continue
        if p.emit(StopPod(pod.id, reason, make_standby=True)):
            p.pods[pod.id] = replace(pod, phase=PodPhase.STOPPING, phase_since=p.now, role=PodRole.STANDBY,
                                     reason=reason)


def _keep_warm_schedule(p: _Plan) -> None:
    """Scheduled warm capacity: while a window is open, keep its number of idle Ready pods running (held from
    ``_park_idle``) and start more when fewer are Ready or on their way: a stopped standby first (it resumes in
    seconds), then a create. Leases were served first (``_claim``), so a pod taken by a session is replaced
    here on the same pass. Once the window closes, the pods it held are parked like any idle pod."""
    want = warm_target(p.policy.warm_schedule, p.now)
    if want <= 0:
        return
    P = PodPhase
    idle = sorted(
        (pod for pod in warm_candidates(list(p.pods.values())) if not p.slots[pod.id] and pod.id[0] != "~"),
        key=lambda pod: (pod.role != PodRole.SERVING, pod.created_at, pod.id),
    )
    for pod in idle[:want]:
        p.warm.add(pod.id)
        if pod.role != PodRole.SERVING:  # a standby that just became Ready stays up instead of being parked
            p.set_pod(pod, replace(pod, role=PodRole.SERVING), "kept warm by the schedule")
    coming = sum(
        1 for pod in p.pods.values()
        if pod.phase in (P.CREATING, P.STARTING) and pod.role == PodRole.SERVING and not pod.cordoned
        and not p.slots[pod.id] and pod.id[0] != "~"
    )
    missing = want - len(p.warm) - coming
    stopped = sorted(
        (
            pod for pod in p.pods.values()
            if pod.phase == P.STOPPED and pod.was_ready and not pod.cordoned and pod.backoff_until <= p.now
        ),
        key=lambda pod: (_type_rank(p, pod.gpu_type), -(pod.ready_at or 0.0), pod.id),
    )
    for n in range(missing):
        if stopped and p.may_start(p.pod_cost(stopped[0])) is None:
            pod = stopped.pop(0)
            if not p.emit(ResumePod(pod.id, None, "warm capacity by schedule")):
                return
            p.pods[pod.id] = replace(pod, phase=P.STARTING, phase_since=p.now, role=PodRole.SERVING)
            continue
        gpu_type = p.next_gpu_type()
        if gpu_type is None or p.may_start(p.d.prices[gpu_type]) is not None:
            return
        if not p.emit(CreatePod(gpu_type, PodRole.SERVING, None, "warm capacity by schedule")):
            return
        p.pods[f"~warm{n}"] = Pod(
            id=f"~warm{n}", role=PodRole.SERVING, phase=P.CREATING, gpu_type=gpu_type, created_at=p.now,
            phase_since=p.now, cost_per_hr=p.d.prices[gpu_type],
        )


def _standby_pool(p: _Plan) -> list[Pod]:
    P = PodPhase
    pool = []
    for pod in p.pods.values():
        if pod.role != PodRole.STANDBY or pod.cordoned or pod.id.startswith("~"):
            continue
        if pod.phase in (P.CREATING, P.STARTING, P.READY, P.STOPPING) or (
            pod.phase == P.STOPPED and pod.was_ready and pod.backoff_until <= p.now
        ):
            pool.append(pod)
    return pool


def _keep_standby(p: _Plan) -> None:
    missing = p.policy.standby_count - len(_standby_pool(p))
    for _ in range(max(0, missing)):
        gpu_type = p.next_gpu_type()
        if gpu_type is None or p.may_start(p.d.prices[gpu_type]) is not None:
            return
        if not p.emit(CreatePod(gpu_type, PodRole.STANDBY, None, "replenish the standby pool")):
            return
        p.pods[f"~standby{missing}"] = Pod(
            id=f"~standby{missing}", role=PodRole.STANDBY, phase=PodPhase.CREATING, gpu_type=gpu_type,
            created_at=p.now, phase_since=p.now, cost_per_hr=p.d.prices[gpu_type],
        )
        missing -= 1


def _collect(p: _Plan, observed: Observed) -> None:
    """Terminate surplus stopped pods, pods stuck starting or unhealthy, and orphans; resend stuck calls."""
    P, t = PodPhase, p.tuning
    stopped = [pod for pod in p.pods.values() if pod.phase == P.STOPPED and not pod.cordoned]
    if len(stopped) > p.policy.standby_count:  # which ones are kept matters only when some are surplus
        stopped.sort(
            key=lambda pod: (
                not (pod.was_ready and pod.backoff_until <= p.now), _type_rank(p, pod.gpu_type),
                -(pod.ready_at or 0.0), pod.id,
            ),
        )
    for pod in stopped[p.policy.standby_count:]:
        if p.now - pod.phase_since >= p.policy.stopped_ttl_s and not p.slots[pod.id]:
            p.emit(TerminatePod(pod.id, "surplus stopped pod past stopped_ttl_s"))
    for pod in list(p.pods.values()):
        if pod.id.startswith("~") or pod.backoff_until > p.now:
            continue
        age = p.now - pod.phase_since
        if pod.phase == P.STARTING and age >= t.ready_timeout_s:
            p.emit(TerminatePod(pod.id, f"not Ready after {age:.0f}s", logs=True))
        elif pod.phase == P.READY and pod.unhealthy_since is not None and (
            p.now - pod.unhealthy_since >= t.unhealthy_timeout_s
        ):
            p.emit(TerminatePod(pod.id, f"health checks failing for {p.now - pod.unhealthy_since:.0f}s"))
        elif pod.phase == P.STOPPING and age >= t.stop_timeout_s:
            p.emit(StopPod(pod.id, "stop not carried out yet: sending it again"))
        elif pod.phase == P.TERMINATING and age >= t.stop_timeout_s:
            p.emit(TerminatePod(pod.id, "terminate not carried out yet: sending it again"))
    for orphan in find_orphans(p.d, observed):
        first_seen = p.d.orphans_seen.get(orphan.runpod_id, p.now)
        if p.now - first_seen >= t.orphan_grace_s:
            p.emit(TerminateOrphan(orphan.runpod_id, orphan.name))
