"""Properties of ``plan()`` over generated states: pods in every phase, role and health (RunPod's view of each
absent, running, exited or in ERROR), leases pending, queued or held (some past expiry), orphans and strangers at
RunPod, any policy, quota, stock and refusals. Whatever the state, a plan never

- puts two leases on one slot, or a lease on a slot the pod does not have or on a cordoned pod;
- stops a pod that keeps a lease, or terminates a serving pod that keeps a ready lease;
- makes more RunPod calls than the pass may (``max_provider_actions`` and the rate-limit quota);
- creates or resumes while paused or blocked, or beyond ``max_pods`` or the budget in $/h;
- creates a GPU type the policy does not list, that has no price, that RunPod refused lately or has no stock of;
- touches a pod at RunPod without our prefix, or one with it that a record owns, as an orphan;
- ends a lease and acts on it otherwise in the same pass;
- leaves a lease waiting on a pod that is gone, failed, stopping or stopped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.domain import (
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
    Policy,
    Tuning,
)
from reconciler.planning import (
    PROVIDER_ACTIONS,
    AssignLease,
    CreatePod,
    EndLease,
    GrantLease,
    RequeueLease,
    ResumePod,
    StopPod,
    TerminateOrphan,
    TerminatePod,
    UpdatePod,
    plan,
)

NOW = 100_000.0
TYPES = ["NVIDIA GeForce RTX 4090", "NVIDIA L4", "NVIDIA A40"]
ERROR_REASON = "RunPod reports the container in ERROR"


@st.composite
def pods(draw, i: int) -> tuple[Pod, ObservedPod | None]:
    phase = draw(st.sampled_from(list(PodPhase)))
    known = phase not in (PodPhase.CREATING, PodPhase.FAILED) or draw(st.booleans())
    pod = Pod(
        id=f"p{i}", role=draw(st.sampled_from(list(PodRole))), phase=phase, gpu_type=draw(st.sampled_from(TYPES)),
        created_at=NOW - 5000, phase_since=NOW - draw(st.sampled_from([0.0, 5.0, 100.0, 1000.0, 4000.0])),
        runpod_id=f"rp{i}" if known else None, cost_per_hr=draw(st.sampled_from([0.0, 0.4, 0.69, 2.0])),
        cordoned=draw(st.booleans()), was_ready=draw(st.booleans()), ready_at=NOW - 3000,
        idle_since=draw(st.sampled_from([None, NOW - 10, NOW - 1000])),
        unhealthy_since=draw(st.sampled_from([None, None, NOW - 5, NOW - 500])),
        backoff_until=draw(st.sampled_from([0.0, 0.0, NOW + 60])),
        endpoint_host="10.0.0.1", endpoint_port=20000 + i,
    )
    view = draw(st.sampled_from(["absent", "running", "running-unhealthy", "exited", "error"]))
    if view == "absent" or pod.runpod_id is None:
        return pod, None
    running = view.startswith("running")
    return pod, ObservedPod(
        runpod_id=pod.runpod_id, name=pod.name, desired_status="EXITED" if view == "exited" else "RUNNING",
        gpu_type=pod.gpu_type, cost_per_hr=pod.cost_per_hr, endpoint_host="10.0.0.1" if running else None,
        endpoint_port=20000 + i if running else None, healthy=view == "running", failed=view == "error",
    )


@st.composite
def states(draw) -> tuple[Desired, Observed]:
    pairs = [draw(pods(i)) for i in range(draw(st.integers(0, 8)))]
    standby_count = draw(st.integers(0, 3))
    # max_pods near the number of pods holding a GPU: where a start that does not fit would show
    holding_gpus = sum(p.phase in GPU_PHASES for p, _ in pairs)
    max_pods = max(standby_count, holding_gpus + draw(st.integers(-1, 2)))
    policy = Policy(
        standby_count=standby_count, max_pods=max_pods,
        sessions_per_pod=draw(st.integers(1, 3)), budget_usd_per_hour=draw(st.sampled_from([0.0, 0.5, 1.5, 5.0, 50.0])),
        paused=draw(st.booleans()), idle_ttl_s=draw(st.sampled_from([0.0, 60.0, 300.0])),
        stopped_ttl_s=draw(st.sampled_from([0.0, 900.0])),
        gpu_types=draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True)),
    )
    leases, held = [], set()
    for i in range(draw(st.integers(0, 10))):
        created = NOW - draw(st.sampled_from([0.5, 30.0, 2000.0]))
        expires = NOW + draw(st.sampled_from([-1.0, 30.0]))
        state = draw(st.sampled_from([LeaseState.PENDING, LeaseState.READY]))
        target = draw(st.integers(-1, len(pairs) - 1))
        slot = draw(st.integers(0, policy.sessions_per_pod - 1))
        if target < 0 or (f"p{target}", slot) in held or (state == LeaseState.READY and pairs[target][0].phase
                                                          not in (PodPhase.READY, PodPhase.STOPPING)):
            leases.append(Lease(f"l{i}", f"s{i}", LeaseState.PENDING, created, expires))
            continue
        held.add((f"p{target}", slot))  # the database allows one active lease per slot
        path = draw(st.sampled_from(list(ClaimPath)))
        leases.append(Lease(f"l{i}", f"s{i}", state, created, expires, pod_id=f"p{target}", slot=slot, path=path,
                            ready_at=created + 0.1 if state == LeaseState.READY else None))
    observed = {o.name: o for _, o in pairs if o is not None}
    for name in ("harper-orphan", "someone-else"):  # ours without a record, and a stranger's
        if draw(st.booleans()):
            observed[name] = ObservedPod(runpod_id=f"rp-{name}", name=name, desired_status="RUNNING")
    desired = Desired(
        policy=policy, tuning=Tuning(max_provider_actions=draw(st.integers(1, 6))), pods=tuple(p for p, _ in pairs),
        leases=tuple(leases),
        unavailable_until={t: NOW + 60 for t in draw(st.lists(st.sampled_from(TYPES), unique=True, max_size=2))},
        prices=dict(draw(st.lists(st.sampled_from([(t, 0.69) for t in TYPES] + [(TYPES[1], 0.43)]), max_size=3))),
        orphans_seen={"rp-harper-orphan": NOW - draw(st.sampled_from([0.0, 120.0]))},
        stock={t: draw(st.sampled_from(["NONE", "LOW", "HIGH"])) for t in draw(st.lists(st.sampled_from(TYPES),
                                                                                          unique=True, max_size=3))},
        provider_budget=draw(st.sampled_from([None, 0, 1, 3])),
        creates_blocked=draw(st.sampled_from(["", "", "RunPod balance too low"])),
    )
    return desired, Observed(observed)


def _after_sync(desired: Desired, actions: list) -> dict[str, Pod]:
    """The pods as planning saw them when it chose whom to start: RunPod's view applied, ERROR pods terminating."""
    pods = {p.id: p for p in desired.pods}
    for action in actions:
        if isinstance(action, UpdatePod) and action.pod_id in pods:
            pods[action.pod_id] = replace(pods[action.pod_id], **dict(action.changes))
        elif isinstance(action, TerminatePod) and action.reason == ERROR_REASON:
            pods[action.pod_id] = replace(pods[action.pod_id], phase=PodPhase.TERMINATING)
    return pods


