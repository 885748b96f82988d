"""The controller's vocabulary: pod and lease phases, policy, and the records planning works on.

Pure: no database, HTTP or scheduler imports. ``store`` maps these records to rows, ``planning`` decides
on them, ``api`` renders them. Times are Unix seconds (floats) passed in by the caller, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .schedule import WarmSchedule

POD_NAME_PREFIX = "harper-"
GPU_SERVER_PORT = 8000


class IllegalTransition(Exception):
    """A phase change that the transition table does not allow: a bug in the caller, never user input."""


class PodRole(StrEnum):
    STANDBY = "standby"  # kept STOPPED, resumed for the next lease
    SERVING = "serving"  # running (or about to run) for leases


class PodPhase(StrEnum):
    CREATING = "creating"  # intent written; the create call is in flight or not yet visible at RunPod
    STARTING = "starting"  # RunPod says RUNNING; image, port or models not ready yet
    READY = "ready"  # RUNNING, port mapped, /health answered 200 with models loaded
    STOPPING = "stopping"  # stop sent, RunPod still says RUNNING
    STOPPED = "stopped"  # RunPod says EXITED: GPU released, volume kept
    TERMINATING = "terminating"  # terminate sent, RunPod still lists it
    TERMINATED = "terminated"  # gone at RunPod (final)
    FAILED = "failed"  # the create failed or never showed up at RunPod


_P = PodPhase
POD_TRANSITIONS: dict[PodPhase, frozenset[PodPhase]] = {
    _P.CREATING: frozenset({_P.STARTING, _P.READY, _P.STOPPED, _P.STOPPING, _P.TERMINATING, _P.FAILED}),
    _P.STARTING: frozenset({_P.READY, _P.STOPPING, _P.STOPPED, _P.TERMINATING, _P.TERMINATED}),
    _P.READY: frozenset({_P.STARTING, _P.STOPPING, _P.STOPPED, _P.TERMINATING, _P.TERMINATED}),
    _P.STOPPING: frozenset({_P.STARTING, _P.READY, _P.STOPPED, _P.TERMINATING, _P.TERMINATED}),
    _P.STOPPED: frozenset({_P.STARTING, _P.READY, _P.STOPPING, _P.TERMINATING, _P.TERMINATED}),
    _P.TERMINATING: frozenset({_P.TERMINATED}),
    _P.TERMINATED: frozenset(),
    # A create reported as failed can still have happened (RunPod does that): the pod is adopted late.
    _P.FAILED: frozenset({_P.STARTING, _P.READY, _P.STOPPED, _P.STOPPING, _P.TERMINATING, _P.TERMINATED}),
}
# Phases in which the pod holds (or is about to hold) a GPU and bills for it.
GPU_PHASES = frozenset({_P.CREATING, _P.STARTING, _P.READY, _P.STOPPING})


def check_pod_transition(old: PodPhase, new: PodPhase) -> None:
    if old != new and new not in POD_TRANSITIONS[old]:
        raise IllegalTransition(f"pod phase {old} -> {new} is not allowed")


class LeaseState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    RELEASED = "released"
    EXPIRED = "expired"
    FAILED = "failed"


_L = LeaseState
LEASE_TRANSITIONS: dict[LeaseState, frozenset[LeaseState]] = {
    _L.PENDING: frozenset({_L.READY, _L.RELEASED, _L.EXPIRED, _L.FAILED}),
    _L.READY: frozenset({_L.RELEASED, _L.EXPIRED, _L.FAILED}),
    _L.RELEASED: frozenset(),
    _L.EXPIRED: frozenset(),
    _L.FAILED: frozenset(),
}
ACTIVE_LEASE_STATES = frozenset({_L.PENDING, _L.READY})


def waiting_for(pod_id: str) -> str:
    """Why a lease assigned to a pod that is not Ready yet is still pending."""
    return f"waiting for pod {pod_id} to become Ready"


def check_lease_transition(old: LeaseState, new: LeaseState) -> None:
    if old != new and new not in LEASE_TRANSITIONS[old]:
        raise IllegalTransition(f"lease state {old} -> {new} is not allowed")


class ClaimPath(StrEnum):
    WARM = "warm"
    STANDBY_RESUME = "standby_resume"
    COLD_CREATE = "cold_create"


class Policy(BaseModel):
    """Operator policy: stored in the database, editable through the admin API, applied on the next pass."""

    # strict: "paused": "yes" or "standby_count": "2" is a mistake to refuse, not to guess at
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    standby_count: int = Field(1, ge=0, le=100)
    idle_ttl_s: float = Field(300.0, ge=0, le=7 * 86400)
    stopped_ttl_s: float = Field(900.0, ge=0, le=30 * 86400)
    sessions_per_pod: int = Field(1, ge=1, le=64)
    max_pods: int = Field(10, ge=0, le=10_000)
    gpu_types: list[str] = Field(
        default_factory=lambda: ["NVIDIA GeForce RTX 4090", "NVIDIA L4", "NVIDIA A40"], min_length=1
    )
    budget_usd_per_hour: float = Field(20.0, ge=0, le=100_000)
    paused: bool = False
    # Time-of-day windows with idle Ready pods kept ahead of demand (``schedule``); none by default.
    warm_schedule: WarmSchedule = Field(default_factory=WarmSchedule)

    @model_validator(mode="after")
    def _warm_pods_fit(self) -> Policy:
        most = max((w.pods for w in self.warm_schedule.windows), default=0)
        if most > self.max_pods:  # such a window could never be kept: say so now, not by waiting forever
            raise ValueError(f"warm_schedule keeps {most} pods in a window, above max_pods {self.max_pods}")
        return self

    @field_validator("gpu_types")
    @classmethod
    def _clean_gpu_types(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v or '"' in v or "\\" in v or len(v) > 100 for v in cleaned):
            raise ValueError("gpu type ids must be non-empty names without quotes or backslashes")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("gpu_types must not repeat a type")
        return cleaned

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.standby_count > self.max_pods:
            # A standby holds a GPU while it is created and loads its models: more than max_pods never fit.
            raise ValueError(f"standby_count {self.standby_count} is above max_pods {self.max_pods}")
        return self


class Tuning(BaseModel):
    """Mechanics, not policy: timeouts and limits of the loop. Set from the environment at start."""

    model_config = ConfigDict(frozen=True)

    lease_ttl_s: float = Field(60.0, gt=0)
    create_grace_s: float = Field(60.0, gt=0)  # an intent with no pod at RunPod after this is failed
    orphan_grace_s: float = Field(60.0, gt=0)  # an unknown harper- pod is terminated after this
    ready_timeout_s: float = Field(900.0, gt=0)  # a pod that never becomes Ready is replaced
    unhealthy_timeout_s: float = Field(60.0, gt=0)  # a Ready pod whose health fails this long is replaced
    stop_timeout_s: float = Field(120.0, gt=0)  # a stop RunPod has not carried out is sent again
    resume_backoff_s: float = Field(120.0, gt=0)  # a standby whose host GPU was taken is not tried again for this long
    out_of_stock_s: float = Field(180.0, gt=0)  # a GPU type that was out of stock is skipped for this long
    pending_timeout_s: float = Field(900.0, gt=0)  # a lease that waits longer than this fails
    max_provider_actions: int = Field(20, gt=0)  # provider calls per pass
    queue_limit: int = Field(1000, gt=0)  # pending leases without a pod


@dataclass(frozen=True, slots=True)
class Pod:
    """The controller's record of a pod (a row of ``pods``); ``id`` is the intent id, known before RunPod's."""

    id: str
    role: PodRole
    phase: PodPhase
    gpu_type: str
    created_at: float
    phase_since: float
    runpod_id: str | None = None
    cost_per_hr: float = 0.0
    cordoned: bool = False
    was_ready: bool = False  # has been Ready at least once: a stopped pod is a usable standby only then
    ready_at: float | None = None
    idle_since: float | None = None  # last time it lost its last lease (or became Ready with none)
    unhealthy_since: float | None = None
    backoff_until: float = 0.0
    failures: int = 0
    endpoint_host: str | None = None
    endpoint_port: int | None = None
    reason: str = ""

    @property
    def name(self) -> str:
        return POD_NAME_PREFIX + self.id


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    session_id: str
    state: LeaseState
    created_at: float
    expires_at: float
    pod_id: str | None = None
    slot: int | None = None
    path: ClaimPath | None = None
    ready_at: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ObservedPod:
    """One pod as RunPod lists it, plus what its /health said this pass."""

    runpod_id: str
    name: str
    desired_status: str  # RUNNING | EXITED | ...
    gpu_type: str = ""
    cost_per_hr: float = 0.0
    endpoint_host: str | None = None  # None while runtime is null
    endpoint_port: int | None = None
    healthy: bool = False
    failed: bool = False  # RunPod reports the container in an unrecoverable error (REST ``ERROR``)


@dataclass(frozen=True, slots=True)
class Observed:
    pods: dict[str, ObservedPod] = field(default_factory=dict)  # by name


@dataclass(frozen=True, slots=True)
class Desired:
    policy: Policy
    tuning: Tuning
    pods: tuple[Pod, ...]
    leases: tuple[Lease, ...]  # active ones (pending, ready)
    unavailable_until: dict[str, float] = field(default_factory=dict)  # gpu type -> time
    prices: dict[str, float] = field(default_factory=dict)  # gpu type -> $/h
    orphans_seen: dict[str, float] = field(default_factory=dict)  # runpod id -> first seen
    stock: dict[str, str] = field(default_factory=dict)  # gpu type -> NONE|LOW|MEDIUM|HIGH where RunPod says
    provider_budget: int | None = None  # RunPod calls this pass may make (rate-limit quota); None: no quota
    creates_blocked: str = ""  # why no pod may be created or resumed now (e.g. RunPod's low-balance answer)
