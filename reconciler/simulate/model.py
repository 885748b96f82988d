"""The simulator's world: a model of RunPod (timings, capacity failures, prices, storage) and the workload.

``Cloud`` stands in for RunPod as the controller sees it: pods that are RUNNING or EXITED, which answer
``/health`` once their boot time (a draw from ``resume_s`` or ``create_s``) has passed, and which bill GPU
while RUNNING and storage at the running or stopped rate (the rates ``reconciler.loop`` estimates with). A
resume fails with the host-GPU-busy error with probability ``p_host_busy``, a create with out-of-stock with
``p_out_of_stock``. Draws come from one seeded ``random.Random``, so a run repeats itself.

``sessions()`` turns a ``Workload`` into arrivals with lengths: ``uniform`` spaces a day's sessions evenly,
``poisson`` draws exponential gaps, ``business-hours`` puts each day's sessions at random times between
09:00 and 17:00 in the workload's time zone (every day of the week).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ..domain import POD_NAME_PREFIX, ObservedPod
from ..schedule import zone

DAY = 86400.0
RTX_4090 = "NVIDIA GeForce RTX 4090"


class CloudError(Exception):
    """A refusal from the modelled RunPod."""


class HostBusy(CloudError):
    """Resume: "There are not enough free GPUs on the host machine to start this pod." """


class OutOfStock(CloudError):
    """Create: no instance of that GPU type is available."""


@dataclass(frozen=True)
class Span:
    """A duration drawn uniformly from ``lo`` to ``hi`` seconds (``lo == hi``: fixed)."""

    lo: float
    hi: float

    @classmethod
    def parse(cls, text: str | float) -> Span:
        """``45`` or ``30-60`` (seconds)."""
        lo, _, hi = str(text).partition("-")
        try:
            span = cls(float(lo), float(hi or lo))
        except ValueError:
            raise ValueError(f"{text!r} must be seconds, as 45 or 30-60") from None
        if span.lo < 0 or span.hi < span.lo:
            raise ValueError(f"{text!r}: need 0 <= low <= high")
        return span

    def draw(self, rng: random.Random) -> float:
        return self.lo if self.hi == self.lo else rng.uniform(self.lo, self.hi)

    def __str__(self) -> str:
        return f"{self.lo:g}" if self.lo == self.hi else f"{self.lo:g}-{self.hi:g}"


@dataclass(frozen=True)
class CloudModel:
    """What RunPod does, as far as cost and waiting go. Defaults: ``../shared/reference/runpod-api.md``
    (resume of a cached image < 60 s, an image pull 5-8 min) and the seed's $0.80/h RTX 4090."""

    prices: dict[str, float] = field(default_factory=lambda: {RTX_4090: 0.80})
    resume_s: Span = Span(30.0, 60.0)  # a stopped pod until /health answers (image cached on the host)
    create_s: Span = Span(300.0, 480.0)  # a new pod: image pull and model load
    p_host_busy: float = 0.05  # a resume finds the host's GPUs taken by other tenants
    p_out_of_stock: float = 0.02  # a create finds the GPU type out of stock
    volume_gb: float = 20.0
    container_disk_gb: float = 20.0

    def __post_init__(self) -> None:
        for name in ("p_host_busy", "p_out_of_stock"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability (0 to 1)")
        if not self.prices or any(p < 0 for p in self.prices.values()):
            raise ValueError("prices must name at least one GPU type, at a price >= 0")


class CloudState(StrEnum):
    RUNNING = "RUNNING"
    EXITED = "EXITED"


@dataclass(slots=True)
class CloudPod:
    runpod_id: str
    pod_id: str  # the controller's id: the pod is named harper-<pod id>
    gpu_type: str
    price: float
    state: CloudState
    ready_at: float  # /health answers 200 from then on (while RUNNING)
    name: str = ""
    charged_at: float = 0.0  # billed up to here (``World._charge``)
    # What a probe sees, built once: booted (Ready), booting, stopped.
    ready: ObservedPod | None = None
    booting: ObservedPod | None = None
    exited: ObservedPod | None = None

    def __post_init__(self) -> None:
        self.name = POD_NAME_PREFIX + self.pod_id
        common = dict(runpod_id=self.runpod_id, name=self.name, gpu_type=self.gpu_type, cost_per_hr=self.price)
        self.ready = ObservedPod(desired_status="RUNNING", endpoint_host="sim", endpoint_port=8000, healthy=True,
                                 **common)
        self.booting = ObservedPod(desired_status="RUNNING", **common)
        self.exited = ObservedPod(desired_status="EXITED", **common)

    def observe(self, now: float) -> ObservedPod:
        if self.state is CloudState.EXITED:
            return self.exited  # type: ignore[return-value]
        return self.ready if now >= self.ready_at else self.booting  # type: ignore[return-value]


class Cloud:
    """The modelled RunPod account: pods by RunPod id, and the calls the actuator makes."""

    def __init__(self, model: CloudModel, rng: random.Random) -> None:
        self.model = model
        self.rng = rng
        self.pods: dict[str, CloudPod] = {}
        self._ids = 0
        self.resume_failures = 0
        self.create_failures = 0

    def create(self, pod_id: str, gpu_type: str, now: float) -> CloudPod:
        if self.rng.random() < self.model.p_out_of_stock:
            self.create_failures += 1
            raise OutOfStock("There are no longer any instances available with the requested specifications. "
                             "Please refresh and try again.")
        self._ids += 1
        pod = CloudPod(f"rp{self._ids:06d}", pod_id, gpu_type, self.model.prices[gpu_type], CloudState.RUNNING,
                       now + self.model.create_s.draw(self.rng), charged_at=now)
        self.pods[pod.runpod_id] = pod
        return pod

    def resume(self, runpod_id: str, now: float) -> CloudPod:
        pod = self.pods[runpod_id]
        if self.rng.random() < self.model.p_host_busy:
            self.resume_failures += 1
            raise HostBusy("There are not enough free GPUs on the host machine to start this pod.")
        pod.state = CloudState.RUNNING
        pod.ready_at = now + self.model.resume_s.draw(self.rng)
        return pod

    def stop(self, runpod_id: str) -> None:
        self.pods[runpod_id].state = CloudState.EXITED

    def terminate(self, runpod_id: str) -> None:
        self.pods.pop(runpod_id, None)


# ------------------------------------------------------------------------------------------------ workload


class Arrivals(StrEnum):
    UNIFORM = "uniform"
    POISSON = "poisson"
    BUSINESS_HOURS = "business-hours"


class Lengths(StrEnum):
    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    LOGNORMAL = "lognormal"


BUSINESS_HOURS = (9 * 3600.0, 17 * 3600.0)
LOGNORMAL_SIGMA = 0.6


@dataclass(frozen=True)
class Workload:
    sessions_per_day: float = 100.0
    session_minutes: float = 15.0  # the mean
    lengths: Lengths = Lengths.FIXED
    arrivals: Arrivals = Arrivals.UNIFORM
    days: float = 30.0
    timezone: str = "UTC"  # for business hours (and the schedule's windows)

    def __post_init__(self) -> None:
        if self.sessions_per_day < 0 or self.session_minutes <= 0 or self.days <= 0:
            raise ValueError("sessions per day must be >= 0, session minutes and days > 0")
        zone(self.timezone)


@dataclass(frozen=True, slots=True)
class Session:
    arrival: float  # Unix seconds
    length_s: float  # talk time on the GPU once the lease is ready


def start_of(timezone: str, year: int = 2026, month: int = 1, day: int = 5) -> float:
    """Local midnight of the simulated first day (Monday 5 January 2026 by default)."""
    return datetime(year, month, day, tzinfo=zone(timezone)).timestamp()


def sessions(workload: Workload, start: float, rng: random.Random) -> list[Session]:
    """Arrivals from ``start`` for ``workload.days``, sorted, each with its length."""
    w = workload
    horizon = start + w.days * DAY
    arrivals: list[float] = []
    if w.sessions_per_day <= 0:
        return []
    if w.arrivals is Arrivals.UNIFORM:
        gap = DAY / w.sessions_per_day
        count = math.floor(w.days * w.sessions_per_day + 1e-9)
        arrivals = [start + (i + 0.5) * gap for i in range(count)]
    elif w.arrivals is Arrivals.POISSON:
        t = start
        while True:
            t += rng.expovariate(w.sessions_per_day / DAY)
            if t >= horizon:
                break
            arrivals.append(t)
    else:
        tz = zone(w.timezone)
        opens, closes = BUSINESS_HOURS
        for d in range(math.ceil(w.days)):
            midnight = datetime.fromtimestamp(start + d * DAY + DAY / 2, tz).replace(hour=0, minute=0, second=0)
            base = midnight.timestamp()
            count = _poisson(rng, w.sessions_per_day * min(1.0, w.days - d))
            arrivals.extend(base + rng.uniform(opens, closes) for _ in range(count))
        arrivals = sorted(a for a in arrivals if a < horizon)
    mean = w.session_minutes * 60.0
    return [Session(a, _length(w.lengths, mean, rng)) for a in arrivals]


def _length(kind: Lengths, mean: float, rng: random.Random) -> float:
    if kind is Lengths.FIXED:
        return mean
    if kind is Lengths.EXPONENTIAL:
        return rng.expovariate(1.0 / mean)
    mu = math.log(mean) - LOGNORMAL_SIGMA**2 / 2  # keeps the mean at ``mean``
    return rng.lognormvariate(mu, LOGNORMAL_SIGMA)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson count (Knuth's method for small means, a rounded normal for large ones)."""
    if mean > 500:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
