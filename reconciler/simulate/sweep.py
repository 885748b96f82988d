"""Policy sweep: the same sessions under every combination of idle TTL, standby count, hot spares and warm
schedule; the cost/wait table, its frontier, and the cheapest policy that meets a wait target.

Every run sees the same arrivals and the same seed for RunPod's draws, so differences between rows come from
the policy. "Hot spares" are idle Ready pods kept all day: a 00:00-24:00 window of the warm schedule, beside
the schedule's own windows (the larger count wins while both are open). A policy *meets* the target when its
lease-wait p95 is at most ``target_p95_s`` and no session went without a pod. The frontier holds the
policies no other policy beats on both cost and p95 wait.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..domain import Policy
from ..schedule import WarmSchedule, WarmWindow, describe
from .engine import SimConfig, Simulation
from .model import Session
from .report import Summary, summarise


@dataclass(frozen=True)
class Variant:
    idle_ttl_s: float
    standby: int
    hot_spares: int
    schedule: WarmSchedule

    def label(self) -> str:
        return (f"idle TTL {self.idle_ttl_s:g} s, standby {self.standby}, hot spares {self.hot_spares}, "
                f"schedule {describe(self.schedule)}")


def warm_schedule(schedule: WarmSchedule, hot_spares: int) -> WarmSchedule:
    """``schedule`` with an all-day window of ``hot_spares`` pods added (none when 0)."""
    if hot_spares <= 0:
        return schedule
    all_day = WarmWindow(start="00:00", end="24:00", pods=hot_spares)
    return schedule.model_copy(update={"windows": (*schedule.windows, all_day)})


def apply(policy: Policy, v: Variant) -> Policy:
    return policy.model_copy(update={
        "idle_ttl_s": v.idle_ttl_s, "standby_count": v.standby,
        "warm_schedule": warm_schedule(v.schedule, v.hot_spares),
    })


@dataclass(frozen=True)
class Row:
    variant: Variant
    summary: Summary
    frontier: bool = False

    def meets(self, target_p95_s: float) -> bool:
        return self.summary.wait_p95_s <= target_p95_s and self.summary.sessions_without_pod == 0


def grid(
    idle_ttls: list[float], standbys: list[int], spares: list[int], schedules: list[WarmSchedule]
) -> list[Variant]:
    return [Variant(*combo) for combo in itertools.product(idle_ttls, standbys, spares, schedules)]


def sweep(
    base: SimConfig, variants: list[Variant], sessions: list[Session], start: float, end: float, seed: int,
    bridge_start_s: float = 0.0, progress: Callable[[float], None] | None = None,
) -> list[Row]:
    rows = []
    for i, v in enumerate(variants):
        config = SimConfig(policy=apply(base.policy, v), tuning=base.tuning, cloud=base.cloud,
                           interval_s=base.interval_s, repass_gap_s=base.repass_gap_s)
        inner = None if progress is None else (lambda f, i=i: progress((i + f) / len(variants)))
        run = Simulation(config, sessions, start, end, seed, progress=inner).run()
        rows.append(Row(v, summarise(run, bridge_start_s)))
        if progress is not None:
            progress((i + 1) / len(variants))
    return mark_frontier(rows)


def mark_frontier(rows: list[Row]) -> list[Row]:
    """Rows sorted by cost, each marked if no other row is at least as cheap and as fast and better in one."""
    ordered = sorted(rows, key=lambda r: (r.summary.cost_usd, r.summary.wait_p95_s))
    out, best_wait = [], float("inf")
    for row in ordered:
        on = row.summary.wait_p95_s < best_wait and row.summary.sessions_without_pod == 0
        if on:
            best_wait = row.summary.wait_p95_s
        out.append(Row(row.variant, row.summary, on))
    return out


def recommend(rows: list[Row], target_p95_s: float) -> Row | None:
    """The cheapest row that meets the target (``rows`` sorted by cost, as ``mark_frontier`` leaves them)."""
    return next((row for row in rows if row.meets(target_p95_s)), None)


def table(rows: list[Row], target_p95_s: float, chosen: Row | None) -> str:
    head = (f"{'':2}{'idle TTL s':>10} {'standby':>7} {'spares':>6} {'schedule':<22} {'$/month':>9} {'GPU $':>9} "
            f"{'storage $':>9} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'bridge p95':>10} {'no pod':>6}")
    lines = [head]
    for row in rows:
        v, s = row.variant, row.summary
        mark = "->" if row is chosen else ("* " if row.frontier else "  ")
        lines.append(
            f"{mark}{v.idle_ttl_s:10g} {v.standby:7d} {v.hot_spares:6d} {describe(v.schedule):<22.22} "
            f"{s.cost_usd:9.2f} {s.gpu_usd:9.2f} {s.storage_usd:9.2f} {s.wait_p50_s:7.1f} {s.wait_p95_s:7.1f} "
            f"{s.wait_max_s:7.1f} {s.perceived_p95_s:10.1f} {s.sessions_without_pod:6d}"
        )
    lines.append("(* on the cost/wait frontier; -> recommended: the cheapest with lease-wait p95 <= "
                 f"{target_p95_s:g} s and every session served)")
    return "\n".join(lines)


def plot(rows: list[Row], target_p95_s: float, chosen: Row | None, path: Path, title: str) -> Path:
    """The frontier as a PNG (matplotlib, the ``sim`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the frontier plot needs matplotlib: pip install 'harper-voice-pods[sim]'") from e
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    served = [r for r in rows if r.summary.sessions_without_pod == 0]
    ax.scatter([r.summary.wait_p95_s for r in served], [r.summary.cost_usd for r in served], s=18,
               color="#9aa5b1", label="policies swept")
    front = sorted((r for r in rows if r.frontier), key=lambda r: r.summary.wait_p95_s)
    ax.step([r.summary.wait_p95_s for r in front], [r.summary.cost_usd for r in front], where="post",
            color="#1f77b4", marker="o", markersize=5, label="frontier (cheapest for its wait)")
    ax.axvline(target_p95_s, color="#d62728", linestyle="--", linewidth=1, label=f"target p95 {target_p95_s:g} s")
    if chosen is not None:
        s = chosen.summary
        ax.scatter([s.wait_p95_s], [s.cost_usd], s=160, marker="*", color="#d62728", zorder=5,
                   label=f"recommended: ${s.cost_usd:,.0f}/month")
        ax.annotate(chosen.variant.label(), (s.wait_p95_s, s.cost_usd), textcoords="offset points",
                    xytext=(10, -14), fontsize=7)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("lease wait p95 (s, symlog)")
    ax.set_ylabel("cost per 30-day month (USD)")
    ax.margins(y=0.08)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
