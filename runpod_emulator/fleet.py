"""The fleet: machines with GPU slots, and the pods placed on them. The emulator's pure domain core.

Every RunPod pod operation is a method here that takes ``now`` and either changes the in-memory state or
raises a ``FleetError`` whose message is RunPod's exact text. Nothing here does I/O, reads a clock or knows
about GraphQL; ``emulator.py`` wraps it with the clock, the billing ledger and the pod runners.

A pod's phase is a ``PodState`` and changes only through ``TRANSITIONS``:

    create ─► STARTING ─(boot delay)─► RUNNING      desiredStatus RUNNING in both; runtime only in RUNNING
    STARTING | RUNNING ─stop─► EXITED               the machine's GPUs go back to the pool
    EXITED ─resume─► STARTING                       same machine, only if it still has free GPUs
    any live state ─terminate─► TERMINATED          gone from the API, kept here for the admin view

Other tenants are modelled per machine (``Machine.tenant_gpus``): they take GPUs a stopped pod gave back,
which is what makes a later resume fail with "There are not enough free GPUs on the host machine...".

Exceptions (all carry RunPod's wording in ``str(e)``):
    FleetError
    ├── NoInstancesAvailable   create: no machine of that GPU type has enough free GPUs
    ├── NotEnoughFreeGpus      resume: the pod's own machine is full
    ├── PodNotFound            unknown or terminated pod id
    └── InvalidRequest         input RunPod would refuse (no image, bad ports, gpuCount < 1)
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from runpod_emulator.catalogue import CATALOGUE, CloudType, GpuType, storage_usd_per_hour

NO_INSTANCES = (
    "There are no longer any instances available with the requested specifications. Please refresh and try again."
)
NOT_ENOUGH_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."


class FleetError(Exception):
    """A pod operation RunPod would refuse; ``str(e)`` is the message RunPod sends."""


class NoInstancesAvailable(FleetError):
    def __init__(self) -> None:
        super().__init__(NO_INSTANCES)


class NotEnoughFreeGpus(FleetError):
    def __init__(self) -> None:
        super().__init__(NOT_ENOUGH_FREE_GPUS)


class PodNotFound(FleetError):
    def __init__(self, pod_id: str) -> None:
        super().__init__(f'Pod "{pod_id}" not found.')


class InvalidRequest(FleetError):
    pass


class IllegalTransition(RuntimeError):
    """A bug, not a client error: the emulator tried a transition the table does not allow."""


class PodState(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    TERMINATED = "TERMINATED"


class PodEvent(StrEnum):
    BOOT = "boot"
    STOP = "stop"
    RESUME = "resume"
    TERMINATE = "terminate"


TRANSITIONS: dict[tuple[PodState, PodEvent], PodState] = {
    (PodState.STARTING, PodEvent.BOOT): PodState.RUNNING,
    (PodState.STARTING, PodEvent.STOP): PodState.EXITED,
    (PodState.RUNNING, PodEvent.STOP): PodState.EXITED,
    (PodState.EXITED, PodEvent.RESUME): PodState.STARTING,
    (PodState.STARTING, PodEvent.TERMINATE): PodState.TERMINATED,
    (PodState.RUNNING, PodEvent.TERMINATE): PodState.TERMINATED,
    (PodState.EXITED, PodEvent.TERMINATE): PodState.TERMINATED,
}
# States in which the pod holds GPUs and bills for them (RunPod bills from the moment it is rented).
HOLDS_GPU = frozenset({PodState.STARTING, PodState.RUNNING})


@dataclass(frozen=True, slots=True)
class PortSpec:
    private: int
    kind: str  # "tcp" or "http"


def parse_ports(text: str | None) -> tuple[PortSpec, ...]:
    """Parse RunPod's comma-separated port list, e.g. ``"8000/http,22/tcp"``."""
    specs: list[PortSpec] = []
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        number, _, kind = item.partition("/")
        kind = kind.lower() or "http"
        if not number.isdigit() or not 0 < int(number) < 65536 or kind not in ("tcp", "http"):
            raise InvalidRequest(f'Invalid port "{item}": use NUMBER/tcp or NUMBER/http.')
        specs.append(PortSpec(int(number), kind))
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What a create asks for, already taken out of the GraphQL input."""

    name: str
    image_name: str
    gpu_type_id: str
    gpu_count: int = 1
    cloud: CloudType = CloudType.ALL
    ports: str = ""
    env: tuple[tuple[str, str], ...] = ()
    volume_gb: int = 0
    container_disk_gb: int = 10
    volume_mount_path: str = "/runpod-volume"
    docker_args: str = ""
    min_vcpu: int = 1
    min_memory_gb: int = 1
    template_id: str | None = None


@dataclass(slots=True)
class Machine:
    id: str
    gpu_type: GpuType
    gpus: int
    tenant_gpus: int = 0  # held by other RunPod customers
    pod_gpus: dict[str, int] = field(default_factory=dict)  # held by our running pods

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
    boot_at: float = 0.0  # when a STARTING pod gets its runtime
    booted_at: float | None = None
    public_ports: dict[int, int] = field(default_factory=dict)  # private -> public, while RUNNING
    past_public_ports: set[int] = field(default_factory=set)

    def apply(self, event: PodEvent) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"pod {self.id}: {event} is not allowed in {self.state}") from None

    @property
    def desired_status(self) -> str:
        return "RUNNING" if self.state in HOLDS_GPU else self.state.value

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
        gpu_types: Iterable[GpuType] = CATALOGUE,
    ) -> None:
        self._rng = rng
        self.boot_seconds = boot_seconds
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

    def due_for_boot(self, now: float) -> list[Pod]:
        return [p for p in self.pods.values() if p.state is PodState.STARTING and p.boot_at <= now]

    # Pod operations ------------------------------------------------------------------------------------

    def create(self, spec: PodSpec, now: float) -> Pod:
        if not spec.image_name and not spec.template_id:
            raise InvalidRequest("Either imageName or templateId must be provided.")
        if spec.gpu_count < 1:
            raise InvalidRequest("gpuCount must be at least 1.")
        ports = parse_ports(spec.ports)
        gpu_type = next((m.gpu_type for m in self.machines.values() if m.gpu_type.id == spec.gpu_type_id), None)
        if gpu_type is None or gpu_type.price(spec.cloud) is None or spec.gpu_count > gpu_type.max_gpu_count:
            raise NoInstancesAvailable()
        # First fit: RunPod packs pods onto hosts; what matters here is only whether any host has room.
        machine = next((m for m in self.machines.values() if m.gpu_type is gpu_type and m.free >= spec.gpu_count), None)
        if machine is None:
            raise NoInstancesAvailable()
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
        self._start(pod, machine, now)
        return pod

    def resume(self, pod_id: str, gpu_count: int, now: float) -> Pod:
        pod = self.get(pod_id)
        if pod.state in HOLDS_GPU:
            return pod  # already running: RunPod answers with the pod, nothing changes
        # gpuCount 0 does not give a 0-GPU pod on RunPod (runpod-python#371): keep the old count.
        count = gpu_count if gpu_count >= 1 else pod.gpu_count
        machine = self.machines[pod.machine_id]
        if machine.free < count:
            raise NotEnoughFreeGpus()
        pod.gpu_count = count
        pod.apply(PodEvent.RESUME)
        self._start(pod, machine, now)
        return pod

    def _start(self, pod: Pod, machine: Machine, now: float) -> None:
        machine.pod_gpus[pod.id] = pod.gpu_count
        pod.boot_at = now + self.boot_seconds
        pod.booted_at = None
        pod.last_status_change = status_stamp("Rented by User", now)

    def boot(self, pod_id: str, public_ports: dict[int, int], now: float) -> Pod:
        pod = self.pods[pod_id]
        pod.apply(PodEvent.BOOT)
        pod.booted_at = now
        pod.public_ports = dict(public_ports)
        pod.past_public_ports.update(public_ports.values())
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

    def _release(self, pod: Pod) -> None:
        self.machines[pod.machine_id].pod_gpus.pop(pod.id, None)
        pod.public_ports = {}
        pod.booted_at = None

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
