"""The controller's ASGI app: the lifespan owns the store, the provider, the metrics and the loop.

``create_app(settings)`` migrates the database, claims it for this controller (``claim``: a second controller
on the same database stops with ``StoreLocked``), builds a ``RunPodProvider`` from the settings (or takes
one for tests), and starts the reconcile loop; shutdown stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from . import __version__, api
from .actuator import PodTemplate
from .claim import Claimant
from .loop import Clock, Controller
from .metrics import ControllerMetrics
from .provider import Provider, make_provider
from .settings import Settings
from .store import Store, migrate


def create_app(settings: Settings, provider: Provider | None = None, clock: Clock = time.time) -> FastAPI:
    if not settings.api_token.get_secret_value() or not settings.admin_token.get_secret_value():
        raise ValueError("HARPER_API_TOKEN and HARPER_ADMIN_TOKEN must be set")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, settings.database_url)
        store = Store(settings.database_url)
        try:
            # One controller per database: a second one stops here (StoreLocked), before it acts on anything.
            await store.claim(Claimant.here(settings.public_url or f"http://{settings.host}:{settings.port}"))
            await store.open()
        except BaseException:
            await store.close()
            raise
        metrics = ControllerMetrics()
        own_provider = provider is None
        prov = provider or make_provider(
            settings.runpod_api, settings.runpod_api_key.get_secret_value(), settings.runpod_api_url or None,
            call_timeout_s=settings.provider_timeout_s, observe=metrics.observe_provider,
        )
        controller = Controller(
            store, prov,
            template=PodTemplate(
                image=settings.gpu_image, cloud_type=settings.cloud_type, volume_gb=settings.pod_volume_gb,
                container_disk_gb=settings.pod_container_disk_gb,
            ),
            default_policy=settings.default_policy(), tuning=settings.tuning(), metrics=metrics,
            interval_s=settings.reconcile_interval_s, health_timeout_s=settings.health_timeout_s, clock=clock,
            catalog_ttl_s=settings.catalog_ttl_s, billing_interval_s=settings.billing_interval_s,
        )
        app.state.controller = controller
        app.state.api_config = api.ApiConfig(
            companion_token=settings.api_token.get_secret_value(),
            admin_token=settings.admin_token.get_secret_value(),
        )
        await controller.start()
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's full
        # collections, whose pauses otherwise show up as the API's p99.
        gc.freeze()
        try:
            yield
        finally:
            await controller.stop()
            await store.close()
            if own_provider:
                await prov.aclose()

    app = FastAPI(title="Harper pod controller", version=__version__, lifespan=lifespan)
    api.install(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        ctl: Controller = app.state.controller
        ok = ctl.last_pass_ok is not None and ctl.clock() - ctl.last_pass_ok < max(60.0, 6 * ctl.interval_s)
        body = {"status": "ok" if ok else "not_ready", "last_pass": api.iso(ctl.last_pass_ok),
                "error": ctl.last_error or None}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        ctl: Controller = app.state.controller
        return Response(ctl.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
