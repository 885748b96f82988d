"""``create_app(settings, clock)``: the FastAPI app, whose lifespan owns the emulator and its runner.

Routes: ``POST /graphql`` (``graphql_api``), ``/v2/...`` (REST v2, ``rest_api``), ``/proxy/...`` (the pod
proxy, ``proxy``), ``/_admin/...`` (``admin``), ``GET /healthz``. The lifespan builds the pod runner and the
``Emulator`` (so nothing is created at import time) and the proxy's HTTP client, starts the named
boot-watcher task, and on shutdown cancels it and stops every pod (processes included).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from starlette.responses import Response

from runpod_emulator import admin, proxy, rest_api, schema
from runpod_emulator.clock import Clock, SystemClock
from runpod_emulator.emulator import Emulator, make_runner
from runpod_emulator.graphql_api import GraphQLEndpoint
from runpod_emulator.problems import Problem, problem_handler
from runpod_emulator.settings import EmulatorSettings

log = logging.getLogger("runpod_emulator")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_name(), exc_info=task.exception())


def create_app(settings: EmulatorSettings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or EmulatorSettings()
    clock = clock or SystemClock()
    graphql_endpoint = GraphQLEndpoint(schema.build())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        emulator = Emulator(settings, clock, make_runner(settings, clock))
        app.state.emulator = emulator
        # trust_env=False: a proxy configured for the outside world must not see loopback pod traffic.
        app.state.proxy_client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        watcher = asyncio.create_task(emulator.run_boot_watcher(), name="runpod-emulator-boot-watcher")
        watcher.add_done_callback(_log_failure)
        log.info(
            "runpod emulator ready: %s runner, boot %.1fs, %d machines, REST rate limit %s",
            settings.runner,
            settings.boot_seconds,
            len(emulator.fleet.machines),
            settings.rate_limit,
        )
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await app.state.proxy_client.aclose()
            await emulator.aclose()
            log.info("runpod emulator stopped; every pod runner is down")

    app = FastAPI(title="RunPod emulator", lifespan=lifespan)

    @app.post("/graphql", include_in_schema=False)
    async def graphql(request: Request) -> Response:
        return await graphql_endpoint(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(rest_api.router)
    app.include_router(proxy.router)
    app.include_router(admin.router)
    app.add_exception_handler(Problem, problem_handler)
    return app
