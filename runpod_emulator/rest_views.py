"""REST v2 shapes: a fleet pod as a v2 ``Pod``, a GPU type as a catalog entry, ledger charges as records.

Field names and nesting follow RunPod's published v2 schema (``Pod``, ``GpuType``, ``PodBillingRecord``).
Lifecycle, as v2 reports it:

    fleet state                        v2 status      actions
    STARTING, never booted (create)    PROVISIONING   stop, terminate
    STARTING after a resume/restart    STARTING       stop, terminate
    RUNNING                            RUNNING        stop, restart, terminate
    ERROR (the container exited)       ERROR          start, terminate
    EXITED                             EXITED         start, terminate

``runtime`` is null unless RUNNING (never stale, unlike GraphQL); its ``ports`` stay empty until the ports
are up. ``cost`` is the GPU rate while the pod holds GPUs (ERROR included: the machine is still rented), 0
otherwise. A GraphQL-created pod (cloud ALL) reports SECURE, where it is billed. Pure apart from reading the
emulator's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runpod_emulator.addressing import reported_ports
from runpod_emulator.billing import BucketSize, Record, Window
from runpod_emulator.catalogue import (
    DATA_CENTER_COUNTRY,
    DATA_CENTER_ID,
    DATA_CENTER_NAME,
    HOST_CUDA_VERSION,
    CloudType,
    GpuType,
)
from runpod_emulator.emulator import Emulator
from runpod_emulator.fleet import Pod, PodState
from runpod_emulator.podlogs import iso
from runpod_emulator.spec import cuda_tuple, format_ports
from runpod_emulator.stock import StockLevel, stock_level

SSH_PROXY_HOST = "ssh.runpod.io"


def rest_status(pod: Pod) -> str:
    if pod.state is PodState.STARTING:
        return "PROVISIONING" if pod.provisioning else "STARTING"
    return pod.state.value


ACTIONS: dict[str, list[str]] = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "ERROR": ["start", "terminate"],
    "EXITED": ["start", "terminate"],
    "TERMINATED": [],
}


def pod_rest(pod: Pod, emulator: Emulator) -> dict[str, Any]:
    now = emulator.clock.now()
    status = rest_status(pod)
    spec = pod.spec
    runtime = None
    direct = None
    if pod.state is PodState.RUNNING and pod.booted_at is not None:
        ports = reported_ports(pod, emulator.settings, now)
        runtime = {
            "uptime": int(now - pod.booted_at),
            "gpus": [{"util": 0, "memoryUtil": 0} for _ in range(pod.gpu_count)],
            "ports": [{"private": m.spec.private, "public": m.public, "type": m.spec.kind, "ip": m.ip} for m in ports],
        }
        ssh_port = next((m for m in ports if m.spec.private == 22 and m.spec.kind == "tcp"), None)
        if ssh_port is not None:
            direct = {
                "host": ssh_port.ip,
                "port": ssh_port.public,
                "username": "root",
                "command": f"ssh root@{ssh_port.ip} -p {ssh_port.public}",
            }
    mounts: dict[str, Any] = {}
    if spec.volume_gb:
        mounts["persistent"] = {"size": spec.volume_gb, "path": spec.volume_mount_path}
    return {
        "id": pod.id,
        "name": spec.name,
        "image": spec.image_name,
        "args": spec.docker_args,
        "disk": spec.container_disk_gb,
        "ports": format_ports(pod.ports),
        "env": dict(spec.env),
        "registry": spec.registry,
        "status": status,
        "actions": list(ACTIONS[status]),
        "mounts": mounts,
        "gpu": {"id": pod.gpu_type.id, "count": pod.gpu_count},
        "cloud": "COMMUNITY" if spec.cloud is CloudType.COMMUNITY else "SECURE",
        "dataCenterId": DATA_CENTER_ID,
        "cudaVersion": HOST_CUDA_VERSION,
        "ssh": {
            "proxy": {
                "host": SSH_PROXY_HOST,
                "port": 22,
                "username": pod.host_id,
                "command": f"ssh {pod.host_id}@{SSH_PROXY_HOST}",
            },
            "direct": direct,
        },
        "template": None,  # a template is applied once at create; the pod keeps no link (v2 schema)
        "cost": pod.gpu_usd_per_hour(),
        "locked": spec.locked,
        "globalNetworking": {"enabled": spec.global_networking},
        "runtime": runtime,
        "createdAt": iso(pod.created_at),
        "startedAt": None if pod.started_at is None else iso(pod.started_at),
    }


@dataclass(frozen=True, slots=True)
class AvailabilityQuery:
    """What ``include=AVAILABILITY`` was asked for: cloud, GPU count, countries, CUDA versions."""

    cloud: CloudType = CloudType.SECURE
    count: int = 1
    country_codes: tuple[str, ...] = ()
    cuda_versions: tuple[str, ...] = ()
    min_cuda_version: str | None = None

    def cuda_ok(self, version: str) -> bool:
        if self.cuda_versions and version not in self.cuda_versions:
            return False
        return self.min_cuda_version is None or cuda_tuple(version) >= cuda_tuple(self.min_cuda_version)


def gpu_type_rest(
    gpu: GpuType, emulator: Emulator, availability: AvailabilityQuery | None, *, listing: bool
) -> dict[str, Any] | None:
    """A catalog entry; None when a country filter drops the type from a listing."""
    machines = emulator.fleet.machines_of(gpu.id)
    largest = min(gpu.max_gpu_count, max((m.gpus for m in machines), default=0))
    community = gpu.community_price is not None
    entry: dict[str, Any] = {
        "id": gpu.id,
        "name": gpu.display_name,
        "pool": gpu.pool,
        "manufacturer": "NVIDIA",
        "memory": gpu.memory_gb,
        "secure": True,
        "community": community,
        # Not offered on community cloud: RunPod's value for the price is not recorded; 0 with community
        # false and maxCount 0 says the same thing three times.
        "price": {"secure": gpu.secure_price, "community": gpu.community_price or 0.0},
        "maxCount": {"secure": largest, "community": largest if community else 0},
    }
    if availability is None:
        return entry
    in_countries = not availability.country_codes or DATA_CENTER_COUNTRY in availability.country_codes
    if not in_countries and listing:
        return None
    fitting = [m for m in machines if availability.cuda_ok(m.cuda_version)]
    offered = gpu.price(availability.cloud) is not None and in_countries
    level = stock_level(fitting, availability.count, offered=offered)
    entry["availability"] = level.value
    if level is not StockLevel.NONE:
        entry["dataCenters"] = [{"id": DATA_CENTER_ID, "name": DATA_CENTER_NAME, "availability": level.value}]
    if machines and in_countries:
        versions = sorted({m.cuda_version for m in machines if availability.cuda_ok(m.cuda_version)}, key=cuda_tuple)
        entry["cudaVersions"] = [
            {"version": v, "available": offered and any(m.free >= availability.count for m in fitting)}
            for v in versions
        ]
    return entry


def billing_rest(found: list[Record], window: Window, pod_id: str | None) -> dict[str, Any]:
    records = [
        {
            "startTime": iso(r.start),
            "endTime": iso(r.end),
            "podId": r.pod_id,
            "totalAmount": r.total_usd,
            "gpuAmount": r.gpu_usd,
            "cpuAmount": 0.0,
            "diskAmount": r.disk_usd,
        }
        for r in found
    ]
    gpu = sum(r.gpu_usd for r in found)
    disk = sum(r.disk_usd for r in found)
    return {
        "records": records,
        "metadata": {
            "query": {
                "startTime": iso(window.start),
                "endTime": iso(window.end),
                "bucketSize": BucketSize(window.size).value,
                "podId": pod_id,
            },
            "recordCount": len(records),
            "uniquePodCount": len({r.pod_id for r in found}),
            "totals": {"totalAmount": gpu + disk, "gpuAmount": gpu, "cpuAmount": 0.0, "diskAmount": disk},
        },
    }
