"""`/ws/stt` and `/ws/tts`: admission (lease token, models loaded, stream limit), then moving bytes.

The handlers only turn WebSocket messages into `protocol` messages and back; `stt.SttStream` and
`tts.TtsSession` do the work. Per-message problems (bad JSON, bad audio, too large, queue full) are
answered with an ``error`` message and the connection keeps going; only admission failures close it:
4401 for a missing, forged or expired token (checked before anything else happens) or one whose slot a newer
lease now holds, 1013 with an ``error`` first when the models are still loading or the server is at its stream
limit. A token for a newer lease on the same slot also closes the older lease's open connections with 4401: a
released lease's client cannot keep using a slot that someone else now holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from gpu_server import protocol
from gpu_server.auth import TokenClaims, TokenError, verify_token
from gpu_server.memory import release_free_memory
from gpu_server.protocol import ErrorCode, ProtocolError
from gpu_server.stt import SttStream
from gpu_server.tts import TtsSession

if TYPE_CHECKING:
    from gpu_server.app import ServerState

log = logging.getLogger(__name__)
router = APIRouter()
IDLE_TRIM_WAIT_S = 30.0  # at most this long after the last close for abandoned synthesis to finish


class ClientGone(Exception):
    """The peer closed the connection while we still had something to send."""


class Outbox:
    """Sends to one WebSocket; after the first failed send every send raises ``ClientGone``."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self.closed = False

    async def message(self, message: protocol.Message) -> None:
        await self._send(self._ws.send_text, protocol.encode(message))

    async def frame(self, data: bytes) -> None:
        await self._send(self._ws.send_bytes, data)

    async def _send(self, send: Callable[..., Awaitable[None]], payload: str | bytes) -> None:
        if self.closed:
            raise ClientGone
        try:
            await send(payload)
        except Exception as e:  # starlette raises several types once the peer is gone
            self.closed = True
            raise ClientGone from e

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed and self._ws.application_state != WebSocketState.DISCONNECTED:
            self.closed = True
            with contextlib.suppress(Exception):
                await self._ws.close(code, reason)


def _token(ws: WebSocket) -> str:
    token = ws.query_params.get("token", "")
    auth = ws.headers.get("authorization", "")
    if not token and auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
    return token


async def _admit(ws: WebSocket, kind: str) -> tuple[ServerState, Outbox, TokenClaims] | None:
    """Accept, then refuse (and close) unless the token is good and its lease still holds its slot, the models
    are loaded and a ``kind`` stream is free."""
    state: ServerState = ws.app.state.server
    settings = state.settings
    await ws.accept()
    outbox = Outbox(ws)
    try:
        claims = verify_token(settings.secret, _token(ws), now=time.time(), pod_id=settings.pod_id)
        superseded = state.slots.admit(claims)
    except TokenError as e:
        await outbox.close(protocol.CLOSE_UNAUTHORIZED, str(e))
        return None
    if superseded is not None:
        closers = state.by_lease.pop(superseded, set())
        if closers:
            log.info("closing %d connection(s) of a lease whose slot a newer lease holds", len(closers))
        for close in list(closers):
            await close()
    if state.engines is None:
        await outbox.message(protocol.Error(ErrorCode.LOADING, "models are still loading; retry when /health is 200"))
        await outbox.close(protocol.CLOSE_TRY_AGAIN_LATER, "loading")
        return None
    active = state.streams[kind]
    if active >= (settings.max_stt_streams if kind == "stt" else settings.max_tts_streams):
        await outbox.message(protocol.Error(ErrorCode.BUSY, f"this server already has {active} {kind} streams"))
        await outbox.close(protocol.CLOSE_TRY_AGAIN_LATER, "busy")
        return None
    return state, outbox, claims


@contextlib.contextmanager
def _held(state: ServerState, claims: TokenClaims, outbox: Outbox) -> Iterator[None]:
    """This connection, known under its lease until it ends, so a newer lease on the slot can close it."""

    async def close() -> None:
        await outbox.close(protocol.CLOSE_UNAUTHORIZED, f"a newer lease holds slot {claims.slot} of this pod")

    state.by_lease.setdefault(claims.lease_id, set()).add(close)
    try:
        yield
    finally:
        closers = state.by_lease.get(claims.lease_id)
        if closers is not None:
            closers.discard(close)
            if not closers:
                del state.by_lease[claims.lease_id]


