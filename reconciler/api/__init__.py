"""The controller's REST API: session leases for the companion server, overrides for admins.

Auth is a bearer token with two scopes: the companion token may use ``/v1/leases*`` (not the list), the
admin token everything. ``/healthz``, ``/readyz`` and ``/metrics`` are open. Every error is JSON
``{"error": {"code", "message"}}``; bad input is a 4xx, never a 500, and tokens never appear in a log or an
error. Bodies over ``MAX_BODY_BYTES`` are refused with 413 before they are read in full.

Lease creation takes the warm path inline (a Ready pod with a free slot is written in the same request,
guarded by the database) and otherwise leaves the lease pending and wakes the loop.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admin import admin
from .common import ApiConfig, ApiError, BodyLimit, error_response, first_error, iso, ws_endpoints
from .leases import leases

__all__ = ["ApiConfig", "install", "iso", "ws_endpoints"]
log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    app.include_router(leases)
    app.include_router(admin)
    app.add_middleware(BodyLimit)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return error_response(e.status, e.code, e.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", first_error(e, "request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(e).__name__, exc_info=e)
        return error_response(500, "internal", "internal error; see the controller log")

