"""The cost simulator: the seed's figures under the seed's assumptions, books that add up, skipping idle ticks
that changes no decision, workloads, schedules and the sweep's recommendation."""

import itertools
import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from reconciler.domain import Policy
from reconciler.rates import CONTAINER_DISK_RATE, HOURS_PER_MONTH, VOLUME_RUNNING_RATE, VOLUME_STOPPED_RATE
from reconciler.schedule import parse_schedule
from reconciler.simulate.engine import SimConfig, Simulation
from reconciler.simulate.model import (
    DAY,
    RTX_4090,
    Arrivals,
    CloudModel,
    Lengths,
    Session,
    Span,
    Workload,
    sessions,
    start_of,
)
from reconciler.simulate.report import Summary, WaitStats, percentile, summarise
from reconciler.simulate.sweep import Row, Variant, grid, mark_frontier, recommend, sweep

START = start_of("UTC")
UNCAPPED = dict(max_pods=1000, budget_usd_per_hour=10_000)
SEED_CLOUD = CloudModel(prices={RTX_4090: 0.80}, resume_s=Span(0, 0), create_s=Span(0, 0), p_host_busy=0.0,
                        p_out_of_stock=0.0)


def simulate(workload: Workload, policy: Policy, cloud: CloudModel | None = None, seed: int = 1,
             exact: bool = False, interval_s: float = 5.0, record: bool = False):
    cloud = cloud or CloudModel()
    todo = sessions(workload, START, random.Random(seed))
    config = SimConfig(policy=policy, cloud=cloud, exact=exact, interval_s=interval_s)
    return Simulation(config, todo, START, START + workload.days * DAY, seed, record=record).run()


@pytest.mark.parametrize(("per_day", "minutes", "seed_gpu_usd"), [(10, 30, 120.0), (100, 15, 600.0)])
def test_the_seeds_assumptions_reproduce_its_gpu_figures(per_day, minutes, seed_gpu_usd) -> None:
    # idle TTL 0, zero boot, a pod per session (no standby, one session per pod), uniform arrivals, $0.80/h
    policy = Policy(idle_ttl_s=0, standby_count=0, sessions_per_pod=1, gpu_types=[RTX_4090], **UNCAPPED)
    s = summarise(simulate(Workload(per_day, minutes, arrivals=Arrivals.UNIFORM, days=30), policy, SEED_CLOUD))
    assert s.gpu_usd == pytest.approx(seed_gpu_usd, rel=0.01)
    assert s.by_kind_usd["gpu_leased"] == pytest.approx(seed_gpu_usd, rel=0.001)  # talk time exactly
    assert s.by_kind_usd["gpu_booting"] == 0.0
    assert 0 < s.storage_usd < 0.03 * seed_gpu_usd  # the seed's ~$2 and ~$10: small beside the GPU
    assert s.sessions == per_day * 30 and s.sessions_without_pod == 0


def test_every_kind_adds_up_to_the_total_and_hours_match_dollars() -> None:
    workload = Workload(300, 20, lengths=Lengths.EXPONENTIAL, arrivals=Arrivals.POISSON, days=3)
    s = summarise(simulate(workload, Policy(gpu_types=[RTX_4090], **UNCAPPED)))
    assert sum(s.by_kind_usd.values()) == pytest.approx(s.cost_usd, abs=1e-3)
    assert s.gpu_usd + s.storage_usd == pytest.approx(s.cost_usd, abs=1e-3)
    gpu_kinds = {k: v for k, v in s.by_kind_usd.items() if k.startswith("gpu_")}
    assert sum(gpu_kinds.values()) == pytest.approx(s.gpu_usd, abs=1e-3)
    for usage in ("leased", "idle", "booting"):  # one price: dollars are hours x $0.80
        assert s.by_kind_usd[f"gpu_{usage}"] == pytest.approx(s.gpu_hours_by_kind[usage] * 0.80, abs=0.01)
    assert sum(s.gpu_hours_by_kind.values()) == pytest.approx(s.gpu_hours, abs=0.01)
    assert all(v > 0 for v in s.by_kind_usd.values())  # the honest figures: idle tail, boot, stopped volume


