"""The GraphQL schema subset RunPod's pod API exposes, and the resolvers that answer it.

Types, field names and input names follow RunPod's public schema as the SDK (1.12.0) and runpodctl use it,
so inline literals (``cloudType: ALL``, ``dataCenterId: null``) and ``$variables`` both parse, unknown fields
are validation errors (HTTP 400), and only the selected fields come back. Arguments and input fields are
declared nullable where clients disagree (``PodFilter`` vs ``PodFilter!``), as the reference advises.

The context value is a ``GraphQLContext``: the emulator, and whether an injected ``no_runtime`` fault asks
the pod this call creates or resumes never to get a runtime.

Resolvers turn ``fleet.Pod`` objects into plain dicts in RunPod's wire shape; graphql-core's default resolver
then picks the selected keys (and calls a value that is a function with the field's arguments, which is
how ``lowestPrice(input:)`` and ``myself.pods`` are computed only when asked for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import GraphQLResolveInfo, GraphQLSchema, build_schema

from runpod_emulator.addressing import PortMapping, reported_ports, stale_ports
from runpod_emulator.catalogue import CATALOGUE, CloudType, GpuType
from runpod_emulator.emulator import Emulator
from runpod_emulator.fleet import Pod, PodSpec, PodState
from runpod_emulator.stock import stock_level

SDL = """
scalar Void

enum CloudTypeEnum { ALL SECURE COMMUNITY }
enum PodStatus { CREATED RUNNING RESTARTING EXITED PAUSED DEAD TERMINATED }
enum PodType { RESERVED INTERRUPTABLE }

input EnvironmentVariableInput { key: String, value: String }

input PodFindAndDeployOnDemandInput {
  name: String, imageName: String, cloudType: CloudTypeEnum, startSsh: Boolean, startJupyter: Boolean,
  gpuTypeId: String, supportPublicIp: Boolean, gpuCount: Int, volumeInGb: Int, containerDiskInGb: Int,
  minVcpuCount: Int, minMemoryInGb: Int, dataCenterId: String, countryCode: String, dockerArgs: String,
  ports: String, volumeMountPath: String, env: [EnvironmentVariableInput], templateId: String,
  networkVolumeId: String, allowedCudaVersions: [String], minDownload: Int, minUpload: Int, volumeKey: String
}
input PodResumeInput { podId: String, gpuCount: Int }
input PodStopInput { podId: String }
input PodTerminateInput { podId: String }
input PodFilter { podId: String }
input GpuTypeFilter { id: String, ids: [String] }
input GpuLowestPriceInput { gpuCount: Int, secureCloud: Boolean, dataCenterId: String, countryCode: String }

type PodRuntimePorts { ip: String, isIpPublic: Boolean, privatePort: Int, publicPort: Int, type: String }
type PodRuntime { uptimeInSeconds: Int, ports: [PodRuntimePorts] }
type PodMachineInfo { podHostId: String, gpuDisplayName: String, gpuTypeId: String, location: String }

type Pod {
  id: String, name: String, imageName: String, env: [String], machineId: String, machine: PodMachineInfo,
  desiredStatus: PodStatus, costPerHr: Float, adjustedCostPerHr: Float, gpuCount: Int, vcpuCount: Int,
  memoryInGb: Int, containerDiskInGb: Int, volumeInGb: Int, volumeMountPath: String, dockerArgs: String,
  dockerId: String, lastStatusChange: String, lastStartedAt: String, podType: PodType, port: Int,
  ports: String, uptimeSeconds: Int, runtime: PodRuntime, templateId: String
}

type LowestPrice {
  gpuTypeId: String, gpuName: String, minimumBidPrice: Float, uninterruptablePrice: Float,
  stockStatus: String, availableGpuCounts: [Int], minVcpu: Float, minMemory: Float
}

type GpuType {
  id: String, displayName: String, manufacturer: String, memoryInGb: Int, cudaCores: Int, maxGpuCount: Int,
  secureCloud: Boolean, communityCloud: Boolean, securePrice: Float, communityPrice: Float,
  oneWeekPrice: Float, oneMonthPrice: Float, threeMonthPrice: Float, secureSpotPrice: Float,
  communitySpotPrice: Float, lowestPrice(input: GpuLowestPriceInput): LowestPrice
}

