"""Pod runners: what actually runs behind a pod's public port once RunPod would report its runtime.

``emulator.py`` decides *when* a pod boots and stops (from the fleet's state and the clock); a runner only
makes that visible on the network. Two implementations, chosen by ``--runner``:

- ``SimulatedRunner`` (``simulated.py``): a tiny ``/health`` responder per pod on the emulator's own event
  loop; cheap enough for hundreds of pods.
- ``ProcessRunner`` (``process.py``): one real OS process per running pod (by default ``gpu_server``).

A runner also hands the emulator what the pod's process wrote (``read_output``, served by REST's logs
endpoint) and which processes ended by themselves (``take_exits``: the pod then shows ``ERROR``).

Which port is served: the pod's private port 8000 if it declares one (tcp or http), otherwise its first
declared port; a pod with no ports runs but serves nothing. Every declared port still gets its own fresh
local public port at each start, like RunPod's TCP port mappings.
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from runpod_emulator.spec import PortSpec

SERVICE_PORT = 8000  # gpu_server's private port


@dataclass(frozen=True, slots=True)
class PodLaunch:
    """Everything a runner needs to start one pod; built by the emulator when the boot delay has passed."""

    pod_id: str
    env: tuple[tuple[str, str], ...]
    ports: tuple[PortSpec, ...]
    public_ports: dict[int, int] = field(default_factory=dict)  # private -> public
    booted_at: float = 0.0
    public_ip: str = "127.0.0.1"

    @property
    def service_private_port(self) -> int | None:
        return service_port(self.ports)

    @property
    def service_public_port(self) -> int | None:
        private = self.service_private_port
        return None if private is None else self.public_ports[private]


def service_port(ports: tuple[PortSpec, ...]) -> int | None:
    if any(p.private == SERVICE_PORT for p in ports):
        return SERVICE_PORT
    return ports[0].private if ports else None


def allocate_port(host: str, avoid: Collection[int] = ()) -> int:
    """A port that is free on ``host`` right now and not in ``avoid`` (a pod's previous public ports)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise RuntimeError(f"could not find a free port on {host}")


class PodRunner(Protocol):
    kind: str

    async def start(self, launch: PodLaunch) -> None:
        """Start serving the pod. Called once per boot, after the fleet marked it RUNNING."""
        ...

    async def stop(self, pod_id: str) -> None:
        """Stop serving the pod. Returns promptly; slow clean-up may continue in an owned task."""
        ...

    def read_output(self, pod_id: str) -> list[str]:
        """Complete lines the pod's process wrote since the last call (kept across stops and restarts)."""
        ...

    def take_exits(self) -> list[tuple[str, int | None]]:
        """Pods whose process ended by itself (not stopped) since the last call, with their exit codes."""
        ...

    def describe(self, pod_id: str) -> dict[str, object]:
        """Admin view: at least ``serving`` (bool) and ``ready`` (bool, or None where unknown)."""
        ...

    async def aclose(self) -> None:
        """Stop every pod and wait until nothing is left running."""
        ...
