"""plan() on fake time: which actions come out for a given state and observation."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.domain import (
    ClaimPath,
    Desired,
    IllegalTransition,
    Lease,
    LeaseState,
    Observed,
    ObservedPod,
    Pod,
    PodPhase,
    PodRole,
    Policy,
    Tuning,
    check_pod_transition,
)
from reconciler.planning import (
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
    plan,
)

NOW = 10_000.0
GPU = "NVIDIA GeForce RTX 4090"
PRICES = {GPU: 0.69, "NVIDIA L4": 0.43, "NVIDIA A40": 0.40}


def pod(pid="p1", phase=PodPhase.READY, role=PodRole.SERVING, **kw) -> Pod:
    base = dict(
        id=pid, role=role, phase=phase, gpu_type=GPU, created_at=NOW - 1000, phase_since=NOW - 500,
        runpod_id=f"rp{pid}", cost_per_hr=0.69, was_ready=phase in (PodPhase.READY, PodPhase.STOPPED),
        ready_at=NOW - 900, idle_since=None,
    )
    base.update(kw)
    return Pod(**base)


def lease(lid="l1", state=LeaseState.PENDING, pod_id=None, **kw) -> Lease:
    base = dict(id=lid, session_id=f"s-{lid}", state=state, created_at=NOW - 1, expires_at=NOW + 60,
                pod_id=pod_id, slot=0 if pod_id else None)
    base.update(kw)
    return Lease(**base)


def seen(p: Pod, status="RUNNING", healthy=True) -> ObservedPod:
    running = status == "RUNNING"
    return ObservedPod(
        runpod_id=p.runpod_id, name=p.name, desired_status=status, cost_per_hr=p.cost_per_hr,
        endpoint_host="127.0.0.1" if running else None, endpoint_port=20000 if running else None,
        healthy=healthy and running,
    )


def desired(pods=(), leases=(), policy=None, unavailable=None, orphans=None, **tuning) -> Desired:
    return Desired(
        policy=policy or Policy(standby_count=1), tuning=Tuning(**tuning), pods=tuple(pods),
        leases=tuple(leases), unavailable_until=unavailable or {}, prices=PRICES,
        orphans_seen=orphans or {},
    )


def observed(*pairs) -> Observed:
    return Observed({o.name: o for o in pairs})


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def standby(pid="sb", **kw) -> Pod:
    return pod(pid, phase=PodPhase.STOPPED, role=PodRole.STANDBY, **kw)


# ---------------------------------------------------------------------------------------- standby pool


def test_empty_fleet_creates_one_standby():
    actions = plan(desired(), Observed(), NOW)
    assert actions == [CreatePod(GPU, PodRole.STANDBY, None, "replenish the standby pool")]


def test_standby_that_became_ready_is_stopped_and_pool_is_full():
    sb = pod("sb", phase=PodPhase.STARTING, role=PodRole.STANDBY, was_ready=False)
    actions = plan(desired([sb]), observed(seen(sb)), NOW)
    update = of(actions, UpdatePod)[0]
    assert dict(update.changes)["phase"] == PodPhase.READY and dict(update.changes)["was_ready"] is True
    assert of(actions, StopPod) == [StopPod("sb", "standby is Ready: parking it stopped", make_standby=True)]
    assert not of(actions, CreatePod)


def test_stopped_standby_that_was_ready_fills_the_pool():
    sb = standby()
    assert plan(desired([sb]), observed(seen(sb, "EXITED")), NOW) == []


def test_stopped_pod_never_ready_does_not_count_as_standby():
    sb = standby(was_ready=False)
    actions = plan(desired([sb]), observed(seen(sb, "EXITED")), NOW)
    assert len(of(actions, CreatePod)) == 1


# ------------------------------------------------------------------------------------------ claim ladder


def test_warm_pod_with_free_slot_is_claimed_first():
    warm, sb = pod("w", idle_since=NOW - 10), standby()
    actions = plan(desired([warm, sb], [lease()]), observed(seen(warm), seen(sb, "EXITED")), NOW)
    assert of(actions, AssignLease) == [AssignLease("l1", "w", 0, ClaimPath.WARM, ready=True)]
    assert not of(actions, ResumePod) and not of(actions, CreatePod)


def test_a_ready_standby_holding_a_lease_turns_serving_and_the_pool_is_refilled():
    # the API granted a lease warm on a standby in the moment between Ready and parked
    sb = pod("sb", role=PodRole.STANDBY)
    actions = plan(desired([sb], [lease(state=LeaseState.READY, pod_id="sb")]), observed(seen(sb)), NOW)
    assert any(dict(u.changes).get("role") == PodRole.SERVING for u in of(actions, UpdatePod))
    assert not of(actions, StopPod)
    assert of(actions, CreatePod) == [CreatePod(GPU, PodRole.STANDBY, None, "replenish the standby pool")]


def test_standby_is_resumed_when_no_warm_pod_and_pool_is_replenished():
    sb = standby()
    actions = plan(desired([sb], [lease()]), observed(seen(sb, "EXITED")), NOW)
    assert of(actions, ResumePod) == [ResumePod("sb", "l1", "standby resumed for a lease")]
    assert of(actions, CreatePod) == [CreatePod(GPU, PodRole.STANDBY, None, "replenish the standby pool")]


def test_cold_create_when_no_standby():
    actions = plan(desired([], [lease()], policy=Policy(standby_count=0)), Observed(), NOW)
    assert of(actions, CreatePod) == [CreatePod(GPU, PodRole.SERVING, "l1", "cold create for a lease")]


def test_out_of_stock_type_is_skipped_for_the_next():
    actions = plan(
        desired([], [lease()], policy=Policy(standby_count=0), unavailable={GPU: NOW + 100}), Observed(), NOW
    )
    assert of(actions, CreatePod)[0].gpu_type == "NVIDIA L4"


def test_a_type_without_a_known_price_is_not_created():
    d = desired(policy=Policy(standby_count=1, gpu_types=["Unpriced GPU", GPU]))
    assert of(plan(d, Observed(), NOW), CreatePod)[0].gpu_type == GPU  # never "Unpriced GPU" at $0/h
    only_unpriced = desired(policy=Policy(standby_count=1, gpu_types=["Unpriced GPU"]), leases=[lease()])
    assert not of(plan(only_unpriced, Observed(), NOW), CreatePod)


def test_pod_in_resume_backoff_is_not_resumed():
    sb = standby(backoff_until=NOW + 30)
    actions = plan(desired([sb], [lease()], policy=Policy(standby_count=1)), observed(seen(sb, "EXITED")), NOW)
    assert not of(actions, ResumePod)
    assert {a.role for a in of(actions, CreatePod)} == {PodRole.SERVING, PodRole.STANDBY}


def test_starting_pod_with_free_slot_takes_the_lease():
    starting = pod("s", phase=PodPhase.STARTING, role=PodRole.STANDBY, was_ready=False, ready_at=None)
    actions = plan(desired([starting], [lease()]), observed(seen(starting, healthy=False)), NOW)
    assert of(actions, AssignLease) == [AssignLease("l1", "s", 0, ClaimPath.COLD_CREATE, ready=False)]


def test_budget_holds_leases_in_the_queue():
    busy = pod("b")
    leases = [lease("l0", LeaseState.READY, "b"), lease("l1")]
    policy = Policy(standby_count=0, budget_usd_per_hour=1.0)
    actions = plan(desired([busy], leases, policy=policy), observed(seen(busy)), NOW)
    assert not of(actions, CreatePod) and not of(actions, AssignLease)


def test_max_pods_holds_leases_and_standby_resume_counts():
    busy, sb = pod("b"), standby()
    leases = [lease("l0", LeaseState.READY, "b"), lease("l1"), lease("l2", created_at=NOW)]
    actions = plan(desired([busy, sb], leases, policy=Policy(max_pods=2)), observed(seen(busy), seen(sb, "EXITED")), NOW)
    assert [a.lease_id for a in of(actions, ResumePod)] == ["l1"]
    assert not of(actions, CreatePod)


def test_paused_creates_and_resumes_nothing():
    sb = standby()
    actions = plan(desired([sb], [lease()], policy=Policy(paused=True)), observed(seen(sb, "EXITED")), NOW)
    assert not of(actions, ResumePod) and not of(actions, CreatePod)


def test_cordoned_pod_gets_no_lease():
    warm = pod("w", cordoned=True)
    actions = plan(desired([warm], [lease()], policy=Policy(standby_count=0)), observed(seen(warm)), NOW)
    assert not of(actions, AssignLease)
    assert of(actions, CreatePod)[0].lease_id == "l1"


def test_sessions_per_pod_fills_slots_before_creating():
    warm = pod("w")
    leases = [lease("l0", LeaseState.READY, "w"), lease("l1"), lease("l2", created_at=NOW)]
    actions = plan(desired([warm], leases, policy=Policy(sessions_per_pod=2, standby_count=0)), observed(seen(warm)), NOW)
    assert of(actions, AssignLease) == [AssignLease("l1", "w", 1, ClaimPath.WARM, ready=True)]
    assert [a.lease_id for a in of(actions, CreatePod)] == ["l2"]


def test_one_create_serves_several_leases_when_pods_have_several_slots():
    leases = [lease(f"l{i}", created_at=NOW - 100 + i) for i in range(5)]
    policy = Policy(standby_count=0, sessions_per_pod=2, max_pods=100)
    actions = plan(desired([], leases, policy=policy), Observed(), NOW)
    assert [a.lease_id for a in of(actions, CreatePod)] == ["l0", "l2", "l4"]


def test_provider_actions_are_capped_per_pass():
    leases = [lease(f"l{i}", created_at=NOW - 100 + i) for i in range(10)]
    actions = plan(desired([], leases, policy=Policy(standby_count=0, max_pods=100), max_provider_actions=3), Observed(), NOW)
    assert [a.lease_id for a in of(actions, CreatePod)] == ["l0", "l1", "l2"]


# -------------------------------------------------------------------------------------------- leases


def test_pending_lease_on_pod_that_became_ready_is_granted():
    p = pod("p", phase=PodPhase.STARTING)
    actions = plan(desired([p], [lease(pod_id="p")]), observed(seen(p)), NOW)
    assert GrantLease("l1") in actions


def test_expired_lease_ends_and_frees_the_slot():
    p = pod("p", idle_since=None)
    actions = plan(desired([p], [lease(state=LeaseState.READY, pod_id="p", expires_at=NOW - 1), lease("l2")]),
                   observed(seen(p)), NOW)
    assert EndLease("l1", LeaseState.EXPIRED, "no heartbeat before expiry") in actions
    assert AssignLease("l2", "p", 0, ClaimPath.WARM, ready=True) in actions


def test_ready_lease_on_vanished_pod_fails_and_pending_one_is_requeued():
    p = pod("p")
    actions = plan(desired([p], [lease("l1", LeaseState.READY, "p"), lease("l2", pod_id="p", slot=1)]), Observed(), NOW)
    ends = of(actions, EndLease)
    assert ends[0].lease_id == "l1" and ends[0].state == LeaseState.FAILED and "vanished" in ends[0].reason
    assert of(actions, RequeueLease)[0].lease_id == "l2"


def test_pending_lease_times_out():
    actions = plan(desired([], [lease(created_at=NOW - 2000)], pending_timeout_s=900), Observed(), NOW)
    assert of(actions, EndLease)[0].state == LeaseState.FAILED


# ---------------------------------------------------------------------------------------- idle and gc


def test_idle_serving_pod_is_stopped_after_ttl_and_becomes_standby():
    p = pod("p", idle_since=NOW - 301)
    actions = plan(desired([p], policy=Policy(standby_count=1, idle_ttl_s=300)), observed(seen(p)), NOW)
    stop = of(actions, StopPod)[0]
    assert stop.pod_id == "p" and stop.make_standby
    assert not of(actions, CreatePod)  # the stopping pod is the standby now


def test_idle_pod_within_ttl_keeps_running():
    p = pod("p", idle_since=NOW - 100)
    assert not of(plan(desired([p], [], policy=Policy(idle_ttl_s=300)), observed(seen(p)), NOW), StopPod)


def test_pod_holding_a_lease_is_never_stopped():
    p = pod("p", idle_since=NOW - 10_000)
    actions = plan(desired([p], [lease(state=LeaseState.READY, pod_id="p")]), observed(seen(p)), NOW)
    assert not of(actions, StopPod) and not of(actions, TerminatePod)


def test_surplus_stopped_pods_terminated_after_stopped_ttl_keeping_the_best():
    a = standby("a", phase_since=NOW - 1000, ready_at=NOW - 100)
    b = standby("b", phase_since=NOW - 1000, ready_at=NOW - 200)
    actions = plan(desired([a, b], policy=Policy(stopped_ttl_s=900)), observed(seen(a, "EXITED"), seen(b, "EXITED")), NOW)
    assert of(actions, TerminatePod) == [TerminatePod("b", "surplus stopped pod past stopped_ttl_s")]


def test_orphan_terminated_only_after_grace_and_foreign_pods_untouched():
    orphan = ObservedPod("rpx", "harper-unknown", "RUNNING")
    foreign = ObservedPod("rpy", "someone-else", "RUNNING")
    sb = standby()
    early = plan(desired([sb], orphans={"rpx": NOW - 10}, orphan_grace_s=60), observed(seen(sb, "EXITED"), orphan, foreign), NOW)
    assert not of(early, TerminateOrphan)
    late = plan(desired([sb], orphans={"rpx": NOW - 61}, orphan_grace_s=60), observed(seen(sb, "EXITED"), orphan, foreign), NOW)
    assert of(late, TerminateOrphan) == [TerminateOrphan("rpx", "harper-unknown")]


def test_creating_intent_is_adopted_when_its_pod_shows_up():
    intent = pod("i", phase=PodPhase.CREATING, runpod_id=None, was_ready=False)
    found = ObservedPod("rp-new", intent.name, "RUNNING")
    update = of(plan(desired([intent]), observed(found), NOW), UpdatePod)[0]
    assert dict(update.changes)["runpod_id"] == "rp-new" and dict(update.changes)["phase"] == PodPhase.STARTING


def test_creating_intent_never_seen_fails_after_grace():
    intent = pod("i", phase=PodPhase.CREATING, runpod_id=None, phase_since=NOW - 61)
    update = of(plan(desired([intent], create_grace_s=60), Observed(), NOW), UpdatePod)[0]
    assert dict(update.changes)["phase"] == PodPhase.FAILED
    failed = replace(intent, phase=PodPhase.FAILED, phase_since=NOW - 30, reason="out of stock")
    assert not of(plan(desired([failed], create_grace_s=60), Observed(), NOW), UpdatePod)  # may still be adopted
    closed = of(plan(desired([replace(failed, phase_since=NOW - 61)], create_grace_s=60), Observed(), NOW), UpdatePod)
    assert closed == [UpdatePod("i", (("phase", PodPhase.TERMINATED), ("phase_since", NOW)), "out of stock")]


def test_unhealthy_ready_pod_is_replaced_after_timeout():
    p = pod("p", unhealthy_since=NOW - 61)
    actions = plan(desired([p], unhealthy_timeout_s=60), observed(seen(p, healthy=False)), NOW)
    assert of(actions, TerminatePod)[0].pod_id == "p"


def test_pod_stuck_starting_is_terminated():
    p = pod("p", phase=PodPhase.STARTING, phase_since=NOW - 1000, was_ready=False)
    actions = plan(desired([p], ready_timeout_s=900), observed(seen(p, healthy=False)), NOW)
    assert TerminatePod("p", "not Ready after 1000s", logs=True) in actions


def test_transition_table_refuses_illegal_moves():
    with pytest.raises(IllegalTransition):
        check_pod_transition(PodPhase.TERMINATED, PodPhase.READY)


# ------------------------------------------------------------------------------------------ properties


@settings(max_examples=150, deadline=None)
@given(
    n_pods=st.integers(0, 12), n_leases=st.integers(0, 12), per_pod=st.integers(1, 3),
    statuses=st.lists(st.sampled_from(["RUNNING", "EXITED", None]), min_size=12, max_size=12),
    healthy=st.lists(st.booleans(), min_size=12, max_size=12),
    assigned=st.lists(st.integers(-1, 11), min_size=12, max_size=12),
)
def test_plan_never_double_books_a_slot_or_stops_a_leased_pod(n_pods, n_leases, per_pod, statuses, healthy, assigned):
    phases = [PodPhase.READY, PodPhase.STOPPED, PodPhase.STARTING]
    pods = [pod(f"p{i}", phase=phases[i % 3]) for i in range(n_pods)]
    leases, used = [], set()
    for i in range(n_leases):
        target = assigned[i]
        if 0 <= target < n_pods and (f"p{target}", 0) not in used and pods[target].phase != PodPhase.STOPPED:
            used.add((f"p{target}", 0))
            leases.append(lease(f"l{i}", LeaseState.READY, f"p{target}", created_at=NOW - 50 + i))
        else:
            leases.append(lease(f"l{i}", created_at=NOW - 50 + i))
    obs = observed(*(seen(p, statuses[i], healthy[i]) for i, p in enumerate(pods) if statuses[i]))
    actions = plan(desired(pods, leases, policy=Policy(sessions_per_pod=per_pod, max_pods=50)), obs, NOW)
    taken = set(used)
    for a in of(actions, AssignLease):
        assert (a.pod_id, a.slot) not in taken
        assert a.slot < per_pod
        taken.add((a.pod_id, a.slot))
    still_leased = {lz.pod_id for lz in leases if lz.pod_id} - {e.lease_id for e in of(actions, EndLease)}
    assigned_now = {a.pod_id for a in of(actions, AssignLease)}
    for stop in of(actions, StopPod):
        assert stop.pod_id not in still_leased | assigned_now
    assert len({a.lease_id for a in of(actions, AssignLease)}) == len(of(actions, AssignLease))


def test_plan_is_deterministic():
    pods = [pod("a"), standby("b"), pod("c", phase=PodPhase.STARTING)]
    leases = [lease("l1"), lease("l2", created_at=NOW)]
    obs = observed(seen(pods[0]), seen(pods[1], "EXITED"), seen(pods[2], healthy=False))
    assert plan(desired(pods, leases), obs, NOW) == plan(desired(pods, leases), obs, NOW)
    assert replace(pods[0]) == pods[0]


# ------------------------------------------------------------------------------ REST v2: errors, stock, quota


def test_pod_in_error_is_replaced_at_once_with_its_log_and_its_leases_move_on():
    serving = pod("p", phase=PodPhase.READY)
    booting = pod("q", phase=PodPhase.STARTING, phase_since=NOW - 5, was_ready=False)
    ready_lease = lease("l1", LeaseState.READY, pod_id="p")
    waiting = lease("l2", LeaseState.PENDING, pod_id="q", created_at=NOW - 0.5)
    failed = replace(seen(serving), failed=True, healthy=False)
    actions = plan(desired([serving, booting], [ready_lease, waiting], policy=Policy(standby_count=0)),
                   observed(failed, replace(seen(booting, healthy=False), failed=True)), NOW)
    assert TerminatePod("p", "RunPod reports the container in ERROR", logs=True) in actions
    assert TerminatePod("q", "RunPod reports the container in ERROR", logs=True) in actions  # long before 900 s
    # A failed pod keeps its phase record until the terminate lands (no "ready -> stopped" on the way).
    assert all("phase" not in dict(u.changes) for u in of(actions, UpdatePod))
    ended = of(actions, EndLease)[0]
    assert ended.lease_id == "l1" and ended.state == LeaseState.FAILED and "ERROR" in ended.reason
    assert of(actions, RequeueLease)[0].lease_id == "l2"
    assert [c.lease_id for c in of(actions, CreatePod)] == ["l2"]  # the waiting lease gets a new pod now


def test_stock_orders_gpu_types_and_skips_none():
    policy = Policy(standby_count=1, gpu_types=[GPU, "NVIDIA L4", "NVIDIA A40"])
    d = desired(policy=policy)
    assert of(plan(replace(d, stock={GPU: "LOW", "NVIDIA L4": "HIGH"}), Observed(), NOW), CreatePod)[0].gpu_type \
        == "NVIDIA L4"  # LOW goes after MEDIUM/HIGH
    assert of(plan(replace(d, stock={GPU: "NONE", "NVIDIA L4": "NONE"}), Observed(), NOW), CreatePod)[0].gpu_type \
        == "NVIDIA A40"  # NONE is skipped; unknown stock is tried
    assert of(plan(replace(d, stock={GPU: "LOW", "NVIDIA L4": "LOW", "NVIDIA A40": "LOW"}), Observed(), NOW),
              CreatePod)[0].gpu_type == GPU  # all LOW: priority order
    all_none = {t: "NONE" for t in policy.gpu_types}
    assert plan(replace(d, stock=all_none), Observed(), NOW) == []


def test_rate_limit_quota_caps_the_provider_calls_of_a_pass():
    leases = [lease(f"l{i}", created_at=NOW - 1 + i / 100) for i in range(10)]
    d = desired(leases=leases, policy=Policy(standby_count=0, max_pods=50))
    assert len(of(plan(d, Observed(), NOW), CreatePod)) == 10
    assert len(of(plan(replace(d, provider_budget=3), Observed(), NOW), CreatePod)) == 3
    assert of(plan(replace(d, provider_budget=0), Observed(), NOW), CreatePod) == []


def test_low_balance_blocks_creates_and_resumes():
    sb = standby()
    d = replace(desired([sb], [lease()], policy=Policy(standby_count=1)), creates_blocked="RunPod balance too low")
    actions = plan(d, observed(seen(sb, "EXITED")), NOW)
    assert not of(actions, CreatePod) and not of(actions, ResumePod)


# --------------------------------------------------------------------------- reasons that tell the truth


@pytest.mark.parametrize(
    ("policy", "unavailable", "reason"),
    [
        (Policy(standby_count=0, paused=True), {}, "paused"),
        (Policy(standby_count=0, max_pods=0), {}, "max_pods 0 reached"),
        (Policy(standby_count=0, budget_usd_per_hour=0.1), {}, "budget $0.10/h would be exceeded"),
        (Policy(standby_count=0, gpu_types=[GPU]), {GPU: NOW + 60},
         f"no usable GPU type: {GPU} refused by RunPod (retry in 60s)"),
    ],
)
def test_a_waiting_lease_says_why_and_the_ones_behind_it_too(policy, unavailable, reason):
    leases = [lease("l1"), lease("l2", created_at=NOW - 0.5)]
    actions = plan(desired(leases=leases, policy=policy, unavailable=unavailable), Observed(), NOW)
    assert of(actions, NoteLease) == [NoteLease("l1", reason), NoteLease("l2", reason)]
    # Said once: the next pass, with the reason stored, does not say it again.
    again = [replace(x, reason=reason) for x in leases]
    assert of(plan(desired(leases=again, policy=policy, unavailable=unavailable), Observed(), NOW), NoteLease) == []


def test_lease_on_a_starting_pod_waits_for_it_and_the_reason_goes_when_granted():
    booting = pod("p", phase=PodPhase.STARTING, phase_since=NOW - 5, was_ready=False)
    waiting = lease("l1", pod_id="p", reason="pod q is gone (vanished from RunPod)")
    actions = plan(desired([booting], [waiting], policy=Policy(standby_count=0)), observed(seen(booting, healthy=False)),
                   NOW)
    assert of(actions, NoteLease) == [NoteLease("l1", "waiting for pod p to become Ready")]
    ready = plan(desired([booting], [waiting], policy=Policy(standby_count=0)), observed(seen(booting)), NOW)
    assert of(ready, GrantLease) == [GrantLease("l1")] and not of(ready, NoteLease)  # the grant clears it


def test_pod_reasons_are_the_current_ones():
    sb = pod("sb", phase=PodPhase.READY, role=PodRole.STANDBY, reason="replenish the standby pool")
    held = lease("l1", LeaseState.READY, pod_id="sb")
    actions = plan(desired([sb], [held], policy=Policy(standby_count=0)), observed(seen(sb)), NOW)
    assert any(("reason", "claimed for a lease") in u.changes for u in of(actions, UpdatePod))
    booting = pod("b", phase=PodPhase.STARTING, was_ready=False, reason="cold create for a lease")
    update = of(plan(desired([booting], policy=Policy(standby_count=0)), observed(seen(booting)), NOW), UpdatePod)[0]
    assert dict(update.changes)["reason"] == "health check passed"
    idle = pod("i", phase=PodPhase.READY, idle_since=NOW - 400, reason="cold create for a lease")
    actions = plan(desired([idle], policy=Policy(standby_count=1, idle_ttl_s=300)), observed(seen(idle)), NOW)
    stop = of(actions, StopPod)[0]
    assert stop.reason.startswith("idle for 400s")


def test_a_lease_left_on_a_stopped_pod_by_an_interrupted_resume_is_requeued():
    """Found by the chaos bench: killed between recording a resume (the lease put on the standby) and putting the
    lease back after the resume failed, the controller left the lease waiting on a stopped pod until
    pending_timeout_s. The next pass puts it back in the queue, which serves it at once."""
    sb = standby("sb", failures=1)
    waiting = lease("l1", pod_id="sb", path=ClaimPath.STANDBY_RESUME)
    actions = plan(desired([sb], [waiting], policy=Policy(standby_count=0)), observed(seen(sb, "EXITED")), NOW)
    assert of(actions, RequeueLease) == [RequeueLease("l1", "pod sb is stopped")]
    assert of(actions, ResumePod) == [ResumePod("sb", "l1", "standby resumed for a lease")]
