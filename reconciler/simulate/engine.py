"""The simulated daemon: ``planning.plan`` (the controller's own code) run on simulated time.

Passes happen when the daemon's would: at start, at once on a lease that has to wait (``wake``) and on a
release while leases queue, and on the APScheduler interval, whose ticks come ``interval_s`` after the last
scheduled run (a wake moves them, as ``job.modify(next_run_time=now)`` does). A pass after a failed provider
call runs again ``repass_gap_s`` later (``Controller.min_pass_gap_s``).

The daemon runs a pass at every tick; most of them find nothing to do. The simulator runs a tick's pass only
when something can have changed by then: a pod's boot finishing at RunPod, a stop or terminate to observe, a
deadline of the policy or the tuning (idle TTL, stopped TTL, backoffs, timeouts, out-of-stock expiry, a
schedule window's edge), a queued lease. ``exact=True`` runs every tick instead, which
``tests/unit/test_simulate.py`` uses to show that skipping changes no decision.

One pass the daemon makes is only bookkeeping: after a warm grant inside ``POST /v1/leases``, the next tick
clears the pod's ``idle_since``. Unless the schedule wants warm pods (then the pass may start one), the
simulator runs that pass lazily: at the last tick before the session ends, if no other pass ran in between.
Only the time of that record update differs; it is what keeps 30 days of 1,000 sessions a day fast.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..domain import Desired, LeaseState, Observed, PodPhase, PodRole, Policy, Tuning
from ..planning import PROVIDER_ACTIONS, plan
from ..schedule import next_change, warm_target
from .model import Cloud, CloudModel, CloudState, Session
from .world import Books, World

INF = math.inf


@dataclass(frozen=True)
class SimConfig:
    policy: Policy
    tuning: Tuning = field(default_factory=Tuning)
    cloud: CloudModel = field(default_factory=CloudModel)
    interval_s: float = 5.0  # HARPER_RECONCILE_INTERVAL_S
    repass_gap_s: float = 0.25  # Controller.min_pass_gap_s
    exact: bool = False  # a pass at every tick, as the daemon runs them


@dataclass
class Run:
    """What one simulation produced: the books, and how it went."""

    books: Books
    start: float
    end: float
    passes: int
    resume_failures: int
    create_failures: int
    log: list[tuple[float, str, str, str]] | None


class Simulation:
    def __init__(
        self, config: SimConfig, sessions: list[Session], start: float, end: float, seed: int = 0,
        record: bool = False, progress: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.sessions = sorted(sessions, key=lambda s: s.arrival)
        self.start, self.end = start, end
        self.cloud = Cloud(config.cloud, random.Random(seed))
        self.world = World(config.policy, config.tuning, self.cloud, record)
        self.progress = progress
        self.passes = 0
        self.anchor = start  # the scheduler's last run: ticks fall on anchor + k * interval
        self.last_pass = -INF
        self.now = start  # the latest moment processed
        self.tick_wanted = False
        self._earliest_at: float | None = None
        self._releases: list[tuple[float, int, str]] = []
        self._seq = 0
        self._boundary: float | None = None
        self._boundary_after = -INF

    def run(self) -> Run:
        w, sessions, n = self.world, self.sessions, len(self.sessions)
        i = 0
        self._wake_pass(self.start)  # the daemon's first pass, as it starts
        due = self._due()
        report_every = max(1, n // 200)
        while True:
            arrival = sessions[i].arrival if i < n else INF
            release = self._releases[0][0] if self._releases else INF
            event = min(arrival, release)
            if min(event, due) >= self.end:
                break
            if event <= due:  # events at a tick's time come before its pass
                if release <= arrival:
                    _, _, lease_id = heapq.heappop(self._releases)
                    self._release(lease_id, release)
                else:
                    self._arrive(sessions[i])
                    i += 1
                    if self.progress and i % report_every == 0:
                        self.progress((arrival - self.start) / (self.end - self.start))
            else:
                self._tick_pass(due)
            due = self._due()
        w.close_books(self.end)
        return Run(w.books, self.start, self.end, self.passes, self.cloud.resume_failures,
                   self.cloud.create_failures, w.log)

    # -- events
    def _arrive(self, session: Session) -> None:
        w = self.world
        self.now = session.arrival
        lease = w.request(session, session.arrival)
        self._queue_releases()
        if lease is None:
            return  # queue full: the session runs on the client's CPU fallback
        if lease.pod_id is None:
            self._wake_pass(session.arrival)
        elif warm_target(self.config.policy.warm_schedule, session.arrival) > 0:
            self.tick_wanted = True  # a warm pod was taken: the schedule starts another on the next tick
        else:
            pod = w.pods[lease.pod_id]
            if pod.idle_since is not None and pod.idle_since + self.config.policy.idle_ttl_s == self._earliest_at:
                self._earliest_at = None  # its idle deadline was the next thing due: no longer

    def _release(self, lease_id: str, at: float) -> None:
        w = self.world
        lease = w.leases.get(lease_id)
        if lease is not None and lease.pod_id is not None and not self.config.exact:
            pod = w.pods.get(lease.pod_id)
            if pod is not None and pod.idle_since is not None:
                # The bookkeeping pass after a warm grant (see the module docstring), owed since then.
                # Run at the last tick before the release, or just after the last event processed when that
                # is later: no decision is due in between (it would have had a pass), so only the time of the
                # record update can differ from the daemon's.
                k = math.ceil((at - self.anchor) / self.config.interval_s - 1e-9) - 1
                owed = self.anchor + k * self.config.interval_s
                if k >= 1 and owed > max(self.last_pass, lease.created_at):
                    self._pass(max(owed, self.now))
        self.now = at
        if w.release(lease_id, at):
            self._wake_pass(at)
        elif lease is not None:
            self.tick_wanted = True  # the pod's idle clock starts at the next tick

    def _queue_releases(self) -> None:
        for at, lease_id in self.world.releases:
            self._seq += 1
            heapq.heappush(self._releases, (at, self._seq, lease_id))
        self.world.releases.clear()

    # -- passes
    def _wake_pass(self, now: float) -> None:
        self.anchor = now
        self._tick_pass(now)

    def _tick_pass(self, now: float) -> None:
        """One run of the scheduled job: a pass, and again (up to five in all) after a failed call."""
        for attempt in range(5):
            if not self._pass(now + attempt * self.config.repass_gap_s):
                break

    def _pass(self, now: float) -> bool:
        w = self.world
        self.passes += 1
        self.last_pass = self.now = now
        self._earliest_at = None
        self.tick_wanted = False
        observed = Observed({cp.name: cp.observe(now) for cp in self.cloud.pods.values()})
        desired = Desired(
            policy=self.config.policy, tuning=self.config.tuning, pods=tuple(w.pods.values()),
            leases=tuple(w.leases.values()), unavailable_until=w.unavailable, prices=self.config.cloud.prices,
        )
        actions = plan(desired, observed, now)
        again = w.apply(actions, now)
        self._queue_releases()
        if sum(isinstance(a, PROVIDER_ACTIONS) for a in actions) >= self.config.tuning.max_provider_actions:
            self.tick_wanted = True  # calls were left for the next pass
        return again

    def _due(self) -> float:
        """The next tick at which a pass can change something (every tick when ``exact``)."""
        interval, last = self.config.interval_s, self.last_pass
        if self.config.exact or self.tick_wanted:
            when = last
        else:
            if self._earliest_at is None:  # kept between passes: an event changes it only where noted
                self._earliest_at = self._earliest()
            when = self._earliest_at
        if when == INF:
            return INF
        # never before the latest event processed: a tick at its very moment comes after it
        k = max(1, math.ceil((max(when, last, self.now) - self.anchor) / interval - 1e-9))
        tick = self.anchor + k * interval
        while tick <= last:
            tick += interval
        return tick

    def _earliest(self) -> float:
        """The earliest moment a pass can decide something new (``last_pass``: at the next tick). A deadline
        the last pass saw pass without acting on it (an idle pod the schedule holds, a stopped pod that is not
        surplus) waits for a change of state, which brings its own pass. (Runs after most passes: written for
        speed, so the deadlines are gathered in a list and the earliest one after ``now`` taken.)"""
        w, cfg, now = self.world, self.config, self.last_pass
        policy, tuning = cfg.policy, cfg.tuning
        ready, starting, stopped_, serving = PodPhase.READY, PodPhase.STARTING, PodPhase.STOPPED, PodRole.SERVING
        ttl = policy.idle_ttl_s
        held = {pod_id for pod_id, _ in w.slots}
        deadlines: list[float] = []
        stopped: list[float] = []
        for pod in w.pods.values():
            phase = pod.phase
            if pod.backoff_until > now:
                deadlines.append(pod.backoff_until)
            if phase is ready:
                if pod.id in held:
                    continue
                if pod.idle_since is None or pod.role is not serving:
                    return now
                deadlines.append(pod.idle_since + ttl)
            elif phase is starting:
                cp = self.cloud.pods.get(pod.runpod_id or "")
                if cp is None or cp.state is CloudState.EXITED or cp.ready_at <= now:
                    return now
                deadlines.append(cp.ready_at)
                deadlines.append(pod.phase_since + tuning.ready_timeout_s)
            elif phase is stopped_:
                stopped.append(pod.phase_since + policy.stopped_ttl_s)
            elif phase is PodPhase.STOPPING or phase is PodPhase.TERMINATING:
                return now
            else:  # creating, failed
                deadlines.append(pod.phase_since + tuning.create_grace_s)
        if len(stopped) > policy.standby_count:  # which ones are surplus depends on their order: all count
            deadlines.extend(stopped)
        for lease in w.leases.values():
            if lease.pod_id is None and policy.sessions_per_pod > 1:
                return now  # a pod created last pass may have a slot for it
            if lease.state is LeaseState.PENDING:
                deadlines.append(lease.created_at + tuning.pending_timeout_s)
        deadlines.extend(w.unavailable.values())
        deadlines.append(self._schedule_edge(now))
        return min((d for d in deadlines if d > now), default=INF)

    def _schedule_edge(self, now: float) -> float:
        schedule = self.config.policy.warm_schedule
        if not schedule.windows:
            return INF
        if self._boundary is None or self._boundary <= now or now < self._boundary_after:
            self._boundary = next_change(schedule, now)
            self._boundary_after = now
        return INF if self._boundary is None else self._boundary
