"""The fleet: machines with GPU slots, and the pods placed on them. The emulator's pure domain core.

Every RunPod pod operation is a method here that takes ``now`` and either changes the in-memory state or
raises a ``FleetError`` (``errors.py``) whose message is RunPod's exact text. Nothing here does I/O, reads a
clock or knows about GraphQL or REST; ``emulator.py`` wraps it with the clock, the ledger and the runners.

A pod's phase is a ``PodState`` and changes only through ``TRANSITIONS``:

    create ─► STARTING ─(boot delay)─► RUNNING      GPUs held and billed from the create on
    RUNNING ─restart─► STARTING                     same GPUs, a fresh boot (REST's restart action)
    STARTING | RUNNING ─crash─► ERROR               the container exited; the GPUs stay held (and billed)
    STARTING | RUNNING | ERROR ─stop─► EXITED       the machine's GPUs go back to the pool
    EXITED ─resume─► STARTING                       same machine, only if it still has free GPUs
    ERROR ─resume─► STARTING                        the container restarts in place on the GPUs it holds
    any live state ─terminate─► TERMINATED          gone from the APIs, kept here for the admin view

A fresh create boots after ``boot_seconds`` (the image pull), a resume or restart after
``resume_boot_seconds`` (the image is cached); once booted, the runtime's ports are reported only after
``ports_delay_seconds``. A pod created or resumed with ``never_boot`` stays STARTING forever, like a bad
image or a CUDA mismatch that never yields a runtime.

Other tenants are modelled per machine (``Machine.tenant_gpus``): they take GPUs a stopped pod gave back,
which is what makes a later resume fail with "There are not enough free GPUs on the host machine...".
"""

from __future__ import annotations

import dataclasses
import math
import random
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from runpod_emulator.catalogue import (
    CATALOGUE,
    DATA_CENTER_ID,
    HOST_CUDA_VERSION,
    GpuType,
    storage_usd_per_hour,
)
from runpod_emulator.errors import (
    FleetError,
    InvalidRequest,
    NoCompatibleCudaHost,
    NoInstancesAvailable,
    NotEnoughFreeGpus,
    PodNotFound,
)
from runpod_emulator.messages import NO_INSTANCES, NOT_ENOUGH_FREE_GPUS
from runpod_emulator.spec import PodSpec, PortSpec, cuda_fits, parse_ports

__all__ = [  # the names other modules and tests have always imported from here
    "NOT_ENOUGH_FREE_GPUS",
    "NO_INSTANCES",
    "FleetError",
    "InvalidRequest",
    "NoCompatibleCudaHost",
    "NoInstancesAvailable",
    "NotEnoughFreeGpus",
    "PodNotFound",
    "PodSpec",
    "PortSpec",
    "parse_ports",
]

# Spec fields whose change restarts a running container (RunPod resets a pod whose container settings change).
CONTAINER_FIELDS = frozenset({"image_name", "docker_args", "ports", "env", "container_disk_gb", "registry"})


class IllegalTransition(RuntimeError):
    """A bug, not a client error: the emulator tried a transition the table does not allow."""


