"""Simulator speed: 30 days of 1,000 sessions a day through the controller's own plan().

    .venv/bin/python bench/simulate.py [--runs 3] [--days 30] [--sessions-per-day 1000]

Runs the default policy and RunPod model (idle TTL 300 s, one standby, resume 30-60 s, create 5-8 min,
capacity failures) on 15-minute sessions, Poisson and uniform arrivals, ``--runs`` times each, and prints the
median wall and CPU time, the planning passes, the share of the time spent inside ``plan()``, and the load
average of the machine while it ran (the simulator is single-threaded: others' work slows the wall clock).
Target: under 10 s for 30 days x 1,000 sessions a day. Also: one simulated day with a pass at every tick
(as the daemon runs them) beside the same day with quiet ticks skipped, for the number of passes saved.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler import planning
from reconciler.domain import Policy
from reconciler.simulate import engine
from reconciler.simulate.engine import SimConfig, Simulation
from reconciler.simulate.model import DAY, RTX_4090, Arrivals, Workload, sessions, start_of

_planning_s = 0.0


def _timed_plan(*args):
    global _planning_s
    started = time.perf_counter()
    try:
        return planning.plan(*args)
    finally:
        _planning_s += time.perf_counter() - started


def one(per_day: float, days: float, arrivals: Arrivals, exact: bool = False, time_plan: bool = False):
    global _planning_s
    start = start_of("UTC")
    todo = sessions(Workload(per_day, 15, arrivals=arrivals, days=days), start, random.Random(1))
    config = SimConfig(policy=Policy(max_pods=1000, budget_usd_per_hour=10_000, gpu_types=[RTX_4090]),
                       exact=exact)
    engine.plan = _timed_plan if time_plan else planning.plan
    _planning_s = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    run = Simulation(config, todo, start, start + days * DAY, seed=1).run()
    return time.perf_counter() - wall, time.process_time() - cpu, run.passes, len(todo), _planning_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--sessions-per-day", type=float, default=1000)
    args = parser.parse_args()
    print(f"simulate {args.days:g} days x {args.sessions_per_day:g} sessions/day (15 min), median of {args.runs}")
    for arrivals in (Arrivals.POISSON, Arrivals.UNIFORM):
        load = os.getloadavg()[0]
        results = [one(args.sessions_per_day, args.days, arrivals) for _ in range(args.runs)]
        wall = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        _, _, passes, count, _ = results[0]
        timed = one(args.sessions_per_day, min(args.days, 3), arrivals, time_plan=True)
        share = timed[4] / timed[0]
        verdict = "under" if wall < 10 else "OVER"
        print(f"  {arrivals.value:8} {count:,} sessions: {wall:6.2f} s wall ({verdict} 10 s), {cpu:6.2f} s CPU, "
              f"{passes:,} passes ({passes / count:.2f} per session), ~{share:.0%} of the time in plan(); "
              f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    exact = one(args.sessions_per_day, 1, Arrivals.POISSON, exact=True)
    quiet = one(args.sessions_per_day, 1, Arrivals.POISSON)
    print(f"  one day, a pass at every 5 s tick: {exact[2]:,} passes in {exact[0]:.2f} s; quiet ticks skipped: "
          f"{quiet[2]:,} passes in {quiet[0]:.2f} s (same decisions: tests/unit/test_simulate.py)")


if __name__ == "__main__":
    main()
