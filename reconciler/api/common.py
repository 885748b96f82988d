"""Shared pieces of the controller API: errors, auth scopes, request models, rendering, body limits."""


from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.params import ParamTypes
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from gpu_server.auth import issue_token

from ..domain import POD_NAME_PREFIX, LeaseState, PodPhase, Policy
from ..loop import Controller
from ..tables import LeaseRow, PodRow

MAX_BODY_BYTES = 64 * 1024
MAX_WAIT_S = 60.0


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class ApiConfig:
    companion_token: str
    admin_token: str


# No control characters in the text a client names things with: PostgreSQL cannot store NUL at all (the
# request failed with a 500 there, and was stored on SQLite), and the rest only garble logs and events.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class LeaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    session_id: str = Field(min_length=1, max_length=200, pattern=PRINTABLE)
    voice_id: str | None = Field(default=None, max_length=200, pattern=PRINTABLE)
    language: str | None = Field(default=None, max_length=16, pattern=PRINTABLE)


# Every Policy field, optional, with its bounds (so the OpenAPI document states them): what PATCH /v1/policy
# takes. The merged policy is validated as a Policy (rules across fields, gpu type names).
def _optional(field: FieldInfo) -> Any:
    bounded = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return bounded | None


PolicyPatch = create_model(
    "PolicyPatch", __config__=ConfigDict(extra="forbid", strict=True),
    **{name: (_optional(field), None) for name, field in Policy.model_fields.items()},
)


def json_schema_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the handler reads itself (to answer bad JSON with our own error codes)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------------- auth


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token")
    return token.strip()


def _is(token: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def companion_or_admin(request: Request) -> str:
    cfg: ApiConfig = request.app.state.api_config
    token = _bearer(request)
    if _is(token, cfg.admin_token):
        scope = "admin"
    elif _is(token, cfg.companion_token):
        scope = "companion"
    else:
        raise ApiError(401, "unauthorized", "invalid token")
    _known_query(request)
    return scope


def _known_query(request: Request) -> None:
    """Refuse query parameters the route does not take: a typo (``?wiat=30``) would otherwise be ignored quietly,
    and the request answered as if it had not been made (no long poll, an unfiltered list). After the token check,
    so that a caller without one learns nothing about the routes."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = {param.alias for param in get_flat_params(route.dependant)
             if getattr(param.field_info, "in_", None) == ParamTypes.query}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(422, "invalid_request", f"query.{unknown[0][:40]}: not a parameter of this route")


def admin_only(request: Request) -> str:
    if companion_or_admin(request) != "admin":
        raise ApiError(403, "forbidden", "this endpoint needs the admin token")
    return "admin"


Companion = Annotated[str, Depends(companion_or_admin)]
Admin = Annotated[str, Depends(admin_only)]


def controller_of(request: Request) -> Controller:
    return request.app.state.controller


Ctl = Annotated[Controller, Depends(controller_of)]


# ------------------------------------------------------------------------------------------- rendering


def ws_endpoints(pod: PodRow | None) -> dict[str, str] | None:
    if pod is None or not pod.endpoint_host or not pod.endpoint_port:
        return None
    base = f"ws://{pod.endpoint_host}:{pod.endpoint_port}"
    return {"stt": f"{base}/ws/stt", "tts": f"{base}/ws/tts"}


TOKEN_TTL_S = 30.0  # about one heartbeat interval (clients beat every 20 s): each heartbeat brings a new one


def lease_token(pod: PodRow, lease: LeaseRow, now: float) -> str:
    """The pod's token for this lease: short-lived, and naming the slot and the lease's generation on it (when
    the slot was granted), so the pod refuses it once a newer lease holds the slot."""
    expires = min(lease.expires_at, now + TOKEN_TTL_S)
    return issue_token(pod.secret, lease.id, pod.id, expires, slot=lease.slot or 0,
                       generation=int((lease.ready_at or lease.created_at) * 1000))


def lease_body(lease: LeaseRow, pod: PodRow | None, queue_position: int | None, now: float) -> dict[str, Any]:
    ready = lease.state == LeaseState.READY.value and pod is not None
    return {
        "id": lease.id,
        "session_id": lease.session_id,
        "state": lease.state,
        "pod_id": lease.pod_id,
        "path": lease.path,
        "endpoints": ws_endpoints(pod) if ready else None,
        "token": lease_token(pod, lease, now) if ready else None,
        "expires_at": iso(lease.expires_at),
        "created_at": iso(lease.created_at),
        "ready_at": iso(lease.ready_at),
        "queue_position": queue_position,
        "reason": lease.reason or None,
    }


async def render_lease(ctl: Controller, lease: LeaseRow, pod: PodRow | None = None) -> dict[str, Any]:
    if lease.pod_id and pod is None and lease.state == LeaseState.READY.value:
        pod = await ctl.store.get_pod(lease.pod_id)  # only a ready lease shows the pod's endpoints and token
    queue_position = None
    if lease.state == LeaseState.PENDING.value and lease.pod_id is None:
        queue_position = await ctl.store.queue_position(lease)
    return lease_body(lease, pod, queue_position, ctl.clock())


def render_pod(pod: PodRow, leases: list[LeaseRow]) -> dict[str, Any]:
    return {
        "id": pod.id,
        "name": POD_NAME_PREFIX + pod.id,
        "runpod_id": pod.runpod_id,
        "role": pod.role,
        "state": pod.phase,
        "gpu_type": pod.gpu_type,
        "cost_per_hr": pod.cost_per_hr,
        "endpoints": ws_endpoints(pod) if pod.phase == PodPhase.READY.value else None,
        "cordoned": pod.cordoned,
        "was_ready": pod.was_ready,
        "healthy": pod.phase == PodPhase.READY.value and pod.unhealthy_since is None,
        "created_at": iso(pod.created_at),
        "state_since": iso(pod.phase_since),
        "ready_at": iso(pod.ready_at),
        "backoff_until": iso(pod.backoff_until) if pod.backoff_until else None,
        "reason": pod.reason or None,
        "leases": [lease.id for lease in leases if lease.pod_id == pod.id],
    }



# ------------------------------------------------------------------------------------------ plumbing


async def json_body(request: Request) -> Any:
    """The request's JSON (``BodyLimit`` has already refused oversized bodies)."""
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None


def first_error(e: ValidationError | RequestValidationError, where_else: str = "body") -> str:
    """``field: message`` of the first error pydantic (or FastAPI's request validation) found."""
    err = e.errors()[0] if e.errors() else {}
    where = ".".join(str(x) for x in err.get("loc", ())) or where_else
    return f"{where}: {err.get('msg', 'invalid')}"


class BodyLimit:
    """Refuse bodies over the limit from Content-Length, and cut off streamed ones while they arrive."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_error(send, 413, "too_large", f"body over {self.limit} bytes")
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, "too_large", f"body over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


async def _send_error(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


