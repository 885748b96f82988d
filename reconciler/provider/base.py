"""The RunPod seam: the records a provider returns and the ``Provider`` protocol both APIs implement.

``rest.RestProvider`` speaks REST v2 (the default; GraphQL retires in early 2027) and ``graphql.GraphQLProvider``
speaks GraphQL through the official SDK. The loop, the actuator and the admin API see only this protocol
and the error tree in ``errors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..domain import GPU_SERVER_PORT
from .ratelimit import RateBudget


@dataclass(frozen=True, slots=True)
class ProviderPod:
    id: str
    name: str
    desired_status: str  # RUNNING (holding or getting its GPU) | EXITED | ERROR | TERMINATED
    cost_per_hr: float = 0.0
    machine_id: str = ""
    gpu_display_name: str = ""
    endpoint_host: str | None = None  # public address of the gpu_server port; None while there is no runtime
    endpoint_port: int | None = None
    status: str = ""  # the API's own lifecycle word (REST: PROVISIONING|STARTING|RUNNING|EXITED|ERROR|TERMINATED)

    @property
    def failed(self) -> bool:
        """RunPod reports the container in an unrecoverable error (REST ``ERROR``; GraphQL cannot tell)."""
        return self.status == "ERROR"


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str
    gpu_type: str
    image: str
    env: dict[str, str] = field(default_factory=dict)
    cloud_type: str = "SECURE"
    volume_gb: int = 20
    container_disk_gb: int = 20
    ports: str = f"{GPU_SERVER_PORT}/tcp"


@dataclass(frozen=True, slots=True)
class GpuOffer:
    """One GPU type in the catalog: its $/h on our cloud and, where the API says, its stock right now."""

    gpu_type: str
    price_per_hr: float
    stock: str | None = None  # NONE | LOW | MEDIUM | HIGH; None where the API does not say


@dataclass(frozen=True, slots=True)
class BilledPod:
    """What RunPod billed one pod over a period, in USD."""

    runpod_id: str
    gpu_usd: float
    storage_usd: float


class Provider(Protocol):
    api: str  # "rest" | "graphql"
    budget: RateBudget  # the API's rate-limit quota as last reported (empty where the API reports none)

    async def list_pods(self, prefix: str) -> list[ProviderPod]: ...
    async def get_pod(self, pod_id: str) -> ProviderPod | None: ...
    async def find_by_name(self, name: str) -> ProviderPod | None: ...
    async def create_pod(self, spec: PodSpec) -> ProviderPod: ...
    async def resume_pod(self, pod_id: str) -> None: ...
    async def stop_pod(self, pod_id: str) -> None: ...
    async def terminate_pod(self, pod_id: str) -> None: ...
    async def gpu_catalog(self, gpu_types: list[str], cloud_type: str) -> dict[str, GpuOffer]: ...
    async def pod_logs(self, pod_id: str, tail: int) -> list[str]: ...  # RunPod's own lines start "[system] "
    async def billing(self, since: float) -> list[BilledPod] | None: ...
    async def aclose(self) -> None: ...


Observer = Callable[[str, str, str, float], None]  # (api, op, outcome, seconds)


def no_observer(api: str, op: str, outcome: str, seconds: float) -> None:
    pass