class PodState(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    ERROR = "ERROR"
    EXITED = "EXITED"
    TERMINATED = "TERMINATED"


class PodEvent(StrEnum):
    BOOT = "boot"
    RESTART = "restart"
    CRASH = "crash"
    STOP = "stop"
    RESUME = "resume"
    TERMINATE = "terminate"


TRANSITIONS: dict[tuple[PodState, PodEvent], PodState] = {
    (PodState.STARTING, PodEvent.BOOT): PodState.RUNNING,
    (PodState.RUNNING, PodEvent.RESTART): PodState.STARTING,
    (PodState.STARTING, PodEvent.CRASH): PodState.ERROR,
    (PodState.RUNNING, PodEvent.CRASH): PodState.ERROR,
    (PodState.STARTING, PodEvent.STOP): PodState.EXITED,
    (PodState.RUNNING, PodEvent.STOP): PodState.EXITED,
    (PodState.ERROR, PodEvent.STOP): PodState.EXITED,
    (PodState.EXITED, PodEvent.RESUME): PodState.STARTING,
    (PodState.ERROR, PodEvent.RESUME): PodState.STARTING,
    (PodState.STARTING, PodEvent.TERMINATE): PodState.TERMINATED,
    (PodState.RUNNING, PodEvent.TERMINATE): PodState.TERMINATED,
    (PodState.ERROR, PodEvent.TERMINATE): PodState.TERMINATED,
    (PodState.EXITED, PodEvent.TERMINATE): PodState.TERMINATED,
}
# States in which the pod holds GPUs and bills for them (RunPod bills from the moment it is rented; a pod
# whose container died still holds its machine's GPUs until it is stopped or terminated).
HOLDS_GPU = frozenset({PodState.STARTING, PodState.RUNNING, PodState.ERROR})


@dataclass(slots=True)
class Machine:
    id: str
    gpu_type: GpuType
    gpus: int
    tenant_gpus: int = 0  # held by other RunPod customers
    pod_gpus: dict[str, int] = field(default_factory=dict)  # held by our pods
    cuda_version: str = HOST_CUDA_VERSION
    data_center_id: str = DATA_CENTER_ID

    @property
    def free(self) -> int:
        return self.gpus - self.tenant_gpus - sum(self.pod_gpus.values())


@dataclass(slots=True)
class Pod:
    id: str
    host_id: str
    spec: PodSpec
    ports: tuple[PortSpec, ...]
    gpu_type: GpuType
    machine_id: str
    vcpu_count: int
    memory_gb: int
    created_at: float
    state: PodState = PodState.STARTING
    gpu_count: int = 1
    last_status_change: str = ""
    boot_at: float = 0.0  # when a STARTING pod gets its runtime; inf for one that never will
    booted_at: float | None = None  # while RUNNING: when the container started
    started_at: float | None = None  # the last boot, kept after a stop (REST startedAt); None: never booted
    ports_at: float = 0.0  # when a RUNNING pod's port mappings are reported
    public_ports: dict[int, int] = field(default_factory=dict)  # private -> public, while RUNNING
    past_public_ports: set[int] = field(default_factory=set)
    stale_ports: dict[int, int] = field(default_factory=dict)  # the mappings at the last stop
    exit_code: int | None = None  # while ERROR

    def apply(self, event: PodEvent) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"pod {self.id}: {event} is not allowed in {self.state}") from None

    @property
    def desired_status(self) -> str:
        """GraphQL's ``desiredStatus``: the intent, RUNNING from the create on (also for a dead container)."""
        return "RUNNING" if self.state in HOLDS_GPU else self.state.value

    @property
    def provisioning(self) -> bool:
        """A fresh create that has not booted yet (REST PROVISIONING, as opposed to a restart's STARTING)."""
        return self.state is PodState.STARTING and self.started_at is None

    def ports_reported(self, now: float) -> bool:
        return self.state is PodState.RUNNING and now >= self.ports_at

    @property
    def cost_per_hr(self) -> float:
        price = self.gpu_type.price(self.spec.cloud) or 0.0
        return round(price * self.gpu_count, 4)

    def gpu_usd_per_hour(self) -> float:
        return self.cost_per_hr if self.state in HOLDS_GPU else 0.0

    def storage_usd_per_hour(self) -> float:
        if self.state is PodState.TERMINATED:
            return 0.0
        running = self.state in HOLDS_GPU
        return storage_usd_per_hour(self.spec.volume_gb, self.spec.container_disk_gb, running)


def status_stamp(prefix: str, now: float) -> str:
    """``lastStatusChange`` as RunPod writes it: a JavaScript ``Date.toString()`` after a reason."""
    when = datetime.fromtimestamp(now, UTC)
    return f"{prefix}: {when:%a %b %d %Y %H:%M:%S} GMT+0000 (Coordinated Universal Time)"


