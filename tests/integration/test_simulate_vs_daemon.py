"""The simulator and the live daemon make the same decisions for the same sessions.

The daemon runs for real (controller, SQLite, actuator, the runpod SDK against the emulator) on a fake clock
shared with the emulator, with passes when its scheduler would run them (``faketime``). The simulator runs
the same sessions with the same timings: pods Ready ``boot + load`` seconds after a create or resume, passes
every second. Both must create, resume, stop and terminate the same pods at the same moments, move them
through the same phases, and grant every session its lease by the same path at the same moment, including
the warm path inside the request, the warm-capacity schedule's window and the idle TTL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from reconciler.domain import Policy
from reconciler.schedule import parse_schedule
from reconciler.simulate.engine import SimConfig, Simulation
from reconciler.simulate.model import CloudModel, Session, Span

from .faketime import FakeTimeStack, Played, epoch
from .harness import GPU_A, GPU_B

START = datetime(2026, 1, 5, 8, 59, 30, tzinfo=UTC).timestamp()  # the window below opens 30 s in
POD_REASONS = {
    "Creating", "Created", "Resuming", "ResumeFailed", "OutOfStock", "Stopping", "Terminating",
    "PhaseStarting", "PhaseReady", "PhaseStopping", "PhaseStopped", "PhaseTerminated", "PhaseFailed",
}
SESSIONS = [  # (arrival, length) in seconds after start
    (10, 6),  # resumes the standby; a new standby is created behind it
    (12, 8),  # the standby being created is taken for it (cold_create); another standby is created
    (23, 4),  # the first pod is idle (released at 20, idle TTL 5 s): the warm path inside the request
    (41, 5),  # the window 09:00-09:01 keeps a pod Ready: warm again, and the schedule starts another
    (70, 3),  # again; the schedule resumes a standby and a new standby is created behind it
]
# Until the window has closed and its pod was stopped (90 s). Not longer: the two pods started at 70 s became
# Ready at the same moment, and between such twins plan() decides by pod id (which pod is kept as the standby,
# which is resumed), and the daemon's ids are random.
UNTIL_S = 94.0


def _role(message: str) -> str:
    match = re.search(r" as (standby|serving)", message)
    return match[1] if match else ""


def _pod_detail(reason: str, message: str) -> str:
    if reason == "Creating":
        return _role(message)
    if reason in ("Stopping", "Terminating"):
        return message  # the plan's own words (idle for 5s, surplus stopped pod, ...)
    return ""


def daemon_decisions(played: Played) -> tuple[list, list]:
    pods: dict[str, list] = {}
    for e in played.events:
        if e["object"].startswith("pod/") and e["reason"] in POD_REASONS:
            t = round(epoch(e["time"]) - played.start, 3)
            pods.setdefault(e["object"], []).append((t, e["reason"], _pod_detail(e["reason"], e["message"])))
    leases = []
    for index in sorted(played.leases):
        lease = played.leases[index]
        ready = None if lease["ready_at"] is None else round(epoch(lease["ready_at"]) - played.start, 3)
        leases.append((index, lease["path"], ready))
    return sorted(pods.values()), leases


def sim_decisions(log: list[tuple[float, str, str, str]], start: float) -> tuple[list, list]:
    pods: dict[str, list] = {}
    leases: dict[str, dict] = {}
    for t, obj, reason, detail in log:
        t = round(t - start, 3)
        if obj.startswith("pod/") and reason in POD_REASONS:
            pods.setdefault(obj, []).append((t, reason, _pod_detail(reason, detail)))
        elif obj.startswith("lease/"):
            lease = leases.setdefault(obj, {"path": None, "ready": None})
            if reason == "Assigned":
                lease["path"] = detail
            elif reason == "Requeued":
                lease["path"] = None
            elif reason == "Ready":
                lease["ready"] = t
    ordered = sorted(leases, key=lambda obj: int(obj.removeprefix("lease/l")))  # ids count up with arrivals
    return sorted(pods.values()), [(i, leases[obj]["path"], leases[obj]["ready"]) for i, obj in enumerate(ordered)]


async def test_simulator_and_daemon_make_the_same_decisions(tmp_path) -> None:
    policy = Policy(
        standby_count=1, idle_ttl_s=5.0, stopped_ttl_s=20.0, sessions_per_pod=1, max_pods=10,
        gpu_types=[GPU_A, GPU_B], budget_usd_per_hour=20.0,
        warm_schedule=parse_schedule("09:00-09:01=1", "UTC"),
    )
    until_s = UNTIL_S
    async with FakeTimeStack(tmp_path, START, policy, interval_s=1.0, boot_s=3.0, load_s=1.0) as stack:
        played = await stack.play([(float(a), float(n)) for a, n in SESSIONS], until_s)
        tuning, prices = stack.ctl.tuning, dict(stack.ctl.prices)

    boot = Span(4.0, 4.0)  # boot 3 s + model load 1 s, for a create and a resume alike
    config = SimConfig(policy=policy, tuning=tuning, interval_s=1.0, repass_gap_s=0.0, cloud=CloudModel(
        prices=prices, resume_s=boot, create_s=boot, p_host_busy=0.0, p_out_of_stock=0.0))
    run = Simulation(config, [Session(START + a, float(n)) for a, n in SESSIONS], START, START + until_s,
                     record=True).run()

    daemon_pods, daemon_leases = daemon_decisions(played)
    sim_pods, sim_leases = sim_decisions(run.log or [], START)
    assert sim_leases == daemon_leases
    assert sim_pods == daemon_pods
    # The scenario covers what it claims to: every claim path, the schedule's pods, the idle TTL, surplus.
    paths = {path for _, path, _ in daemon_leases}
    assert paths == {"warm", "standby_resume", "cold_create"}
    details = {detail for timeline in daemon_pods for _, _, detail in timeline}
    assert any("idle for" in d for d in details) and any("surplus" in d for d in details)
    reasons = [r for timeline in daemon_pods for _, r, _ in timeline]
    assert reasons.count("Creating") >= 3 and "Resuming" in reasons and "PhaseTerminated" in reasons
