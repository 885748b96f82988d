"""``python -m reconciler simulate``: what a policy costs per month and how long users wait, or a sweep.

Flags build a ``Workload``, a ``CloudModel`` and a ``Policy`` (the policy defaults of a new database, except
``--max-pods`` and ``--budget``, which do not cap a simulation unless given); the run or sweep prints a
report, or one JSON object with ``--json``. ``--seed-assumptions`` sets the seed's pricing assumptions
(idle TTL 0, zero boot, no standby, no capacity failures) to reproduce its table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from ..domain import Policy, Tuning
from ..schedule import describe, parse_schedule
from .engine import SimConfig, Simulation
from .model import DAY, RTX_4090, Arrivals, CloudModel, Lengths, Span, Workload, sessions, start_of
from .report import render, summarise
from .sweep import Variant, grid, plot, recommend, sweep, table, warm_schedule

DEFAULT_PLOT = "sim-frontier.png"


class Progress:
    """A bar on stderr for runs that take a while (only on a terminal, or when forced)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled = label, enabled
        self._shown = -1

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        percent = int(max(0.0, min(1.0, fraction)) * 100)
        if percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {percent:3d}%")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            self(1.0)
            sys.stderr.write("\n")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="cost and wait of a policy on simulated time (the controller's own plan())",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("workload")
    w.add_argument("--sessions-per-day", type=float, default=100.0, help="sessions a day (default 100)")
    w.add_argument("--session-minutes", type=float, default=15.0, help="mean session length (default 15)")
    w.add_argument("--session-dist", choices=[x.value for x in Lengths], default="fixed",
                   help="session length distribution around the mean (default fixed)")
    w.add_argument("--arrivals", choices=[x.value for x in Arrivals], default="uniform",
                   help="uniform: evenly spaced; poisson; business-hours: 09:00-17:00 in --tz (default uniform)")
    w.add_argument("--days", type=float, default=30.0, help="simulated days (default 30)")
    w.add_argument("--tz", default="UTC", help="time zone of business hours and --schedule (default UTC)")
    w.add_argument("--seed", type=int, default=1, help="seed for arrivals, lengths and RunPod's draws (default 1)")
    c = p.add_argument_group("RunPod model")
    c.add_argument("--gpu-price", type=float, default=0.80, help="USD per GPU-hour (default 0.80, the seed's)")
    c.add_argument("--gpu-type", default=RTX_4090, help=f"GPU type (default {RTX_4090})")
    c.add_argument("--resume-seconds", default="30-60", help="stopped pod to Ready: S or LO-HI (default 30-60)")
    c.add_argument("--create-seconds", default="300-480", help="new pod to Ready: S or LO-HI (default 300-480)")
    c.add_argument("--p-host-busy", type=float, default=0.05, help="chance a resume finds the host full (0.05)")
    c.add_argument("--p-out-of-stock", type=float, default=0.02, help="chance a create is out of stock (0.02)")
    c.add_argument("--volume-gb", type=float, default=20.0, help="pod volume (default 20, HARPER_POD_VOLUME_GB)")
    c.add_argument("--container-disk-gb", type=float, default=20.0, help="container disk (default 20)")
    q = p.add_argument_group("policy")
    q.add_argument("--idle-ttl", type=float, default=Policy().idle_ttl_s, help="seconds (default 300)")
    q.add_argument("--standby", type=int, default=Policy().standby_count, help="stopped standbys (default 1)")
    q.add_argument("--hot-spares", type=int, default=0, help="idle Ready pods kept all day (default 0)")
    q.add_argument("--schedule", default="none",
                   help="warm windows in --tz: [mon-fri/]09:00-17:00=2,... (default none)")
    q.add_argument("--stopped-ttl", type=float, default=Policy().stopped_ttl_s, help="seconds (default 900)")
    q.add_argument("--sessions-per-pod", type=int, default=1, help="default 1")
    q.add_argument("--max-pods", type=int, default=1000, help="default 1000 (no cap; the daemon's default is 10)")
    q.add_argument("--budget", type=float, default=10_000.0, help="USD/h cap (default 10000: no cap)")
    q.add_argument("--interval", type=float, default=5.0, help="seconds between passes (default 5)")
    q.add_argument("--seed-assumptions", action="store_true",
                   help="the seed's pricing: idle TTL 0, zero boot, no standby, no capacity failures")
    o = p.add_argument_group("output")
    o.add_argument("--bridge-start-seconds", type=float, default=0.0,
                   help="how long the client's local CPU server takes to take a session (default 0: kept warm)")
    o.add_argument("--json", action="store_true", help="one JSON object")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: on a terminal)")
    s = p.add_argument_group("sweep")
    s.add_argument("--sweep", action="store_true", help="every combination of the --sweep-* lists")
    s.add_argument("--sweep-idle-ttl", default="0,60,300,900", help="seconds (default 0,60,300,900)")
    s.add_argument("--sweep-standby", default="0,1,2", help="default 0,1,2")
    s.add_argument("--sweep-hot-spares", default="0,1", help="default 0,1")
    s.add_argument("--sweep-schedule", default="none;mon-fri/09:00-17:00=1",
                   help="schedules separated by ';' (default 'none;mon-fri/09:00-17:00=1')")
    s.add_argument("--target-p95", type=float, default=2.0, help="lease-wait p95 target in seconds (default 2)")
    s.add_argument("--plot", default=DEFAULT_PLOT, help=f"frontier PNG (default {DEFAULT_PLOT}; '' for none)")
    p.set_defaults(func=main)


