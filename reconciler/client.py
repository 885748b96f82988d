"""The companion server's library: get a voice pod for a session, keep it, give it back.

    pods = VoicePods("http://controller:8080", token=os.environ["HARPER_API_TOKEN"])
    async with pods.session("user-42") as voice:        # waits while the lease is pending
        stt_url, tts_url, token = voice.endpoints["stt"], voice.endpoints["tts"], voice.token
        ...                                               # on a dead socket: await voice.recover()
    # leaving the block releases the lease (the pod stops after the idle TTL)

While the session is open a background task heartbeats the lease. If the lease ends under it (expired,
pod lost) ``voice.lost`` is set; ``recover()`` gets a new lease. If the controller cannot be reached, or
no pod is granted in ``fallback_after_s``, the session falls back to a local CPU gpu_server (started on
demand, shared by sessions) and says so: a warning in the log and ``harper_client_fallbacks_total``.

Errors: ``ControllerError`` (the controller answered with an error; ``.status``, ``.code``),
``ControllerUnavailable`` (it could not be reached), ``LeaseFailed`` (the lease ended without a pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from gpu_server.auth import issue_token

log = logging.getLogger(__name__)


class ControllerError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class ControllerUnavailable(Exception):
    pass


class LeaseFailed(Exception):
    pass


@dataclass
class Lease:
    id: str
    state: str
    path: str | None
    endpoints: dict[str, str] | None
    token: str | None
    pod_id: str | None
    queue_position: int | None
    reason: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Lease:
        return cls(
            id=body["id"], state=body["state"], path=body.get("path"), endpoints=body.get("endpoints"),
            token=body.get("token"), pod_id=body.get("pod_id"), queue_position=body.get("queue_position"),
            reason=body.get("reason"), raw=body,
        )


class LeaseApi:
    """Thin async client of the controller's ``/v1/leases`` endpoints."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _req(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, url, **kw)
        except httpx.TransportError as e:
            raise ControllerUnavailable(f"controller unreachable: {type(e).__name__}") from e
        if response.status_code >= 500 and response.status_code != 503:
            raise ControllerUnavailable(f"controller answered {response.status_code}")
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ControllerError(response.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ControllerError(response.status_code, "http_error", response.text[:200]) from None
        return response.json()

    async def create(self, session_id: str, *, voice_id: str | None = None, language: str | None = None,
                     idempotency_key: str | None = None) -> Lease:
        body = {"session_id": session_id} | ({"voice_id": voice_id} if voice_id else {}) | (
            {"language": language} if language else {})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Lease.parse(await self._req("POST", "/v1/leases", json=body, headers=headers))

    async def get(self, lease_id: str, wait_s: float = 0.0) -> Lease:
        timeout = httpx.Timeout(wait_s + 10.0)
        return Lease.parse(await self._req("GET", f"/v1/leases/{lease_id}", params={"wait": wait_s}, timeout=timeout))

    async def heartbeat(self, lease_id: str) -> Lease:
        return Lease.parse(await self._req("POST", f"/v1/leases/{lease_id}/heartbeat"))

    async def release(self, lease_id: str, *, pod_failed: bool = False) -> Lease:
        params = {"pod_failed": "true"} if pod_failed else {}
        return Lease.parse(await self._req("DELETE", f"/v1/leases/{lease_id}", params=params))

    async def wait_ready(
        self, lease: Lease, timeout_s: float, heartbeat_every_s: float = 20.0,
        on_wait: Callable[[Lease, float], None] | None = None,
    ) -> Lease:
        """Long-poll until the lease leaves ``pending`` (heartbeating so it does not expire meanwhile);
        ``on_wait(lease, seconds)`` is called after each poll that found it still pending."""
        started = time.monotonic()
        deadline = started + timeout_s
        last_beat = started
        while lease.state == "pending":
            if on_wait is not None:
                on_wait(lease, time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"lease {lease.id} still pending after {timeout_s:.0f}s")
            if time.monotonic() - last_beat >= heartbeat_every_s:
                lease, last_beat = await self.heartbeat(lease.id), time.monotonic()
                continue
            lease = await self.get(lease.id, wait_s=min(remaining, heartbeat_every_s, 30.0))
        if lease.state != "ready":
            raise LeaseFailed(f"lease {lease.id} ended {lease.state}: {lease.reason or 'no reason given'}")
        return lease


class LocalGpuServer:
    """A CPU gpu_server started on this machine when no pod can be had; tokens signed with its own secret."""

    def __init__(self, *, startup_timeout_s: float = 180.0) -> None:
        self.secret = secrets.token_hex(24)
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._timeout = startup_timeout_s

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def ensure(self) -> None:
        async with self._lock:
            if self.running:
                return
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            env = dict(os.environ) | {"GPU_SERVER_SECRET": self.secret, "GPU_SERVER_HOST": "127.0.0.1",
                                      "GPU_SERVER_PORT": str(self.port)}
            env.pop("RUNPOD_POD_ID", None)
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gpu_server", "serve", env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            )
            deadline = time.monotonic() + self._timeout
            async with httpx.AsyncClient(timeout=2.0) as http:
                while time.monotonic() < deadline:
                    if self._proc.returncode is not None:
                        raise RuntimeError(f"local gpu_server exited with {self._proc.returncode}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"http://127.0.0.1:{self.port}/health")).status_code == 200:
                            return
                    await asyncio.sleep(0.25)
            await self.stop()
            raise TimeoutError("local gpu_server did not become healthy")

    def grant(self) -> Lease:
        lease_id = "local-" + uuid.uuid4().hex[:12]
        token = issue_token(self.secret, lease_id, "local", time.time() + 24 * 3600)
        base = f"ws://127.0.0.1:{self.port}"
        return Lease(lease_id, "ready", "local_fallback", {"stt": f"{base}/ws/stt", "tts": f"{base}/ws/tts"},
                     token, "local", None, None)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class VoiceSession:
    """One companion session's hold on a voice pod. Use through ``VoicePods.session``."""

    def __init__(self, pods: VoicePods, session_id: str, voice_id: str | None, language: str | None) -> None:
        self._pods = pods
        self.session_id = session_id
        self.voice_id, self.language = voice_id, language
        self.lease: Lease | None = None
        self.wait_s: float = 0.0
        self.lost = asyncio.Event()
        self._beat: asyncio.Task | None = None

    @property
    def endpoints(self) -> dict[str, str]:
        assert self.lease is not None and self.lease.endpoints
        return self.lease.endpoints

    @property
    def token(self) -> str:
        assert self.lease is not None and self.lease.token
        return self.lease.token

    @property
    def path(self) -> str | None:
        return self.lease.path if self.lease else None

    @property
    def fallback(self) -> bool:
        return self.path == "local_fallback"

    async def acquire(self) -> VoiceSession:
        started = time.monotonic()
        pods = self._pods
        try:
            lease = await pods.api.create(
                self.session_id, voice_id=self.voice_id, language=self.language,
                idempotency_key=f"{self.session_id}:{uuid.uuid4().hex[:8]}",
            )
            log.info("lease %s for session %s: %s (queue position %s)", lease.id, self.session_id,
                     lease.state, lease.queue_position)
            try:
                lease = await pods.api.wait_ready(lease, pods.fallback_after_s, pods.heartbeat_s)
            except (TimeoutError, LeaseFailed) as e:
                with contextlib.suppress(ControllerError, ControllerUnavailable):
                    await pods.api.release(lease.id)
                raise _NoPod(str(e)) from e
        except (ControllerUnavailable, _NoPod) as e:
            if not pods.local_fallback:
                raise
            lease = await pods.fall_back(self.session_id, reason=type(e).__name__, detail=str(e))
        self.lease, self.wait_s = lease, time.monotonic() - started
        self.lost.clear()
        log.info("session %s has pod %s via %s after %.2fs", self.session_id, lease.pod_id, lease.path, self.wait_s)
        if not self.fallback:
            self._beat = asyncio.create_task(self._heartbeat(lease.id), name=f"heartbeat-{lease.id}")
        return self

    async def recover(self) -> VoiceSession:
        """The pod stopped answering: give the lease back (reporting the pod) and get a new one, or the
        local fallback if the controller is gone too."""
        log.warning("session %s lost its pod (%s): getting a new lease", self.session_id, self.path)
        await self.release(pod_failed=True)
        return await self.acquire()

    async def release(self, *, pod_failed: bool = False) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        lease, self.lease = self.lease, None
        if lease is not None and not lease.id.startswith("local-"):
            with contextlib.suppress(ControllerError, ControllerUnavailable):
                await self._pods.api.release(lease.id, pod_failed=pod_failed)

    async def _heartbeat(self, lease_id: str) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._pods.heartbeat_s)
            try:
                self.lease = await self._pods.api.heartbeat(lease_id)
                failures = 0
            except ControllerError as e:
                log.warning("lease %s ended under session %s: %s", lease_id, self.session_id, e)
                self.lost.set()
                return
            except ControllerUnavailable as e:
                failures += 1  # the pod keeps serving with the token it has; keep trying
                log.warning("heartbeat for %s failed (%d): %s", lease_id, failures, e)


class _NoPod(Exception):
    pass


class VoicePods:
    """Entry point of the library: one per companion server process."""

    def __init__(
        self, base_url: str, token: str, *, heartbeat_s: float = 20.0, fallback_after_s: float = 120.0,
        local_fallback: bool = True, registry: CollectorRegistry | None = None,
    ) -> None:
        self.api = LeaseApi(base_url, token)
        self.heartbeat_s = heartbeat_s
        self.fallback_after_s = fallback_after_s
        self.local_fallback = local_fallback
        self.local = LocalGpuServer()
        self.fallbacks = Counter(
            "harper_client_fallbacks", "Sessions served by the local CPU gpu_server", ["reason"],
            registry=registry or CollectorRegistry(),
        )

    def session(self, session_id: str, *, voice_id: str | None = None,
                language: str | None = None) -> contextlib.AbstractAsyncContextManager[VoiceSession]:
        @contextlib.asynccontextmanager
        async def hold():
            voice = VoiceSession(self, session_id, voice_id, language)
            await voice.acquire()
            try:
                yield voice
            finally:
                await voice.release()

        return hold()

    async def fall_back(self, session_id: str, reason: str, detail: str) -> Lease:
        log.warning("session %s: no pod from the controller (%s: %s); using the local CPU gpu_server",
                    session_id, reason, detail)
        self.fallbacks.labels(reason=reason).inc()
        await self.local.ensure()
        return self.local.grant()

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.local.stop()
