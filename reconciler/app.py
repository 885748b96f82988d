"""The controller's ASGI app: the lifespan owns the store, the provider, the metrics and the loop.

``create_app(settings)`` migrates the database, claims it for this controller (``claim``: a second controller
on the same database stops with ``StoreLocked``), builds the RunPod provider from the settings (REST v2 or
GraphQL; or takes one for tests), says which policy is in force and where each value came from, and starts the
reconcile loop; shutdown stops them in reverse order. ``/docs`` and ``/redoc`` are served with their assets from
this process (an offline or firewalled operator reaches no CDN), and the OpenAPI document declares the bearer
scheme so the docs page can call the API.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from . import __version__, api
from .actuator import PodTemplate
from .claim import Claimant
from .loop import Clock, Controller
from .metrics import ControllerMetrics
from .provider import Provider, make_provider
from .settings import Settings, policy_report
from .store import Store, migrate

log = logging.getLogger("reconciler")
# Swagger UI 5 and ReDoc as the fastapi-offline wheel ships them (only its static files are used).
DOCS_ASSETS = importlib.resources.files("fastapi_offline") / "static"


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
        for level, line in policy_report(settings, store.policy):
            log.log(level, "%s", line)
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

    app = FastAPI(title="Harper pod controller", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    api.install(app)
    _install_docs(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "no reconcile pass has succeeded lately"}})
    async def readyz() -> JSONResponse:
        ctl: Controller = app.state.controller
        ok = ctl.last_pass_ok is not None and ctl.clock() - ctl.last_pass_ok < max(60.0, 6 * ctl.interval_s)
        body = {"status": "ok" if ok else "not_ready", "last_pass": api.iso(ctl.last_pass_ok),
                "error": ctl.last_error or None}
        return JSONResponse(body, status_code=200 if ok else 503)

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # load balancers probe with HEAD
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        ctl: Controller = app.state.controller
        return Response(ctl.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _install_docs(app: FastAPI) -> None:
    app.mount("/docs/static", StaticFiles(directory=str(DOCS_ASSETS)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - API", swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css", swagger_favicon_url="/docs/static/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url="/docs/static/redoc.standalone.js",
                              redoc_favicon_url="/docs/static/favicon.png", with_google_fonts=False)

    def openapi() -> dict[str, Any]:
        """The generated document plus the bearer scheme on every /v1 operation (the handlers read the header
        themselves, so FastAPI cannot see it): the docs page shows Authorize and sends the token."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "HARPER_API_TOKEN (companion: /v1/leases*) or HARPER_ADMIN_TOKEN"}}
            for path, operations in schema["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