@contextlib.asynccontextmanager
async def _counted(state: ServerState, kind: str) -> AsyncIterator[None]:
    """One open ``kind`` stream, in the admission count and the ``harper_{kind}_streams_active`` gauge.
    When the last stream of the server closes, the memory its load freed goes back to the system, and once
    more after a TTS synthesis still running for a connection that went away has finished (it frees its
    working memory only then)."""
    gauge = state.metrics.stt_streams_active if kind == "stt" else state.metrics.tts_streams_active
    state.streams[kind] += 1
    gauge.inc()
    try:
        yield
    finally:
        state.streams[kind] -= 1
        gauge.dec()
        if not any(state.streams.values()):
            await asyncio.shield(_release_memory_when_idle(state))


async def _release_memory_when_idle(state: ServerState) -> None:
    await asyncio.to_thread(release_free_memory)
    gate = state.tts_gate
    if gate is None or not gate.busy:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(IDLE_TRIM_WAIT_S):
            await gate.idle()
            if not any(state.streams.values()):
                await asyncio.to_thread(release_free_memory)


async def _pump(
    ws: WebSocket,
    outbox: Outbox,
    limit: int,
    on_text: Callable[[str], Awaitable[bool]],
    on_bytes: Callable[[bytes], Awaitable[bool]],
) -> None:
    """Reads until the client leaves or a handler returns True (the stream is finished)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        try:
            size = len(data) if data is not None else len((text or "").encode())
            if size > limit:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"message has {size} bytes; the limit is {limit}")
            finished = await (on_bytes(data) if data is not None else on_text(text or ""))
        except ProtocolError as e:
            await outbox.message(protocol.Error(e.code, e.message))
            continue
        if finished:
            return


async def _serve(outbox: Outbox, reader: Awaitable[None], worker: asyncio.Task[None]) -> None:
    """Runs the reader beside the stream's worker; a worker that dies (or finds the client gone) takes the
    connection with it. A worker that finishes (STT after ``stop``) lets the reader finish what it is doing."""
    read = asyncio.ensure_future(reader)
    try:
        await asyncio.wait({read, worker}, return_when=asyncio.FIRST_COMPLETED)
        error = worker.exception() if worker.done() and not worker.cancelled() else None
        if error is not None and not isinstance(error, ClientGone):
            log.error("stream worker failed", exc_info=error)
            with contextlib.suppress(ClientGone):
                await outbox.message(protocol.Error(ErrorCode.INTERNAL, f"speech pipeline failed: {error}"))
            await outbox.close(1011, "internal error")
            return
        if error is not None:
            # ClientGone: no one is left to read for, and the reader may be held back (STT backpressure) waiting
            # for room that only this worker would make: cancel it rather than wait for it.
            return
        with contextlib.suppress(ClientGone):
            await read
    finally:
        for task in (read, worker):
            task.cancel()
        for task in (read, worker):
            with contextlib.suppress(asyncio.CancelledError, ClientGone):
                await task


@router.websocket("/ws/stt")
async def stt_socket(ws: WebSocket) -> None:
    admitted = await _admit(ws, "stt")
    if admitted is None:
        return
    state, outbox, claims = admitted  # admitted: the engines and the decode batcher are there
    assert state.engines is not None and state.stt_batcher is not None
    stream = SttStream(
        transcriber=state.engines.stt,
        vad=state.engines.vad,
        batcher=state.stt_batcher,
        settings=state.settings,
        metrics=state.metrics,
        emit=outbox.message,
    )

    async def on_text(text: str) -> bool:
        message = protocol.parse_stt_client(text)
        if isinstance(message, protocol.SttStart):
            await stream.start(message)
            return False
        await stream.stop()
        await outbox.close(1000, "done")
        return True

    async def on_bytes(data: bytes) -> bool:
        await stream.audio(data)
        return False

    with _held(state, claims, outbox):
        async with _counted(state, "stt"):
            reader = _pump(ws, outbox, state.settings.max_message_bytes, on_text, on_bytes)
            await _serve(outbox, reader, stream.run_worker())


@router.websocket("/ws/tts")
async def tts_socket(ws: WebSocket) -> None:
    admitted = await _admit(ws, "tts")
    if admitted is None:
        return
    state, outbox, claims = admitted
    assert state.engines is not None and state.tts_gate is not None
    session = TtsSession(
        synthesizer=state.engines.tts,
        gate=state.tts_gate,
        settings=state.settings,
        metrics=state.metrics,
        emit=outbox.message,
        emit_frame=outbox.frame,
    )

    async def on_text(text: str) -> bool:
        message = protocol.parse_tts_client(text)
        if isinstance(message, protocol.Speak):
            await session.speak(message)
        else:
            await session.cancel(message)
        return False

    async def on_bytes(data: bytes) -> bool:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "/ws/tts takes JSON text messages only")

    with _held(state, claims, outbox):
        async with _counted(state, "tts"):
            reader = _pump(ws, outbox, state.settings.max_message_bytes, on_text, on_bytes)
            await _serve(outbox, reader, session.run_worker())