@settings(max_examples=600, deadline=None)
@given(states())
def test_plan_keeps_its_promises_in_any_state(state):
    desired, observed = state
    actions = plan(desired, observed, NOW)
    policy, pods = desired.policy, {p.id: p for p in desired.pods}
    of = {kind: [a for a in actions if isinstance(a, kind)] for kind in
          (AssignLease, GrantLease, EndLease, RequeueLease, CreatePod, ResumePod, StopPod, TerminatePod,
           TerminateOrphan)}

    # RunPod calls: never more than the pass may make
    calls = [a for a in actions if isinstance(a, PROVIDER_ACTIONS)]
    limit = desired.tuning.max_provider_actions
    if desired.provider_budget is not None:
        limit = min(limit, desired.provider_budget)
    assert len(calls) <= limit

    # Slots: one lease each, only slots the pod has, never on a cordoned pod
    ended = {a.lease_id for a in of[EndLease]}
    moved = {a.lease_id for a in of[RequeueLease]}
    holding = Counter((lz.pod_id, lz.slot) for lz in desired.leases
                      if lz.pod_id and lz.id not in ended | moved)
    for a in of[AssignLease]:
        holding[(a.pod_id, a.slot)] += 1
        assert 0 <= a.slot < policy.sessions_per_pod
        assert a.pod_id in pods and not pods[a.pod_id].cordoned
    assert all(n == 1 for n in holding.values()), holding

    # A lease that ends is not also granted, assigned or requeued; each is assigned at most once
    for kind in (AssignLease, GrantLease, RequeueLease):
        assert not ended & {a.lease_id for a in of[kind]}
    assert len({a.lease_id for a in of[AssignLease]}) == len(of[AssignLease])

    # Never stop a pod that keeps a lease; never terminate a serving pod that keeps a ready lease (a pod in ERROR,
    # failing its health checks past the timeout or no longer Ready is replaced: its lease fails by the next pass)
    synced = _after_sync(desired, actions)
    keeps = {pod_id for pod_id, _ in holding}
    assert not {a.pod_id for a in of[StopPod]} & keeps
    ready_kept = {lz.pod_id for lz in desired.leases if lz.state == LeaseState.READY and lz.id not in ended}
    for a in of[TerminatePod]:
        if a.pod_id in ready_kept:
            assert synced[a.pod_id].phase != PodPhase.READY or synced[a.pod_id].unhealthy_since is not None, a

    # Starts: none while paused or blocked; within max_pods and the budget; only usable GPU types
    starts = of[CreatePod] + of[ResumePod]
    if starts:
        assert not policy.paused and not desired.creates_blocked
        running = [p for p in synced.values() if p.phase in GPU_PHASES]
        resumed = [synced[a.pod_id] for a in of[ResumePod]]
        assert len(running) + len(starts) <= policy.max_pods
        spend = sum(p.cost_per_hr or desired.prices.get(p.gpu_type, 0.0) for p in running + resumed)
        spend += sum(desired.prices[a.gpu_type] for a in of[CreatePod])
        assert spend <= policy.budget_usd_per_hour + 1e-9
    for a in of[CreatePod]:
        assert a.gpu_type in policy.gpu_types and a.gpu_type in desired.prices
        assert desired.unavailable_until.get(a.gpu_type, 0.0) <= NOW and desired.stock.get(a.gpu_type) != "NONE"
    for a in of[ResumePod]:
        assert synced[a.pod_id].phase == PodPhase.STOPPED and not synced[a.pod_id].cordoned

    # A lease whose pod will not serve it (gone, failed, stopping or stopped: a resume the controller was killed in,
    # or that failed before its lease was put back) is put back in the queue or ended, never left waiting on it
    gone = (PodPhase.STOPPING, PodPhase.STOPPED, PodPhase.TERMINATING, PodPhase.TERMINATED, PodPhase.FAILED)
    for lz in desired.leases:
        if lz.pod_id is not None and lz.id not in ended and lz.expires_at > NOW:
            pod = synced.get(lz.pod_id)
            if pod is None or pod.phase in gone:
                assert lz.id in moved | {a.lease_id for a in of[EndLease]}, (lz, pod)

    # Orphans: only ours (the prefix) and only those no record owns
    for a in of[TerminateOrphan]:
        assert a.name.startswith(POD_NAME_PREFIX) and a.name not in {p.name for p in desired.pods}
