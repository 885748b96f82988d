"""The simulated pod runner: each booted pod answers ``GET /health`` on its public port.

The answer imitates gpu_server: 503 ``{"status": "loading"}`` until the load delay has passed since boot
(read from the injected clock), then 200 with the server's shape; a pod made sick (``set_sick``, the admin
API's ``/pods/{id}/sick``) answers 503 ``{"status": "error"}`` while RunPod still reports it RUNNING, like
a gpu_server that crashed inside its container. Its "container output" (``read_output``) is two lines: one at
boot and one once the models are loaded. A simulated pod never exits by itself; the admin API's crash route
makes it (the emulator stops it and records the last words). All pods share the emulator's event loop:
one ``asyncio`` listener per pod and a minimal HTTP/1.1 responder (one request per connection), so hundreds
of pods cost a few file descriptors each and no threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from runpod_emulator.clock import Clock
from runpod_emulator.runner import PodLaunch

log = logging.getLogger(__name__)

READY_BODY = {
    "status": "ok",
    "stt": {"engine": "simulated", "model": "tiny.en"},
    "tts": {"engine": "simulated", "voice": "simulated"},
}
LOADING_BODY = {"status": "loading"}
SICK_BODY = {"status": "error", "detail": "made sick through the emulator's admin API"}
REQUEST_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


class SimulatedRunner:
    kind = "simulated"

    def __init__(self, clock: Clock, *, load_seconds: float, host: str = "127.0.0.1") -> None:
        self._clock = clock
        self._load_seconds = load_seconds
        self._host = host
        self._servers: dict[str, asyncio.Server] = {}
        self._ready_at: dict[str, float] = {}
        self._sick: set[str] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._output: dict[str, list[tuple[float, str]]] = {}  # lines not handed out yet, with when they appear

    def _ready(self, pod_id: str) -> bool:
        return self._clock.now() >= self._ready_at[pod_id]

    async def start(self, launch: PodLaunch) -> None:
        port = launch.service_public_port
        if port is None:
            self._output.setdefault(launch.pod_id, []).append((launch.booted_at, "simulated pod: no port to serve"))
            return
        ready_at = self._ready_at[launch.pod_id] = launch.booted_at + self._load_seconds
        self._output.setdefault(launch.pod_id, []).extend(
            [
                (launch.booted_at, f"simulated gpu_server: listening on port {port}, loading models"),
                (ready_at, "simulated gpu_server: models loaded, /health answers 200"),
            ]
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await self._respond(launch.pod_id, reader, writer)
            finally:
                self._connections.discard(task)

        self._servers[launch.pod_id] = await asyncio.start_server(handle, self._host, port)

    async def _respond(self, pod_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing in them changes the answer
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if parts[:1] == ["GET"] and path == "/health":
                ready = pod_id in self._ready_at and self._ready(pod_id)
                status, body = (200, READY_BODY) if ready else (503, LOADING_BODY)
                if pod_id in self._sick:
                    status, body = 503, SICK_BODY
            else:
                status, body = 404, {"detail": "Not Found"}
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass  # a client that hangs up or stalls gets nothing, like a real server
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def read_output(self, pod_id: str) -> list[str]:
        now = self._clock.now()
        pending = self._output.get(pod_id, [])
        due = [line for at, line in pending if at <= now]
        later = [(at, line) for at, line in pending if at > now]
        if later:
            self._output[pod_id] = later
        else:
            self._output.pop(pod_id, None)
        return due

    def take_exits(self) -> list[tuple[str, int | None]]:
        return []

    async def stop(self, pod_id: str) -> None:
        due = self.read_output(pod_id)  # what was written before the stop stays; what was not never will be
        self._output[pod_id] = [(float("-inf"), line) for line in due]
        self._ready_at.pop(pod_id, None)
        server = self._servers.pop(pod_id, None)
        if server is not None:
            server.close()

    def set_sick(self, pod_id: str, sick: bool) -> None:
        """Make a pod's /health fail (or recover) from now on; it survives stops and resumes."""
        (self._sick.add if sick else self._sick.discard)(pod_id)

    def describe(self, pod_id: str) -> dict[str, object]:
        serving = pod_id in self._servers
        return {"serving": serving, "ready": serving and self._ready(pod_id) and pod_id not in self._sick,
                "sick": pod_id in self._sick}

    async def aclose(self) -> None:
        for pod_id in list(self._servers):
            await self.stop(pod_id)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        # Closed transports release their sockets in a callback; run it before the loop may shut down.
        await asyncio.sleep(0)