def _build(args: argparse.Namespace) -> tuple[SimConfig, Workload]:
    if args.seed_assumptions:
        args.idle_ttl, args.standby, args.hot_spares = 0.0, 0, 0
        args.resume_seconds = args.create_seconds = "0"
        args.p_host_busy = args.p_out_of_stock = 0.0
    schedule = warm_schedule(parse_schedule(args.schedule, args.tz), args.hot_spares)
    policy = Policy(
        standby_count=args.standby, idle_ttl_s=args.idle_ttl, stopped_ttl_s=args.stopped_ttl,
        sessions_per_pod=args.sessions_per_pod, max_pods=args.max_pods, budget_usd_per_hour=args.budget,
        gpu_types=[args.gpu_type], warm_schedule=schedule,
    )
    cloud = CloudModel(
        prices={args.gpu_type: args.gpu_price}, resume_s=Span.parse(args.resume_seconds),
        create_s=Span.parse(args.create_seconds), p_host_busy=args.p_host_busy, p_out_of_stock=args.p_out_of_stock,
        volume_gb=args.volume_gb, container_disk_gb=args.container_disk_gb,
    )
    workload = Workload(
        sessions_per_day=args.sessions_per_day, session_minutes=args.session_minutes,
        lengths=Lengths(args.session_dist), arrivals=Arrivals(args.arrivals), days=args.days, timezone=args.tz,
    )
    return SimConfig(policy=policy, tuning=Tuning(), cloud=cloud, interval_s=args.interval), workload


def _header(config: SimConfig, workload: Workload, count: int) -> list[str]:
    w, m, pol = workload, config.cloud, config.policy
    prices = ", ".join(f"{t} ${p:.2f}/h" for t, p in m.prices.items())
    return [
        f"workload: {count} sessions over {w.days:g} days ({w.sessions_per_day:g}/day, {w.arrivals} arrivals, "
        f"{w.session_minutes:g} min {w.lengths})",
        f"RunPod:   {prices}; resume {m.resume_s} s, create {m.create_s} s, host busy {m.p_host_busy:.0%}, "
        f"out of stock {m.p_out_of_stock:.0%}; volume {m.volume_gb:g} GB + container disk {m.container_disk_gb:g} GB",
        f"policy:   idle TTL {pol.idle_ttl_s:g} s, standby {pol.standby_count}, warm schedule "
        f"{describe(pol.warm_schedule)}, stopped TTL {pol.stopped_ttl_s:g} s, {pol.sessions_per_pod} session(s)/pod, "
        f"passes every {config.interval_s:g} s",
    ]


