"""What a pod is asked to be: ``PodSpec`` and its ports, as both APIs hand them to the fleet.

The GraphQL resolvers and the REST handlers each translate their own input shape into a ``PodSpec``;
the fleet never sees either wire format. Pure data and parsing: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from runpod_emulator.catalogue import CloudType
from runpod_emulator.errors import InvalidRequest


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


def format_ports(ports: tuple[PortSpec, ...]) -> list[str]:
    """The REST shape of a port list: ``["8000/tcp", "8888/http"]``."""
    return [f"{p.private}/{p.kind}" for p in ports]


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What a create asks for, already taken out of the API's input."""

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
    # Host CUDA constraints (GraphQL allowedCudaVersions; REST gpu.allowedCudaVersions / gpu.minCudaVersion).
    allowed_cuda_versions: tuple[str, ...] = ()
    min_cuda_version: str | None = None
    data_center_ids: tuple[str, ...] = ()
    # Kept and reported (REST); the emulator does not act on them.
    registry: str | None = None
    locked: bool = False
    global_networking: bool = False


def cuda_tuple(version: str) -> tuple[int, ...]:
    """``"12.11"`` -> ``(12, 11)``: versions compare numerically, so 12.11 is above 12.2."""
    return tuple(int(part) for part in version.split("."))


def cuda_fits(spec: PodSpec, host_version: str) -> bool:
    if spec.allowed_cuda_versions and host_version not in spec.allowed_cuda_versions:
        return False
    return spec.min_cuda_version is None or cuda_tuple(host_version) >= cuda_tuple(spec.min_cuda_version)
