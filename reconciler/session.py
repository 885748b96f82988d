"""``VoiceSession``: one companion session's hold on a voice pod, and where its speech goes meanwhile.

Its lease is taken, waited for, heartbeated and released here. Without a bridge, ``acquire()`` waits until
the lease is ready (or falls back to the local CPU gpu_server). With one, ``acquire()`` returns at once on
the warm local server (the *bridge*) while a named task waits for the lease; when the pod is ready, the
session's streams move there at their own boundaries (``reconciler.bridge``). The moves are reported: a log
line each, ``harper_client_switches_total{stream}``, and once the session is all on its pod,
``harper_client_bridge_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from enum import StrEnum
from typing import TYPE_CHECKING

from .bridge import BridgedStt, Route, Server
from .bridge_tts import BridgedTts, FrameSink, Spoken
from .lease_api import ControllerError, ControllerUnavailable, Lease, LeaseFailed
from .local_server import LocalServerFailed

if TYPE_CHECKING:
    from .client import VoicePods

log = logging.getLogger("reconciler.client")


class Bridge(StrEnum):
    """What a session runs on the local CPU gpu_server while its lease is pending."""

    STT = "stt"  # listening starts at once; the voice waits for the pod (it never changes mid-conversation)
    BOTH = "both"  # listening and speaking start at once; the voice may change (Piper, then the pod's) once


class VoiceSession:
    """One companion session's hold on a voice pod. Use through ``VoicePods.session``.

    ``stt()`` opens a transcription stream and ``speak()`` voices a reply; both go to the pod, or with a
    bridge to the local CPU gpu_server until the pod is ready and then to the pod (see ``reconciler.bridge``).
    ``endpoints``/``token`` are the current server's, for callers that speak the protocol themselves.

    Figures: ``wait_s`` (start until speech could run: about 0 on a warm bridge), ``ready_s`` (start until the
    pod was ready), ``bridged_s`` (start until the STT streams on the bridge had all moved to the pod, or
    until the pod was ready if none was open), ``switched_at`` (the first utterance the pod transcribed) and
    ``tts_switched_at`` (the first reply it voiced)."""

    def __init__(self, pods: VoicePods, session_id: str, voice_id: str | None, language: str | None,
                 bridge: Bridge | None) -> None:
        self._pods = pods
        self.session_id = session_id
        self.voice_id, self.language = voice_id, language
        self.bridge = bridge
        self.lease: Lease | None = None
        self.wait_s: float = 0.0
        self.ready_s: float | None = None
        self.bridged_s: float | None = None
        self.switched_at: int | None = None
        self.tts_switched_at: int | None = None
        self.lost = asyncio.Event()
        self._beat: asyncio.Task | None = None
        self._waiter: asyncio.Task | None = None
        self._started = 0.0
        self._local: Route | None = None
        self._pod: asyncio.Future[Route | None] | None = None
        self._streams: set[BridgedStt] = set()
        self._on_bridge: set[BridgedStt] = set()
        self._tts = BridgedTts(self._tts_route, name=f"{session_id}-tts", on_route=self._tts_moved)
        self._released = False

    # ---- where the session's speech goes

    @property
    def server(self) -> Server:
        pod = self._pod_route()
        if pod is not None:
            return Server.POD
        if self._local is None:
            raise RuntimeError(f"session {self.session_id} has no server: acquire() it first")
        return self._local.server

    @property
    def route(self) -> Route:
        route = self._pod_route() or self._local
        if route is None:
            raise RuntimeError(f"session {self.session_id} has no server: acquire() it first")
        return route

    @property
    def endpoints(self) -> dict[str, str]:
        return self.route.endpoints

    @property
    def token(self) -> str:
        return self.route.token()

    @property
    def path(self) -> str | None:
        return self.lease.path if self.lease else None

    @property
    def fallback(self) -> bool:
        return self.path == "local_fallback"

    def stt(self, *, sample_rate: int = 16000, language: str | None = None,
            endpoint_ms: int | None = None) -> BridgedStt:
        """A transcription stream (``async with voice.stt() as stt``): ``await stt.send(pcm16)``,
        ``async for event in stt``, ``await stt.finish()``. On the bridge it moves to the pod by itself."""
        route = self.route
        bridged = route.server is Server.BRIDGE
        stream = BridgedStt(
            route, pod=self._pod if bridged else None, sample_rate=sample_rate,
            language=language or self.language or "en", endpoint_ms=endpoint_ms, name=f"{self.session_id}-stt",
            on_switch=lambda n: self._stt_moved(stream, n), on_close=lambda: self._stream_closed(stream),
        )
        self._streams.add(stream)
        if bridged:
            self._on_bridge.add(stream)
        return stream

    async def speak(self, text: str, *, voice_id: str | None = None, on_frame: FrameSink | None = None) -> Spoken:
        """Voice ``text`` and return it once done; ``on_frame(frame)`` (sync or async) gets each 20 ms Opus
        frame as it arrives. Calls run one at a time; each is voiced entirely by one server."""
        return await self._tts.speak(text, voice_id=voice_id or self.voice_id, on_frame=on_frame)

    async def wait_for_pod(self) -> bool:
        """Until the lease has settled: True once its pod is ready, False if the session stays local."""
        if self._pod is None:
            raise RuntimeError(f"session {self.session_id}: acquire() it first")
        return await asyncio.shield(self._pod) is not None

    async def cancel_speech(self) -> None:
        """Barge-in: stop the reply being voiced."""
        await self._tts.cancel()

    # ---- lease

    async def acquire(self) -> VoiceSession:
        pods = self._pods
        self._started = time.monotonic()
        self._pod = asyncio.get_running_loop().create_future()
        self._local, self._released, self.wait_s = None, False, 0.0
        self.ready_s = self.bridged_s = self.switched_at = self.tts_switched_at = None
        self.lost.clear()
        try:
            lease = await pods.api.create(
                self.session_id, voice_id=self.voice_id, language=self.language,
                idempotency_key=f"{self.session_id}:{uuid.uuid4().hex[:8]}",
            )
        except ControllerUnavailable as e:
            if not pods.local_fallback:
                raise
            await self._fall_back("ControllerUnavailable", str(e))
            return self
        log.info("lease %s for session %s: %s (queue position %s)", lease.id, self.session_id,
                 lease.state, lease.queue_position)
        if lease.state == "pending" and self.bridge is not None:
            try:
                self._local = await pods.local_route(Server.BRIDGE)
            except LocalServerFailed as e:
                log.warning("session %s: no bridge, waiting for the pod: %s", self.session_id, e)
        if lease.state == "pending" and self._local is not None:
            self.lease, self.wait_s = lease, time.monotonic() - self._started
            self._waiter = asyncio.create_task(self._wait_for_pod(lease), name=f"lease-wait-{lease.id}")
            log.info("session %s: on the bridge (%s) after %.2fs while lease %s is pending", self.session_id,
                     self.bridge, self.wait_s, lease.id)
            return self
        await self._wait_for_pod(lease)
        return self

    async def _wait_for_pod(self, lease: Lease) -> None:
        pods = self._pods
        bridged = self._local is not None
        try:
            lease = await pods.api.wait_ready(lease, pods.fallback_after_s, pods.heartbeat_s)
        except (TimeoutError, LeaseFailed, ControllerError, ControllerUnavailable) as e:
            with contextlib.suppress(ControllerError, ControllerUnavailable):
                await pods.api.release(lease.id)
            if not pods.local_fallback and not bridged:
                raise
            # A bridged session is on the local server already: it stays there, as a fallback.
            await self._fall_back(type(e).__name__, str(e))
            return
        except Exception:
            if not bridged:
                raise
            log.exception("session %s: waiting for lease %s failed; staying on the local server",
                          self.session_id, lease.id)
            self.lost.set()
            self._settle(None)
            return
        self._pod_ready(lease)

    def _pod_ready(self, lease: Lease) -> None:
        self.lease = lease
        self.ready_s = time.monotonic() - self._started
        if self._local is None:
            self.wait_s = self.ready_s
        self._beat = asyncio.create_task(self._heartbeat(lease.id), name=f"heartbeat-{lease.id}")
        self._settle(Route(Server.POD, dict(lease.endpoints or {}), self._pod_token, lease.pod_id))
        log.info("session %s has pod %s via %s after %.2fs%s", self.session_id, lease.pod_id, lease.path,
                 self.ready_s, "; streams on the bridge move at their next utterance boundary" if self._local else "")
        self._check_bridged()

    def _pod_token(self) -> str:
        if self.lease is None or not self.lease.token:
            raise RuntimeError(f"session {self.session_id} holds no lease")
        return self.lease.token

    def _pod_route(self) -> Route | None:
        return self._pod.result() if self._pod is not None and self._pod.done() else None

    def _settle(self, route: Route | None) -> None:
        if self._pod is not None and not self._pod.done():
            self._pod.set_result(route)

    async def _fall_back(self, reason: str, detail: str) -> None:
        pods = self._pods
        log.warning("session %s: no pod from the controller (%s: %s); using the local CPU gpu_server",
                    self.session_id, reason, detail)
        pods.fallbacks.labels(reason=reason).inc()
        local = self._local or await pods.local_route(Server.FALLBACK)
        self._local = Route(Server.FALLBACK, local.endpoints, local.token, local.pod_id)
        self.lease = Lease("local-" + uuid.uuid4().hex[:12], "ready", "local_fallback", local.endpoints,
                           local.token(), "local", None, None)
        if self.wait_s == 0.0:
            self.wait_s = time.monotonic() - self._started
        self._settle(None)

    # ---- bridge bookkeeping

    def _stt_moved(self, stream: BridgedStt, utterance: int) -> None:
        self._on_bridge.discard(stream)
        if self.switched_at is None:
            self.switched_at = utterance
        self._pods.switches.labels(stream="stt").inc()
        log.info("session %s: STT moved from the bridge to pod %s at utterance %d, %.2fs into the session",
                 self.session_id, self.lease.pod_id if self.lease else None, utterance,
                 time.monotonic() - self._started)
        self._check_bridged()

    def _stream_closed(self, stream: BridgedStt) -> None:
        self._streams.discard(stream)
        self._on_bridge.discard(stream)
        self._check_bridged()

    def _tts_moved(self, server: Server, previous: Server | None, number: int) -> None:
        if previous is Server.BRIDGE and server is Server.POD:
            self.tts_switched_at = number
            self._pods.switches.labels(stream="tts").inc()
            log.info("session %s: TTS moved from the bridge to pod %s at reply %d, %.2fs into the session",
                     self.session_id, self.lease.pod_id if self.lease else None, number,
                     time.monotonic() - self._started)

    def _check_bridged(self) -> None:
        if self.bridged_s is not None or self._local is None or self._local.server is not Server.BRIDGE:
            return
        if self._pod_route() is None or self._on_bridge:
            return
        self.bridged_s = time.monotonic() - self._started
        self._pods.bridge_seconds.observe(self.bridged_s)
        log.info("session %s: all on pod %s after %.2fs on the bridge", self.session_id,
                 self.lease.pod_id if self.lease else None, self.bridged_s)

    async def _tts_route(self) -> Route:
        if self._released:
            raise RuntimeError(f"session {self.session_id} is released")
        assert self._pod is not None
        if not self._pod.done() and not (self.bridge is Bridge.BOTH and self._local is not None):
            await asyncio.shield(self._pod)  # bridge="stt": the voice waits for the pod
        if self._released:
            raise RuntimeError(f"session {self.session_id} is released")
        return self.route

    async def recover(self) -> VoiceSession:
        """The pod stopped answering: give the lease back (reporting the pod) and get a new one, or the
        local fallback if the controller is gone too. Streams opened before must be opened again."""
        log.warning("session %s lost its pod (%s): getting a new lease", self.session_id, self.path)
        await self.release(pod_failed=True)
        return await self.acquire()

    async def release(self, *, pod_failed: bool = False) -> None:
        """Close every stream the session opened and give the lease back (a pending one too)."""
        self._released = True
        for task in (self._waiter, self._beat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._waiter = self._beat = None
        self._settle(None)  # a speak still waiting for the pod gives up now (the session is released)
        for stream in list(self._streams):
            await stream.aclose()
        await self._tts.aclose()
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
