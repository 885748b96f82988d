"""What the OpenAPI document promises about answers: the error body every failure has, the Lease, and which
statuses each route answers with.

Documentation only: the handlers build their bodies themselves (a lease create stores its first response and a
replay sends those bytes again), so these models never serialize anything. ``tests/integration/test_api_schema.py``
holds the handlers to them with schemathesis: an answer whose status or body the document does not declare fails.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..domain import ClaimPath, LeaseState

# Ids the API hands out: leases "l_" + hex, pods hex. Anything else names no record, and is refused before the
# database sees it (PostgreSQL cannot even compare a string holding NUL: such a lookup was a 500 there).
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
ID_MAX_LENGTH = 64


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"code", "message"}}``."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class Endpoints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stt: str
    tts: str


class LeaseOut(BaseModel):
    """A lease as every ``/v1/leases`` route answers it (``common.lease_body``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    session_id: str
    state: LeaseState
    pod_id: str | None
    path: ClaimPath | None
    endpoints: Endpoints | None
    token: str | None
    expires_at: str
    created_at: str
    ready_at: str | None
    queue_position: int | None
    reason: str | None


class LeaseList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    leases: list[LeaseOut]


_WHY = {
    400: "the body is not JSON (malformed_json)",
    401: "no bearer token, or an unknown one (unauthorized)",
    403: "the companion token on an admin route (forbidden)",
    404: "no such lease, pod or route (not_found)",
    409: "the request does not fit the object's state (lease_ended, pod_leased, conflict, ...)",
    413: "the body is over 64 KiB (too_large)",
    422: "the body, a parameter or a header is invalid (invalid_request, invalid_policy, idempotency_mismatch)",
    502: "RunPod refused or failed the call this needed (provider_error)",
    503: "too many leases are waiting for a pod (queue_full)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error statuses, each with the error body."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


def ok(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": "OK"} for status in statuses}


# The error statuses of each kind of route (every route can also answer 422: a parameter that is not valid).
COMPANION = (401, 422)
ADMIN = (401, 403, 422)
