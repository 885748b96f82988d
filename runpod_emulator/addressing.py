"""Where a pod's ports are reported, and how they are reached: shared by the GraphQL and REST views.

A running pod reports one mapping per declared port once its ports are up (``ports_delay_seconds`` after the
runtime appears): tcp ports on the pod host's address and a fresh public port (as RunPod's direct TCP
mappings), http ports the same by default. With ``http_proxy_only`` an http port is reported on an internal
address where nothing listens (RunPod reports 100.65.x.x; the emulator uses a loopback address, default
127.0.0.2, so that no client is ever sent off this machine) and is reachable only through the pod proxy,
``/proxy/<podId>-<privatePort>/...`` on the emulator, which stands for RunPod's
``https://<podId>-<privatePort>.proxy.runpod.net/...``.
"""

from __future__ import annotations

from dataclasses import dataclass

from runpod_emulator.fleet import Pod
from runpod_emulator.settings import EmulatorSettings
from runpod_emulator.spec import PortSpec

PROXY_PREFIX = "/proxy"


@dataclass(frozen=True, slots=True)
class PortMapping:
    spec: PortSpec
    public: int
    ip: str
    is_ip_public: bool


def _mapping(spec: PortSpec, public: int, settings: EmulatorSettings) -> PortMapping:
    if spec.kind == "http":
        ip = settings.internal_ip if settings.http_proxy_only else settings.pod_host
        return PortMapping(spec, public, ip, False)
    return PortMapping(spec, public, settings.pod_host, True)


def reported_ports(pod: Pod, settings: EmulatorSettings, now: float) -> list[PortMapping]:
    """The mappings a running pod reports now (empty until its ports are up)."""
    if not pod.ports_reported(now):
        return []
    return [_mapping(s, pod.public_ports[s.private], settings) for s in pod.ports if s.private in pod.public_ports]


def stale_ports(pod: Pod, settings: EmulatorSettings) -> list[PortMapping]:
    """The mappings an EXITED pod had when it stopped (GraphQL keeps reporting them, as RunPod was seen doing)."""
    return [_mapping(s, pod.stale_ports[s.private], settings) for s in pod.ports if s.private in pod.stale_ports]


def proxy_path(pod_id: str, private_port: int) -> str:
    return f"{PROXY_PREFIX}/{pod_id}-{private_port}"
