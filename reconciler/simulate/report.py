"""What a simulation run comes to: cost per 30-day month by kind, GPU-hours, waits by path, and their text.

Figures are scaled to a 30-day month (``x 30 / days simulated``), as the seed's $120 and $600 are. The kinds
add up to the total by construction: every second of every pod at RunPod is charged to exactly one of
GPU leased (a Ready pod serving at least one session), GPU idle (a Ready pod serving none: the idle tail,
warm and scheduled pods, a pod Ready before its lease is granted), GPU booting (from a create or resume until
``/health`` answers), storage of running pods (volume + container disk) and of stopped pods (volume).

The wait a user perceives with the client's bridge (``VoicePods.session(bridge=...)``): the session starts at
once on the companion's local CPU ``gpu_server``, kept warm from start-up, and moves to the pod at the next
utterance boundary once the lease is ready. Modelled simply as ``min(lease wait, bridge start)``, where
``bridge_start_s`` (default 0) is how long the local server takes to take the first utterance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .engine import Run
from .model import DAY

MONTH_DAYS = 30.0
KIND_LABELS = {
    "gpu_leased": "GPU leased (talk time)",
    "gpu_idle": "GPU idle (idle TTL, warm pods)",
    "gpu_booting": "GPU booting (create, resume)",
    "storage_running": "storage, running pods",
    "storage_stopped": "storage, stopped pods",
}
PATHS = ("warm", "standby_resume", "cold_create")


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class WaitStats:
    n: int
    p50_s: float
    p95_s: float
    max_s: float

    @classmethod
    def of(cls, values: list[float]) -> WaitStats:
        return cls(len(values), round(percentile(values, 50), 3), round(percentile(values, 95), 3),
                   round(max(values, default=0.0), 3))


@dataclass(frozen=True)
class Summary:
    days: float
    sessions: int
    cost_usd: float  # per 30-day month, all kinds
    gpu_usd: float
    storage_usd: float
    by_kind_usd: dict[str, float]
    gpu_hours: float  # per 30-day month
    gpu_hours_by_kind: dict[str, float]
    wait_p50_s: float  # lease wait over sessions that got a pod
    wait_p95_s: float
    wait_max_s: float
    wait_by_path: dict[str, WaitStats]
    perceived_p50_s: float  # with the client's bridge
    perceived_p95_s: float
    perceived_max_s: float
    pods_created: int
    peak_gpu_pods: int
    resume_failures: int
    create_failures: int
    sessions_without_pod: int
    passes: int
    simulated_usd: float  # over the simulated days, unscaled

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(run: Run, bridge_start_s: float = 0.0) -> Summary:
    b = run.books
    days = (run.end - run.start) / DAY
    scale = MONTH_DAYS / days
    by_kind = {k: round(v * scale, 4) for k, v in b.usd.items()}
    gpu = sum(v for k, v in b.usd.items() if k.startswith("gpu_")) * scale
    storage = sum(v for k, v in b.usd.items() if k.startswith("storage_")) * scale
    waits = [w for values in b.waits.values() for w in values]
    perceived = [min(w, bridge_start_s) for w in waits]
    return Summary(
        days=round(days, 4), sessions=b.sessions, cost_usd=round(gpu + storage, 4), gpu_usd=round(gpu, 4),
        storage_usd=round(storage, 4), by_kind_usd=by_kind,
        gpu_hours=round(sum(b.gpu_s.values()) * scale / 3600, 3),
        gpu_hours_by_kind={k: round(v * scale / 3600, 3) for k, v in b.gpu_s.items()},
        wait_p50_s=round(percentile(waits, 50), 3), wait_p95_s=round(percentile(waits, 95), 3),
        wait_max_s=round(max(waits, default=0.0), 3),
        wait_by_path={p: WaitStats.of(b.waits.get(p, [])) for p in PATHS},
        perceived_p50_s=round(percentile(perceived, 50), 3), perceived_p95_s=round(percentile(perceived, 95), 3),
        perceived_max_s=round(max(perceived, default=0.0), 3),
        pods_created=b.pods_created, peak_gpu_pods=b.peak_gpu_pods, resume_failures=run.resume_failures,
        create_failures=run.create_failures, sessions_without_pod=sum(b.failed.values()), passes=run.passes,
        simulated_usd=round(sum(b.usd.values()), 4),
    )


def render(s: Summary, header: list[str], bridge_start_s: float) -> str:
    lines = [*header, "", f"{'cost per 30-day month':34} {'USD':>10} {'GPU-hours':>10}"]
    hours = {"gpu_leased": "leased", "gpu_idle": "idle", "gpu_booting": "booting"}
    for kind, label in KIND_LABELS.items():
        h = s.gpu_hours_by_kind[hours[kind]] if kind in hours else None
        lines.append(f"  {label:32} {s.by_kind_usd[kind]:10.2f} {'' if h is None else f'{h:10.1f}'}")
    lines.append(f"  {'GPU':32} {s.gpu_usd:10.2f} {s.gpu_hours:10.1f}")
    lines.append(f"  {'storage':32} {s.storage_usd:10.2f}")
    lines.append(f"  {'total':32} {s.cost_usd:10.2f}")
    lines += ["", f"{'lease wait (s)':34} {'n':>7} {'p50':>8} {'p95':>8} {'max':>8}"]
    for path, w in s.wait_by_path.items():
        lines.append(f"  {path:32} {w.n:7d} {w.p50_s:8.1f} {w.p95_s:8.1f} {w.max_s:8.1f}")
    n = sum(w.n for w in s.wait_by_path.values())
    lines.append(f"  {'all sessions with a pod':32} {n:7d} {s.wait_p50_s:8.1f} {s.wait_p95_s:8.1f} {s.wait_max_s:8.1f}")
    lines.append(f"  {'perceived with the bridge':32} {n:7d} {s.perceived_p50_s:8.1f} {s.perceived_p95_s:8.1f} "
                 f"{s.perceived_max_s:8.1f}")
    lines += [
        f"  (bridge: the session starts on the client's warm local CPU server after {bridge_start_s:g} s and moves",
        "   to the pod at the next utterance boundary; perceived wait = min(lease wait, bridge start))",
        "",
        f"pods created {s.pods_created} (at most {s.peak_gpu_pods} holding a GPU at once); resume failures "
        f"(host GPU busy) {s.resume_failures}; creates out of stock {s.create_failures}; sessions without a pod "
        f"{s.sessions_without_pod}",
    ]
    return "\n".join(line.rstrip() for line in lines)