def test_storage_is_billed_at_the_shared_rates() -> None:
    # one pod that is never used: a standby created at start, Ready after 100 s, then stopped for the day
    policy = Policy(standby_count=1, gpu_types=[RTX_4090], **UNCAPPED)
    cloud = CloudModel(create_s=Span(100, 100), p_out_of_stock=0.0, volume_gb=50, container_disk_gb=10)
    run = simulate(Workload(0, 10, days=1), policy, cloud)
    per_s = 1 / (HOURS_PER_MONTH * 3600)
    running = 100.0 * (50 * VOLUME_RUNNING_RATE + 10 * CONTAINER_DISK_RATE) * per_s
    stopped = (DAY - 100.0) * 50 * VOLUME_STOPPED_RATE * per_s
    assert run.books.usd["storage_running"] == pytest.approx(running)
    assert run.books.usd["storage_stopped"] == pytest.approx(stopped)
    assert run.books.usd["gpu_booting"] == pytest.approx(100 * 0.80 / 3600)


@pytest.mark.parametrize("case", ["failures", "schedule_and_two_slots", "caps"])
def test_skipping_quiet_ticks_changes_no_decision(case) -> None:
    """The simulator runs a pass only where one can change something; the daemon runs one every tick. Both
    schedules of passes give the same decisions at the same moments, and the same dollars."""
    cloud = CloudModel(p_host_busy=0.2, p_out_of_stock=0.1, resume_s=Span(20, 90), create_s=Span(60, 200))
    workload = Workload(250, 12, lengths=Lengths.EXPONENTIAL, arrivals=Arrivals.POISSON, days=1)
    policy = {
        "failures": Policy(idle_ttl_s=60, gpu_types=[RTX_4090], **UNCAPPED),
        "schedule_and_two_slots": Policy(
            idle_ttl_s=120, standby_count=2, sessions_per_pod=2, gpu_types=[RTX_4090], **UNCAPPED,
            warm_schedule=parse_schedule("mon-fri/06:00-11:30=2,12:00-20:00=1")),
        "caps": Policy(idle_ttl_s=0, standby_count=0, max_pods=3, gpu_types=[RTX_4090]),
    }[case]
    exact = simulate(workload, policy, cloud, seed=5, exact=True, interval_s=10, record=True)
    fast = simulate(workload, policy, cloud, seed=5, interval_s=10, record=True)
    assert fast.passes < exact.passes / 5
    assert fast.log == exact.log
    assert fast.books == exact.books


def test_runs_repeat_with_their_seed() -> None:
    workload = Workload(200, 10, lengths=Lengths.LOGNORMAL, arrivals=Arrivals.POISSON, days=2)
    policy = Policy(gpu_types=[RTX_4090], **UNCAPPED)
    one, again = (summarise(simulate(workload, policy, seed=3)) for _ in range(2))
    other = summarise(simulate(workload, policy, seed=4))
    assert one == again and one != other


def test_workloads() -> None:
    uniform = sessions(Workload(96, 10, days=2), START, random.Random(1))
    assert len(uniform) == 192 and uniform[0].arrival == START + 450
    assert {round(b.arrival - a.arrival, 6) for a, b in itertools.pairwise(uniform)} == {900.0}
    poisson = sessions(Workload(500, 10, arrivals=Arrivals.POISSON, days=10), START, random.Random(1))
    assert 4800 < len(poisson) < 5200
    tz = "America/New_York"
    start = start_of(tz)
    hours = sessions(Workload(200, 10, arrivals=Arrivals.BUSINESS_HOURS, days=7, timezone=tz), start,
                     random.Random(2))
    local = [datetime.fromtimestamp(s.arrival, ZoneInfo(tz)) for s in hours]
    assert all(9 <= t.hour < 17 for t in local) and 1200 < len(hours) < 1600
    lengths = sessions(Workload(2000, 10, lengths=Lengths.LOGNORMAL, days=2), START, random.Random(3))
    assert sum(s.length_s for s in lengths) / len(lengths) == pytest.approx(600, rel=0.05)


def test_bad_model_settings_are_refused() -> None:
    assert Span.parse("45") == Span(45, 45) and Span.parse("30-60") == Span(30, 60)
    for bad in ("", "a", "60-30", "-5"):
        with pytest.raises(ValueError):
            Span.parse(bad)
    with pytest.raises(ValueError, match="probability"):
        CloudModel(p_host_busy=1.5)
    with pytest.raises(ValueError):
        Workload(10, 0)


