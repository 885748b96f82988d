"""plan() with a warm-capacity schedule, on fake time: idle Ready pods held through a window, more started
when there are too few (a standby first, then a create), limits respected, and let go when it closes."""

from datetime import UTC, datetime

from reconciler.domain import (
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
from reconciler.planning import AssignLease, CreatePod, ResumePod, StopPod, UpdatePod, plan
from reconciler.schedule import parse_schedule

GPU = "NVIDIA GeForce RTX 4090"
PRICES = {GPU: 0.69}
OPEN = datetime(2026, 1, 5, 12, 0, tzinfo=UTC).timestamp()  # Monday noon: inside 09:00-17:00
CLOSED = datetime(2026, 1, 5, 17, 0, tzinfo=UTC).timestamp()  # the window has just closed
SCHEDULE = parse_schedule("mon-fri/09:00-17:00=2")


def pod(pid, phase=PodPhase.READY, role=PodRole.SERVING, now=OPEN, **kw) -> Pod:
    base = dict(id=pid, role=role, phase=phase, gpu_type=GPU, created_at=now - 5000, phase_since=now - 3000,
                runpod_id=f"rp{pid}", cost_per_hr=0.69, was_ready=phase in (PodPhase.READY, PodPhase.STOPPED),
                ready_at=now - 4000, idle_since=now - 2000 if phase == PodPhase.READY else None,
                endpoint_host="h" if phase == PodPhase.READY else None,
                endpoint_port=1 if phase == PodPhase.READY else None)
    base.update(kw)
    return Pod(**base)


def seen(p: Pod) -> ObservedPod:
    running = p.phase in (PodPhase.READY, PodPhase.STARTING, PodPhase.CREATING)
    return ObservedPod(runpod_id=p.runpod_id, name=p.name, desired_status="RUNNING" if running else "EXITED",
                       cost_per_hr=0.69, endpoint_host=p.endpoint_host, endpoint_port=p.endpoint_port,
                       healthy=p.phase == PodPhase.READY)


def run(pods, now=OPEN, leases=(), **policy) -> list:
    settings = dict(standby_count=1, idle_ttl_s=300, warm_schedule=SCHEDULE, gpu_types=[GPU]) | policy
    d = Desired(Policy(**settings), Tuning(), tuple(pods), tuple(leases), {}, PRICES)
    return plan(d, Observed({p.name: seen(p) for p in pods}), now)


def kinds(actions) -> list:
    return [a for a in actions if not isinstance(a, UpdatePod)]


def test_idle_pods_the_window_wants_stay_up_past_their_idle_ttl() -> None:
    pods = [pod("a"), pod("b"), pod("s", PodPhase.STOPPED, PodRole.STANDBY)]
    assert kinds(run(pods)) == []  # two idle for 2000 s, TTL 300 s: held
    stops = kinds(run(pods, now=CLOSED))
    assert {a.pod_id for a in stops if isinstance(a, StopPod)} == {"a", "b"}  # window over: parked


def test_only_as_many_as_the_window_wants_are_held() -> None:
    pods = [pod("a", created_at=OPEN - 9000), pod("b", created_at=OPEN - 8000), pod("c"),
            pod("s", PodPhase.STOPPED, PodRole.STANDBY)]
    stops = [a for a in run(pods) if isinstance(a, StopPod)]
    assert [a.pod_id for a in stops] == ["c"]


def test_too_few_warm_pods_resume_a_standby_first_then_create() -> None:
    pods = [pod("s", PodPhase.STOPPED, PodRole.STANDBY)]
    actions = kinds(run(pods))
    assert isinstance(actions[0], ResumePod) and actions[0].pod_id == "s" and actions[0].lease_id is None
    creates = [a for a in actions if isinstance(a, CreatePod)]
    # one more warm pod, and a standby behind them (the resumed one left the pool)
    assert sorted(a.role for a in creates) == [PodRole.SERVING, PodRole.STANDBY]
    assert all(a.lease_id is None for a in creates)


def test_pods_on_their_way_count_and_leased_pods_do_not() -> None:
    starting = pod("n", PodPhase.STARTING, idle_since=None, endpoint_host=None, endpoint_port=None,
                   phase_since=OPEN - 20)
    leased = pod("l", idle_since=None)
    lease = Lease("x", "s-x", LeaseState.READY, OPEN - 100, OPEN + 60, pod_id="l", slot=0, path=ClaimPath.WARM,
                  ready_at=OPEN - 90)
    pods = [pod("a"), starting, leased, pod("s", PodPhase.STOPPED, PodRole.STANDBY)]
    assert kinds(run(pods, leases=[lease])) == []  # a idle + n starting = 2; l serves a session


def test_a_session_takes_a_warm_pod_and_the_schedule_starts_another_in_the_same_pass() -> None:
    lease = Lease("x", "s-x", LeaseState.PENDING, OPEN - 1, OPEN + 60)
    pods = [pod("a"), pod("b"), pod("s", PodPhase.STOPPED, PodRole.STANDBY)]
    actions = kinds(run(pods, leases=[lease]))
    assert isinstance(actions[0], AssignLease) and actions[0].path == ClaimPath.WARM
    assert isinstance(actions[1], ResumePod) and actions[1].pod_id == "s"


def test_a_standby_that_just_became_ready_is_kept_warm_instead_of_parked() -> None:
    standby = pod("s", PodPhase.STARTING, PodRole.STANDBY, was_ready=False, idle_since=None)
    up = ObservedPod(runpod_id="rps", name=standby.name, desired_status="RUNNING", cost_per_hr=0.69,
                     endpoint_host="h", endpoint_port=1, healthy=True)
    d = Desired(Policy(standby_count=1, warm_schedule=parse_schedule("09:00-17:00=1"), gpu_types=[GPU]), Tuning(),
                (standby,), (), {}, PRICES)
    actions = plan(d, Observed({standby.name: up}), OPEN)
    assert not any(isinstance(a, StopPod) for a in actions)
    role = [dict(a.changes).get("role") for a in actions if isinstance(a, UpdatePod) and a.pod_id == "s"]
    assert PodRole.SERVING in role
    assert [a.role for a in actions if isinstance(a, CreatePod)] == [PodRole.STANDBY]  # the pool is refilled


def test_limits_hold_for_warm_capacity_too() -> None:
    pods = [pod("s", PodPhase.STOPPED, PodRole.STANDBY)]
    assert kinds(run(pods, paused=True)) == []
    assert kinds(run(pods, budget_usd_per_hour=0.5)) == []
    assert [type(a) for a in kinds(run(pods, max_pods=2))] == [ResumePod, CreatePod]  # no standby behind them
    # a session's pod holds one of the two GPUs max_pods allows: one warm pod more, and nothing else
    lease = Lease("x", "s-x", LeaseState.READY, OPEN - 100, OPEN + 60, pod_id="x", slot=0, path=ClaimPath.WARM,
                  ready_at=OPEN - 90)
    busy = [*pods, pod("x", idle_since=None)]
    assert [type(a) for a in kinds(run(busy, leases=[lease], max_pods=2))] == [ResumePod]


def test_a_window_that_could_never_be_kept_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="warm_schedule keeps 3 pods in a window, above max_pods 2"):
        Policy(max_pods=2, standby_count=0, warm_schedule=parse_schedule("09:00-17:00=1,12:00-13:00=3"))


def test_outside_every_window_nothing_is_kept() -> None:
    pods = [pod("a"), pod("s", PodPhase.STOPPED, PodRole.STANDBY)]
    night = datetime(2026, 1, 5, 23, 0, tzinfo=UTC).timestamp()
    assert [a.pod_id for a in run([*pods[:1], pods[1]], now=night) if isinstance(a, StopPod)] == ["a"]
    weekend = datetime(2026, 1, 10, 12, 0, tzinfo=UTC).timestamp()
    assert [a.pod_id for a in run(pods, now=weekend) if isinstance(a, StopPod)] == ["a"]
