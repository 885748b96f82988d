"""The FastAPI app: lifespan (settings, metrics, background model loading, then the TTS gate and STT batcher),
`/health`, `/metrics`, and the two WebSockets from `gpu_server.sockets`.

``create_app(settings, load=...)`` builds one app; ``load`` is the blocking function that returns the
`Engines` (``engines.load_engines`` by default). It runs in a worker thread started by the lifespan, so the
server answers `/health` with 503 ``{"status": "loading"}`` while models load, and 200 after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gpu_server.auth import REDACT_TOKENS, SlotGuard
from gpu_server.batcher import DecodeBatcher
from gpu_server.engines import Engines, load_engines
from gpu_server.gate import ModelGate
from gpu_server.memory import release_free_memory
from gpu_server.metrics import SpeechMetrics
from gpu_server.settings import Settings
from gpu_server.sockets import router as socket_router

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """Everything the lifespan owns; handlers reach it as ``app.state.server``."""

    settings: Settings
    metrics: SpeechMetrics
    engines: Engines | None = None
    tts_gate: ModelGate | None = None
    stt_batcher: DecodeBatcher | None = None
    load_error: str | None = None
    streams: dict[str, int] = field(default_factory=lambda: {"stt": 0, "tts": 0})  # open WebSocket streams
    slots: SlotGuard = field(default_factory=SlotGuard)  # the newest lease seen on each slot of this pod
    # Open connections by lease id, closed when a newer lease's token for the same slot arrives.
    by_lease: dict[str, set[Callable[[], Awaitable[None]]]] = field(default_factory=dict)


async def _load_models(state: ServerState, load: Callable[[Settings], Engines]) -> None:
    try:
        engines = await asyncio.to_thread(load, state.settings)
    except Exception as e:
        # Surfaced on /health (503 with the reason) so the controller never marks this pod Ready.
        log.exception("loading models failed")
        state.load_error = str(e) or type(e).__name__
        return
    for model, seconds in engines.load_seconds.items():
        state.metrics.model_load_seconds.labels(model=model).set(seconds)
    settings = state.settings
    state.stt_batcher = DecodeBatcher(engines.stt, max_batch=settings.stt_max_batch, workers=settings.stt_concurrency)
    state.stt_batcher.start()
    state.tts_gate = ModelGate(settings.tts_calls(str(engines.tts.info().get("engine"))))
    state.engines = engines
    log.info("models ready: stt=%s tts=%s", engines.stt.info(), engines.tts.info())


# A message over this many times max_message_bytes is not even buffered: uvicorn closes the connection with 1009.
# Between the two it is read and refused with a too_large error, and the connection goes on.
HARD_CAP_FACTOR = 4
# Messages uvicorn holds for a handler that is not reading (STT backpressure) before it stops reading the socket.
WS_QUEUE = 8


def uvicorn_ws_options(settings: Settings) -> dict[str, object]:
    """WebSocket options of the uvicorn that serves this app: what one connection may make the server buffer is
    bounded by ``WS_QUEUE`` messages of ``HARD_CAP_FACTOR * max_message_bytes`` (uvicorn's own defaults, 32 of
    16 MiB, even reached through permessage-deflate from a few kB on the wire, are 512 MiB per connection)."""
    return {
        "ws": "websockets-sansio",
        "ws_max_size": HARD_CAP_FACTOR * settings.max_message_bytes,
        "ws_max_queue": WS_QUEUE,
    }


async def _trim_while_busy(state: ServerState) -> None:
    """Hand the heap's free pages back every ``memory_trim_interval_s`` while streams are open. `sockets` does it
    when the last stream closes, but one session that keeps its two streams open for half an hour never gets
    there: its RSS crept up ~8% over 20 minutes (bench/soak.py), free pages glibc kept, all back once it closed."""
    while True:
        await asyncio.sleep(state.settings.memory_trim_interval_s)
        if not any(state.streams.values()):
            continue
        try:
            await asyncio.to_thread(release_free_memory)
        except Exception:  # never worth a stream: logged, and tried again next time
            log.exception("returning free memory failed")
        else:
            state.metrics.memory_trims.inc()


def create_app(settings: Settings, load: Callable[[Settings], Engines] = load_engines) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServerState(settings=settings, metrics=SpeechMetrics())
        app.state.server = state
        for name in ("uvicorn.error", "uvicorn.access"):  # set up by uvicorn before the lifespan runs
            if REDACT_TOKENS not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(REDACT_TOKENS)
        loader = asyncio.create_task(_load_models(state, load), name="load-models")
        trimmer = asyncio.create_task(_trim_while_busy(state), name="memory-trim")
        try:
            yield
        finally:
            for task in (loader, trimmer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.stt_batcher is not None:
                await state.stt_batcher.aclose()

    app = FastAPI(title="Harper gpu_server", summary="Streaming STT and TTS on one GPU pod", lifespan=lifespan)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        state: ServerState = request.app.state.server
        if state.engines is None:
            body = {"status": "error", "error": state.load_error} if state.load_error else {"status": "loading"}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "stt": state.engines.stt.info(),
                "tts": {**state.engines.tts.info(), "output_sample_rate": settings.tts_sample_rate},
                "streams": dict(state.streams),
            }
        )

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        state: ServerState = request.app.state.server
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(socket_router)
    return app