def test_a_business_hours_window_serves_business_hours_warm() -> None:
    workload = Workload(80, 15, arrivals=Arrivals.BUSINESS_HOURS, days=7)
    base = Policy(idle_ttl_s=120, standby_count=1, gpu_types=[RTX_4090], **UNCAPPED)
    scheduled = base.model_copy(update={"warm_schedule": parse_schedule("09:00-17:00=2")})
    without, with_window = (summarise(simulate(workload, p, seed=9)) for p in (base, scheduled))
    assert with_window.wait_p95_s < 1.0 < without.wait_p95_s
    assert with_window.wait_by_path["warm"].n > 0.9 * with_window.sessions
    assert with_window.by_kind_usd["gpu_idle"] > without.by_kind_usd["gpu_idle"]  # what it costs


def test_the_bridge_hides_the_wait() -> None:
    run = Simulation(SimConfig(policy=Policy(standby_count=0, gpu_types=[RTX_4090]),
                               cloud=CloudModel(create_s=Span(120, 120), p_out_of_stock=0.0)),
                     [Session(START + 100, 60)], START, START + 3600).run()
    s = summarise(run, bridge_start_s=0.5)
    assert s.wait_by_path["cold_create"].n == 1 and s.wait_max_s == pytest.approx(120, abs=5)
    assert s.perceived_max_s == 0.5


def _row(cost, p95, no_pod=0, ttl=0.0) -> Row:
    s = Summary(days=30, sessions=1, cost_usd=cost, gpu_usd=cost, storage_usd=0, by_kind_usd={}, gpu_hours=0,
                gpu_hours_by_kind={}, wait_p50_s=0, wait_p95_s=p95, wait_max_s=p95, wait_by_path={},
                perceived_p50_s=0, perceived_p95_s=0, perceived_max_s=0, pods_created=0, peak_gpu_pods=0,
                resume_failures=0, create_failures=0, sessions_without_pod=no_pod, passes=0, simulated_usd=cost)
    return Row(Variant(ttl, 1, 0, parse_schedule("none")), s)


def test_the_frontier_and_the_recommendation() -> None:
    rows = mark_frontier([_row(300, 60), _row(200, 90), _row(250, 95), _row(400, 1.5), _row(350, 1.0, no_pod=3),
                          _row(500, 0.0)])
    assert [(r.summary.cost_usd, r.frontier) for r in rows] == [
        (200, True), (250, False), (300, True), (350, False), (400, True), (500, True)]
    assert recommend(rows, 2.0).summary.cost_usd == 400  # 350 is faster but left sessions without a pod
    assert recommend(rows, 60).summary.cost_usd == 300
    assert recommend(rows, -1) is None
    assert percentile([], 95) == 0 and percentile([1, 2, 3, 4], 50) == 2.5
    assert WaitStats.of([3.0, 1.0, 2.0]) == WaitStats(3, 2.0, 2.9, 3.0)


def test_a_sweep_finds_the_cheapest_policy_that_meets_the_target() -> None:
    workload = Workload(40, 15, arrivals=Arrivals.UNIFORM, days=3)
    todo = sessions(workload, START, random.Random(1))
    variants = grid([0.0, 3600.0], [0, 1], [0, 1], [parse_schedule("none")])
    base = SimConfig(policy=Policy(gpu_types=[RTX_4090], **UNCAPPED), cloud=CloudModel(p_host_busy=0.0))
    rows = sweep(base, variants, todo, START, START + 3 * DAY, seed=1)
    assert len(rows) == 8 and [r.summary.cost_usd for r in rows] == sorted(r.summary.cost_usd for r in rows)
    by = {(r.variant.idle_ttl_s, r.variant.standby, r.variant.hot_spares): r.summary for r in rows}
    assert by[(0.0, 0, 0)].wait_p95_s > 300  # every session cold-creates
    assert 30 <= by[(0.0, 1, 0)].wait_p95_s <= 65  # a standby resumes in 30-60 s
    assert by[(0.0, 0, 1)].wait_p95_s == 0  # a hot spare: the warm path
    chosen = recommend(rows, 2.0)
    assert chosen is not None and chosen.summary.wait_p95_s <= 2.0
    assert all(r.summary.cost_usd >= chosen.summary.cost_usd for r in rows if r.meets(2.0))