type NetworkVolume { id: String, name: String, size: Int, dataCenterId: String }
type User { id: String, pubKey: String, networkVolumes: [NetworkVolume], pods: [Pod] }

type Query {
  myself: User
  pod(input: PodFilter): Pod
  gpuTypes(input: GpuTypeFilter): [GpuType]
}

type Mutation {
  podFindAndDeployOnDemand(input: PodFindAndDeployOnDemandInput): Pod
  podResume(input: PodResumeInput): Pod
  podStop(input: PodStopInput): Pod
  podTerminate(input: PodTerminateInput): Void
}
"""


@dataclass(frozen=True, slots=True)
class GraphQLContext:
    emulator: Emulator
    never_boot: bool = False  # a no_runtime fault hit this call


def _emulator(info: GraphQLResolveInfo) -> Emulator:
    return info.context.emulator


def _port_view(m: PortMapping) -> dict[str, Any]:
    # tcp ports are directly reachable (isIpPublic); http ports sit behind RunPod's proxy, so they are
    # reported as internal (served on loopback too unless http_proxy_only is set).
    return {"ip": m.ip, "isIpPublic": m.is_ip_public, "privatePort": m.spec.private, "publicPort": m.public,
            "type": m.spec.kind}


def pod_view(pod: Pod, emulator: Emulator) -> dict[str, Any]:
    """A pod as RunPod's GraphQL ``Pod`` type returns it.

    ``runtime`` is null until the container runs, and while a pod whose container died sits in ERROR
    (GraphQL has no such state: ``desiredStatus`` stays RUNNING, the intent). Its ports list stays empty
    for ``ports_delay_seconds`` after the runtime appears. With ``stale_exited_ports`` an EXITED pod keeps
    reporting the mappings it had, as RunPod was seen doing; clients must read ``desiredStatus`` first.
    """
    runtime = None
    now = emulator.clock.now()
    settings = emulator.settings
    if pod.state is PodState.RUNNING and pod.booted_at is not None:
        runtime = {
            "uptimeInSeconds": int(now - pod.booted_at),
            "ports": [_port_view(m) for m in reported_ports(pod, settings, now)],
        }
    elif pod.state is PodState.EXITED and settings.stale_exited_ports and pod.stale_ports:
        runtime = {"uptimeInSeconds": 0, "ports": [_port_view(m) for m in stale_ports(pod, settings)]}
    return {
        "id": pod.id,
        "name": pod.spec.name,
        "imageName": pod.spec.image_name,
        "env": [f"{k}={v}" for k, v in pod.spec.env],
        "machineId": pod.machine_id,
        "machine": {
            "podHostId": pod.host_id,
            "gpuDisplayName": pod.gpu_type.display_name,
            "gpuTypeId": pod.gpu_type.id,
            "location": "EMU",
        },
        "desiredStatus": pod.desired_status,
        "costPerHr": pod.cost_per_hr,
        "adjustedCostPerHr": pod.cost_per_hr,
        "gpuCount": pod.gpu_count,
        "vcpuCount": pod.vcpu_count,
        "memoryInGb": pod.memory_gb,
        "containerDiskInGb": pod.spec.container_disk_gb,
        "volumeInGb": pod.spec.volume_gb,
        "volumeMountPath": pod.spec.volume_mount_path,
        "dockerArgs": pod.spec.docker_args or None,
        "dockerId": None,
        "lastStatusChange": pod.last_status_change,
        "lastStartedAt": None,
        "podType": "RESERVED",
        "port": None,
        "ports": pod.spec.ports,
        "uptimeSeconds": 0,  # RunPod's top-level uptime stays 0; runtime.uptimeInSeconds is the real one
        "runtime": runtime,
        "templateId": pod.spec.template_id,
    }


def _spec_from_input(data: dict[str, Any]) -> PodSpec:
    env = tuple((str(e.get("key") or ""), str(e.get("value") or "")) for e in data.get("env") or [])
    defaults = PodSpec(name="", image_name="", gpu_type_id="")

    def pick(key: str, default: Any) -> Any:
        value = data.get(key)
        return default if value is None else value

    return PodSpec(
        name=pick("name", "my pod"),
        image_name=pick("imageName", ""),
        gpu_type_id=pick("gpuTypeId", ""),
        gpu_count=pick("gpuCount", 1),
        cloud=CloudType(pick("cloudType", "ALL")),
        ports=pick("ports", "").replace(" ", ""),
        env=env,
        volume_gb=pick("volumeInGb", defaults.volume_gb),
        container_disk_gb=pick("containerDiskInGb", defaults.container_disk_gb),
        volume_mount_path=pick("volumeMountPath", defaults.volume_mount_path),
        docker_args=pick("dockerArgs", ""),
        min_vcpu=pick("minVcpuCount", 1),
        min_memory_gb=pick("minMemoryInGb", 1),
        template_id=data.get("templateId"),
        allowed_cuda_versions=tuple(data.get("allowedCudaVersions") or ()),
        data_center_ids=(data["dataCenterId"],) if data.get("dataCenterId") else (),
    )


def _gpu_type_view(gpu: GpuType, emulator: Emulator) -> dict[str, Any]:
    def lowest_price(_info: GraphQLResolveInfo, input: dict[str, Any] | None = None) -> dict[str, Any]:
        args = input or {}
        wanted = args.get("gpuCount") or 1
        machines = emulator.fleet.machines_of(gpu.id)
        price = gpu.lowest_price(args.get("secureCloud"))
        stock = stock_level(machines, wanted, offered=price is not None)
        return {
            "gpuTypeId": gpu.id,
            "gpuName": gpu.display_name,
            "uninterruptablePrice": price,
            "minimumBidPrice": None if price is None else round(price * 0.6, 3),
            "stockStatus": stock.graphql,
            "availableGpuCounts": [n for n in (1, 2, 4, 8) if any(m.free >= n for m in machines)],
            "minVcpu": float(gpu.vcpu_per_gpu * wanted),
            "minMemory": float(gpu.ram_gb_per_gpu * wanted),
        }

    return {**gpu.as_graphql(), "lowestPrice": lowest_price}


# Root resolvers --------------------------------------------------------------------------------------------


def _myself(_root: Any, info: GraphQLResolveInfo) -> dict[str, Any]:
    emulator = _emulator(info)
    return {
        "id": emulator.fleet.user_id,
        "pubKey": "",
        "networkVolumes": [],
        "pods": lambda _info: [pod_view(p, emulator) for p in emulator.fleet.live_pods()],
    }


def _pod(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any] | None = None) -> dict[str, Any] | None:
    emulator = _emulator(info)
    pod = emulator.fleet.pods.get((input or {}).get("podId") or "")
    if pod is None or pod.state is PodState.TERMINATED:
        return None  # RunPod answers null, not an error, for unknown and terminated pods
    return pod_view(pod, emulator)


def _gpu_types(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    emulator = _emulator(info)
    args = input or {}
    wanted = set(args.get("ids") or []) | ({args["id"]} if args.get("id") else set())
    return [_gpu_type_view(g, emulator) for g in CATALOGUE if not wanted or g.id in wanted]


async def _create(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any] | None = None) -> dict[str, Any]:
    emulator = _emulator(info)
    pod = await emulator.create(_spec_from_input(input or {}), never_boot=info.context.never_boot)
    return pod_view(pod, emulator)


async def _resume(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any] | None = None) -> dict[str, Any]:
    emulator = _emulator(info)
    args = input or {}
    pod = await emulator.resume(args.get("podId") or "", args.get("gpuCount") or 0, never_boot=info.context.never_boot)
    return pod_view(pod, emulator)


async def _stop(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any] | None = None) -> dict[str, Any]:
    emulator = _emulator(info)
    return pod_view(await emulator.stop((input or {}).get("podId") or ""), emulator)


async def _terminate(_root: Any, info: GraphQLResolveInfo, input: dict[str, Any] | None = None) -> None:
    await _emulator(info).terminate((input or {}).get("podId") or "")


def build() -> GraphQLSchema:
    """The schema with resolvers attached; the GraphQL context value must be a ``GraphQLContext``."""
    schema = build_schema(SDL)
    query, mutation = schema.query_type, schema.mutation_type
    assert query is not None and mutation is not None
    query.fields["myself"].resolve = _myself
    query.fields["pod"].resolve = _pod
    query.fields["gpuTypes"].resolve = _gpu_types
    mutation.fields["podFindAndDeployOnDemand"].resolve = _create
    mutation.fields["podResume"].resolve = _resume
    mutation.fields["podStop"].resolve = _stop
    mutation.fields["podTerminate"].resolve = _terminate
    return schema