class Fleet:
    """Machines, pods and the rules that bind them. Deterministic for a given ``rng``."""

    def __init__(
        self,
        rng: random.Random,
        *,
        machines_per_type: int = 4,
        gpus_per_machine: int = 8,
        boot_seconds: float = 0.0,
        resume_boot_seconds: float | None = None,
        ports_delay_seconds: float = 0.0,
        gpu_types: Iterable[GpuType] = CATALOGUE,
    ) -> None:
        self._rng = rng
        self.boot_seconds = boot_seconds
        self.resume_boot_seconds = boot_seconds if resume_boot_seconds is None else resume_boot_seconds
        self.ports_delay_seconds = ports_delay_seconds
        self.user_id = "user_" + self._token(27, string.ascii_letters + string.digits)
        self.machines: dict[str, Machine] = {}
        for gpu_type in gpu_types:
            for _ in range(machines_per_type):
                machine = Machine(self._token(12), gpu_type, gpus_per_machine)
                self.machines[machine.id] = machine
        self.pods: dict[str, Pod] = {}

    def _token(self, length: int, alphabet: str = string.ascii_lowercase + string.digits) -> str:
        return "".join(self._rng.choice(alphabet) for _ in range(length))

    # Queries -------------------------------------------------------------------------------------------

    def live_pods(self) -> list[Pod]:
        return [p for p in self.pods.values() if p.state is not PodState.TERMINATED]

    def get(self, pod_id: str) -> Pod:
        pod = self.pods.get(pod_id)
        if pod is None or pod.state is PodState.TERMINATED:
            raise PodNotFound(pod_id)
        return pod

    def machine(self, machine_id: str) -> Machine:
        try:
            return self.machines[machine_id]
        except KeyError:
            raise KeyError(f"no machine {machine_id!r}") from None

    def machines_of(self, gpu_type_id: str) -> list[Machine]:
        return [m for m in self.machines.values() if m.gpu_type.id == gpu_type_id]

    def due_for_boot(self, now: float) -> list[Pod]:
        return [p for p in self.pods.values() if p.state is PodState.STARTING and p.boot_at <= now]

    # Pod operations ------------------------------------------------------------------------------------

    def create(self, spec: PodSpec, now: float, *, never_boot: bool = False) -> Pod:
        if not spec.image_name and not spec.template_id:
            raise InvalidRequest("Either imageName or templateId must be provided.")
        if spec.gpu_count < 1:
            raise InvalidRequest("gpuCount must be at least 1.")
        ports = parse_ports(spec.ports)
        gpu_type = next((m.gpu_type for m in self.machines.values() if m.gpu_type.id == spec.gpu_type_id), None)
        if gpu_type is None or gpu_type.price(spec.cloud) is None or spec.gpu_count > gpu_type.max_gpu_count:
            raise NoInstancesAvailable()
        # First fit: RunPod packs pods onto hosts; what matters here is only whether any host has room.
        roomy = [
            m
            for m in self.machines.values()
            if m.gpu_type is gpu_type
            and m.free >= spec.gpu_count
            and (not spec.data_center_ids or m.data_center_id in spec.data_center_ids)
        ]
        if not roomy:
            raise NoInstancesAvailable()
        machine = next((m for m in roomy if cuda_fits(spec, m.cuda_version)), None)
        if machine is None:
            raise NoCompatibleCudaHost()
        pod_id = self._token(14)
        while pod_id in self.pods:
            pod_id = self._token(14)
        pod = Pod(
            id=pod_id,
            host_id=f"{pod_id}-{self._token(8, '0123456789abcdef')}",
            spec=spec,
            ports=ports,
            gpu_type=gpu_type,
            machine_id=machine.id,
            vcpu_count=max(spec.min_vcpu, gpu_type.vcpu_per_gpu * spec.gpu_count),
            memory_gb=max(spec.min_memory_gb, gpu_type.ram_gb_per_gpu * spec.gpu_count),
            created_at=now,
            gpu_count=spec.gpu_count,
        )
        self.pods[pod_id] = pod
        machine.pod_gpus[pod.id] = pod.gpu_count
        self._schedule_boot(pod, now + self.boot_seconds, never_boot)
        pod.last_status_change = status_stamp("Rented by User", now)
        return pod

    def resume(self, pod_id: str, gpu_count: int, now: float, *, never_boot: bool = False) -> Pod:
        pod = self.get(pod_id)
        if pod.state in (PodState.STARTING, PodState.RUNNING):
            return pod  # already running: RunPod answers with the pod, nothing changes
        machine = self.machines[pod.machine_id]
        if pod.state is PodState.EXITED:
            # gpuCount 0 does not give a 0-GPU pod on RunPod (runpod-python#371): keep the old count.
            count = gpu_count if gpu_count >= 1 else pod.gpu_count
            if machine.free < count:
                raise NotEnoughFreeGpus()
            pod.gpu_count = count
            machine.pod_gpus[pod.id] = count
        pod.apply(PodEvent.RESUME)  # from ERROR: a restart in place on the GPUs it still holds
        pod.exit_code = None
        self._schedule_boot(pod, now + self.resume_boot_seconds, never_boot)
        pod.last_status_change = status_stamp("Rented by User", now)
        return pod

    def restart(self, pod_id: str, now: float, *, never_boot: bool = False) -> Pod:
        pod = self.get(pod_id)
        pod.apply(PodEvent.RESTART)
        self._clear_runtime(pod)
        self._schedule_boot(pod, now + self.resume_boot_seconds, never_boot)
        pod.last_status_change = status_stamp("Reset by User", now)
        return pod

    def _schedule_boot(self, pod: Pod, at: float, never: bool) -> None:
        pod.boot_at = math.inf if never else at
        pod.booted_at = None

    def boot(self, pod_id: str, public_ports: dict[int, int], now: float) -> Pod:
        pod = self.pods[pod_id]
        pod.apply(PodEvent.BOOT)
        pod.booted_at = pod.started_at = now
        pod.ports_at = now + self.ports_delay_seconds
        pod.public_ports = dict(public_ports)
        pod.past_public_ports.update(public_ports.values())
        return pod

    def crash(self, pod_id: str, now: float, exit_code: int | None = 1) -> Pod:
        """The container exited by itself: the pod goes ERROR and keeps its GPUs."""
        pod = self.get(pod_id)
        pod.apply(PodEvent.CRASH)
        self._clear_runtime(pod)
        pod.exit_code = exit_code
        pod.last_status_change = status_stamp("Exited by Runpod", now)
        return pod

    def stop(self, pod_id: str, now: float) -> Pod:
        pod = self.get(pod_id)
        if pod.state is PodState.EXITED:
            return pod
        pod.apply(PodEvent.STOP)
        self._release(pod)
        pod.last_status_change = status_stamp("Exited by user", now)
        return pod

    def terminate(self, pod_id: str, now: float) -> Pod:
        pod = self.get(pod_id)
        pod.apply(PodEvent.TERMINATE)
        self._release(pod)
        pod.last_status_change = status_stamp("Terminated by user", now)
        return pod

    def update(self, pod_id: str, now: float, **changes: object) -> tuple[Pod, bool]:
        """Change a pod's spec (REST PATCH). Returns the pod and whether its running container restarted."""
        pod = self.get(pod_id)
        spec = dataclasses.replace(pod.spec, **changes)  # type: ignore[arg-type]
        ports = parse_ports(spec.ports)  # refuse bad ports before anything changes
        restart = pod.state is PodState.RUNNING and any(
            getattr(spec, name) != getattr(pod.spec, name) for name in CONTAINER_FIELDS
        )
        pod.spec, pod.ports = spec, ports
        if restart:
            self.restart(pod_id, now)
        return pod, restart

    def _clear_runtime(self, pod: Pod) -> None:
        pod.public_ports = {}
        pod.booted_at = None

    def _release(self, pod: Pod) -> None:
        self.machines[pod.machine_id].pod_gpus.pop(pod.id, None)
        if pod.public_ports:
            pod.stale_ports = dict(pod.public_ports)
        self._clear_runtime(pod)  # ``exit_code`` stays: a crashed pod's last exit (a start clears it)

    # Other tenants -------------------------------------------------------------------------------------

    def fill(self, machine_id: str) -> Machine:
        """Other tenants rent every GPU that is free on the machine right now."""
        machine = self.machine(machine_id)
        machine.tenant_gpus += machine.free
        return machine

    def clear(self) -> None:
        """Forget every pod and tenant; the machines stay. Ids keep coming from the same RNG, so no pod id
        handed out before is ever handed out again (a client's stale id must not match a new pod)."""
        self.pods.clear()
        for machine in self.machines.values():
            machine.tenant_gpus = 0
            machine.pod_gpus.clear()

    def release_tenants(self, machine_id: str) -> Machine:
        """Other tenants give back every GPU they hold on the machine."""
        machine = self.machine(machine_id)
        machine.tenant_gpus = 0
        return machine
