"""The companion server's library: get a voice pod for a session, keep it, give it back.

    pods = VoicePods("http://controller:8080", token=os.environ["HARPER_API_TOKEN"], bridge="stt")
    await pods.start()                                     # the local CPU gpu_server starts warming now
    async with pods.session("user-42") as voice:           # returns at once: on the bridge while pending
        async with voice.stt(sample_rate=16000) as stt:    # survives the move to the pod
            ...                                            # await stt.send(pcm16); async for event in stt
        reply = await voice.speak("Hello!")                # bridge="stt": waits for the pod's voice
    await pods.aclose()

While the session is open a background task heartbeats the lease. If the lease ends under it (expired,
pod lost) ``voice.lost`` is set; ``recover()`` gets a new lease. If the controller cannot be reached, or
no pod is granted in ``fallback_after_s``, the session falls back to the local CPU gpu_server and says so:
a warning in the log and ``harper_client_fallbacks_total``. With ``bridge``, a session runs on that local
server from its first moment while the lease is pending, and moves to the pod at the next utterance
boundary once it is ready (``reconciler.session``, ``reconciler.bridge``).

Errors: ``ControllerError`` (the controller answered with an error; ``.status``, ``.code``),
``ControllerUnavailable`` (it could not be reached), ``LeaseFailed`` (the lease ended without a pod),
``LocalServerFailed`` (the local gpu_server did not start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from .bridge import BridgedStt, Route, Server, SttEvent
from .bridge_tts import Spoken
from .lease_api import ControllerError, ControllerUnavailable, Lease, LeaseApi, LeaseFailed
from .local_server import LocalGpuServer, LocalServerFailed
from .session import Bridge, VoiceSession

__all__ = [
    "Bridge", "BridgedStt", "ControllerError", "ControllerUnavailable", "Lease", "LeaseApi", "LeaseFailed",
    "LocalGpuServer", "LocalServerFailed", "Server", "Spoken", "SttEvent", "VoicePods", "VoiceSession",
]

log = logging.getLogger(__name__)

_POD_DEFAULT: Any = object()  # session(): take VoicePods' bridge


class VoicePods:
    """Entry point of the library: one per companion server process.

    With ``bridge`` (the default for its sessions) or ``warm_local=True``, ``start()`` (or ``async with``)
    starts the local CPU gpu_server in the background at once, so the first bridged session finds it warm;
    ``await pods.warm()`` waits for it. ``aclose()`` stops everything it started."""

    def __init__(
        self, base_url: str, token: str, *, heartbeat_s: float = 20.0, fallback_after_s: float = 120.0,
        local_fallback: bool = True, bridge: str | None = None, warm_local: bool | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.api = LeaseApi(base_url, token)
        self.heartbeat_s = heartbeat_s
        self.fallback_after_s = fallback_after_s
        self.local_fallback = local_fallback
        if bridge not in (None, *Bridge):
            raise ValueError(f"bridge must be 'stt', 'both' or None, not {bridge!r}")
        self.bridge = Bridge(bridge) if bridge else None
        self.warm_local = self.bridge is not None if warm_local is None else warm_local
        self.local = LocalGpuServer()
        self._warming: asyncio.Task | None = None
        registry = registry or CollectorRegistry()
        self.fallbacks = Counter(
            "harper_client_fallbacks", "Sessions served by the local CPU gpu_server", ["reason"], registry=registry,
        )
        self.bridge_seconds = Histogram(
            "harper_client_bridge_seconds", "Seconds from a bridged session's start until it was all on its pod",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 300), registry=registry,
        )
        self.switches = Counter(
            "harper_client_switches", "Streams moved from the bridge to their pod at an utterance boundary",
            ["stream"], registry=registry,
        )

    async def start(self) -> VoicePods:
        if self.warm_local and self._warming is None:
            self._warming = asyncio.create_task(self._warm(), name="local-gpu-server-warm-up")
        return self

    async def warm(self) -> float:
        """Wait until the local gpu_server is up (starting it if need be); its start-up time in seconds."""
        await self.start()
        await self.local.ensure()
        return self.local.healthy_after_s or 0.0

    async def _warm(self) -> None:
        try:
            await self.local.ensure()
        except LocalServerFailed as e:
            log.error("the local CPU gpu_server did not start; bridged sessions will wait for pods: %s", e)
            return
        log.info("local CPU gpu_server warm after %.1fs (port %d)", self.local.healthy_after_s, self.local.port)

    async def local_route(self, server: Server) -> Route:
        if self._warming is None and not self.local.running:
            log.warning("the local CPU gpu_server was not kept warm (VoicePods(bridge=...) or warm_local=True, "
                        "then start()); starting it now")
        await self.local.ensure()
        return self.local.route(server)

    def session(self, session_id: str, *, voice_id: str | None = None, language: str | None = None,
                bridge: str | None = _POD_DEFAULT) -> contextlib.AbstractAsyncContextManager[VoiceSession]:
        """``async with pods.session(user_id, bridge="stt") as voice``: the lease is released, and every stream
        the session opened is closed, when the block ends."""
        if bridge is _POD_DEFAULT:
            chosen = self.bridge
        elif bridge is None or bridge in tuple(Bridge):
            chosen = Bridge(bridge) if bridge else None
        else:
            raise ValueError(f"bridge must be 'stt', 'both' or None, not {bridge!r}")

        @contextlib.asynccontextmanager
        async def hold():
            voice = VoiceSession(self, session_id, voice_id, language, chosen)
            try:
                await voice.acquire()
                yield voice
            finally:
                await voice.release()

        return hold()

    async def __aenter__(self) -> VoicePods:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
            self._warming = None
        await self.api.aclose()
        await self.local.stop()