def main(args: argparse.Namespace) -> int:
    try:
        config, workload = _build(args)
        variants = _variants(args) if args.sweep else []
    except ValueError as e:  # pydantic's ValidationError is one
        print(f"simulate: {_first_line(e)}", file=sys.stderr)
        return 2
    start = start_of(workload.timezone)
    end = start + workload.days * DAY
    todo = sessions(workload, start, random.Random(args.seed))
    show = sys.stderr.isatty() if args.progress is None else args.progress
    wall, cpu = time.perf_counter(), time.process_time()
    if args.sweep:
        return _sweep(args, config, workload, variants, todo, start, end, show)
    bar = Progress("simulating", show)
    run = Simulation(config, todo, start, end, args.seed, progress=bar).run()
    bar.done()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    summary = summarise(run, args.bridge_start_seconds)
    if args.json:
        body = {**summary.as_dict(), "elapsed_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "policy": config.policy.model_dump(mode="json"), "workload": vars_of(workload),
                "model": {**vars_of(config.cloud), "resume_s": str(config.cloud.resume_s),
                          "create_s": str(config.cloud.create_s)}}
        print(json.dumps(body, indent=2))
        return 0
    print(render(summary, _header(config, workload, len(todo)), args.bridge_start_seconds))
    print(f"simulated {workload.days:g} days in {wall:.2f} s ({cpu:.2f} s CPU, {run.passes:,} planning passes)")
    return 0


def _variants(args: argparse.Namespace) -> list[Variant]:
    def numbers(text: str, kind: type) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"{text!r} must be a comma-separated list of numbers") from None

    schedules = [parse_schedule(s, args.tz) for s in args.sweep_schedule.split(";")]
    return grid(numbers(args.sweep_idle_ttl, float), numbers(args.sweep_standby, int),
                numbers(args.sweep_hot_spares, int), schedules)


def _sweep(args, config, workload, variants, todo, start, end, show) -> int:
    bar = Progress(f"sweeping {len(variants)} policies", show)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = sweep(config, variants, todo, start, end, args.seed, args.bridge_start_seconds, progress=bar)
    bar.done()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    chosen = recommend(rows, args.target_p95)
    png = None
    if args.plot:
        title = (f"{workload.sessions_per_day:g} sessions/day x {workload.session_minutes:g} min, "
                 f"{workload.arrivals}: cost vs lease wait")
        png = plot(rows, args.target_p95, chosen, Path(args.plot), title)
    if args.json:
        body = {
            "target_p95_s": args.target_p95, "plot": str(png) if png else None,
            "elapsed_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "recommended": _row_json(chosen) if chosen else None,
            "runs": [_row_json(r) for r in rows],
        }
        print(json.dumps(body, indent=2))
        return 0
    print("\n".join(_header(config, workload, len(todo))[:2]))
    print()
    print(table(rows, args.target_p95, chosen))
    print()
    if chosen is None:
        fastest = min(rows, key=lambda r: (r.summary.sessions_without_pod, r.summary.wait_p95_s))
        print(f"no policy meets p95 <= {args.target_p95:g} s; the fastest: {fastest.variant.label()} "
              f"(p95 {fastest.summary.wait_p95_s:.1f} s, ${fastest.summary.cost_usd:,.2f}/month)")
    else:
        s = chosen.summary
        print(f"recommended: {chosen.variant.label()}: ${s.cost_usd:,.2f}/month, lease wait p50 {s.wait_p50_s:.1f} s "
              f"p95 {s.wait_p95_s:.1f} s (with the bridge: p95 {s.perceived_p95_s:.1f} s)")
    if png:
        print(f"frontier plot: {png}")
    print(f"swept {len(rows)} policies in {wall:.2f} s ({cpu:.2f} s CPU)")
    return 0


def _row_json(row) -> dict:
    v = row.variant
    return {"idle_ttl_s": v.idle_ttl_s, "standby": v.standby, "hot_spares": v.hot_spares,
            "schedule": describe(v.schedule), "frontier": row.frontier, **row.summary.as_dict()}


def vars_of(obj: object) -> dict:
    return {k: (str(v) if not isinstance(v, int | float | str | dict | None) else v) for k, v in vars(obj).items()}


def _first_line(e: Exception) -> str:
    text = str(e)
    if hasattr(e, "errors"):  # pydantic: the first error, with its field
        err = e.errors()[0]  # type: ignore[attr-defined]
        where = ".".join(str(x) for x in err.get("loc", ()))
        return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
    return text.splitlines()[0]
