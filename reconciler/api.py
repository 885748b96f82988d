"""The controller's REST API: session leases for the companion server, overrides for admins.

Auth is a bearer token with two scopes: the companion token may use ``/v1/leases*`` (not the list), the
admin token everything. ``/healthz``, ``/readyz`` and ``/metrics`` are open. Every error is JSON
``{"error": {"code", "message"}}``; bad input is a 4xx, never a 500, and tokens never appear in a log or an
error. Bodies over ``MAX_BODY_BYTES`` are refused with 413 before they are read in full.

Lease creation takes the warm path inline (a Ready pod with a free slot is written in the same request,
guarded by the database) and otherwise leaves the lease pending and wakes the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpu_server.auth import issue_token

from .domain import ACTIVE_LEASE_STATES, ClaimPath, LeaseState, PodPhase, PodRole, Policy
from .loop import Controller
from .provider import HostGpuBusy, NotFound, ProviderError
from .store import DuplicateKey, LeaseRow, PodRow, SlotTaken, dumps

log = logging.getLogger(__name__)
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
    lease_ttl_s: float
    queue_limit: int


class LeaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    session_id: str = Field(min_length=1, max_length=200)
    voice_id: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=16)


class PolicyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    standby_count: int | None = None
    idle_ttl_s: float | None = None
    stopped_ttl_s: float | None = None
    sessions_per_pod: int | None = None
    max_pods: int | None = None
    gpu_types: list[str] | None = None
    budget_usd_per_hour: float | None = None
    paused: bool | None = None


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
        return "admin"
    if _is(token, cfg.companion_token):
        return "companion"
    raise ApiError(401, "unauthorized", "invalid token")


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


def lease_body(lease: LeaseRow, pod: PodRow | None, queue_position: int | None) -> dict[str, Any]:
    ready = lease.state == LeaseState.READY.value and pod is not None
    return {
        "id": lease.id,
        "session_id": lease.session_id,
        "state": lease.state,
        "pod_id": lease.pod_id,
        "path": lease.path,
        "endpoints": ws_endpoints(pod) if ready else None,
        "token": issue_token(pod.secret, lease.id, pod.id, lease.expires_at) if ready else None,
        "expires_at": iso(lease.expires_at),
        "created_at": iso(lease.created_at),
        "ready_at": iso(lease.ready_at),
        "queue_position": queue_position,
        "reason": lease.reason or None,
    }


async def render_lease(ctl: Controller, lease: LeaseRow, pod: PodRow | None = None) -> dict[str, Any]:
    if lease.pod_id and pod is None:
        pod = await ctl.store.get_pod(lease.pod_id)
    queue_position = None
    if lease.state == LeaseState.PENDING.value and lease.pod_id is None:
        queue_position = await ctl.store.queue_position(lease)
    return lease_body(lease, pod, queue_position)


async def render_pod(ctl: Controller, pod: PodRow, leases: list[LeaseRow]) -> dict[str, Any]:
    return {
        "id": pod.id,
        "name": f"harper-{pod.id}",
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


# ---------------------------------------------------------------------------------------------- leases

leases = APIRouter(prefix="/v1/leases", tags=["leases"])


@leases.post("", status_code=201)
async def create_lease(
    request: Request, ctl: Ctl, _: Companion,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    body = await _json_body(request)
    try:
        req = LeaseCreate.model_validate(body)
    except ValidationError as e:
        ctl.metrics.lease_requests.labels(result="invalid").inc()
        raise ApiError(422, "invalid_request", _first_error(e)) from None
    cfg: ApiConfig = request.app.state.api_config
    key = idempotency_key or req.session_id
    request_hash = hashlib.sha256(dumps(req.model_dump()).encode()).hexdigest()
    existing = await ctl.store.lease_by_key(key)
    if existing is None:
        try:
            return await _new_lease(ctl, cfg, req, key, request_hash)
        except DuplicateKey:
            existing = await ctl.store.lease_by_key(key)  # lost a race with the same key
    if existing.request_hash != request_hash:
        ctl.metrics.lease_requests.labels(result="idempotency_mismatch").inc()
        raise ApiError(422, "idempotency_mismatch", "this Idempotency-Key was used with another body")
    ctl.metrics.lease_requests.labels(result="replay").inc()
    return Response(existing.first_response, status_code=200, media_type="application/json")


async def _new_lease(ctl: Controller, cfg: ApiConfig, req: LeaseCreate, key: str, request_hash: str) -> Response:
    """The warm path inline (a Ready pod with a free slot, checked by the insert itself), else pending.
    The first response is stored with the row, so a replay returns it byte for byte."""
    now = ctl.clock()
    row = LeaseRow(
        id="l_" + secrets.token_hex(8), session_id=req.session_id, voice_id=req.voice_id, language=req.language,
        state=LeaseState.PENDING.value, idempotency_key=key, request_hash=request_hash, created_at=now,
        expires_at=now + cfg.lease_ttl_s,
    )
    per_pod = ctl.policy.sessions_per_pod
    for pod, used in await ctl.store.warm_candidates(per_pod):
        warm = row.model_copy(update={
            "pod_id": pod.id, "slot": next(s for s in range(per_pod) if s not in used),
            "path": ClaimPath.WARM.value, "state": LeaseState.READY.value, "ready_at": now,
        })
        body = lease_body(warm, pod, None)
        warm.first_response = json.dumps(body)
        try:
            if await ctl.store.insert_lease(warm, require_ready_pod=True):
                ctl.metrics.lease_requests.labels(result="warm").inc()
                ctl.metrics.lease_wait.labels(path=ClaimPath.WARM.value).observe(ctl.clock() - now)
                return JSONResponse(body, status_code=201)
        except SlotTaken:
            continue  # another request took that slot a moment ago: try the next pod
    queued = await ctl.store.queue_length()
    if queued >= cfg.queue_limit:
        ctl.metrics.lease_requests.labels(result="queue_full").inc()
        raise ApiError(503, "queue_full", "too many leases are waiting for a pod; retry later")
    body = lease_body(row, None, queued + 1)
    row.first_response = json.dumps(body)
    await ctl.store.insert_lease(row)
    ctl.metrics.lease_requests.labels(result="pending").inc()
    ctl.wake()
    return JSONResponse(body, status_code=201)


@leases.get("/{lease_id}")
async def get_lease(
    lease_id: str, ctl: Ctl, _: Companion, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0
) -> dict[str, Any]:
    lease, pod = await _lease_or_404(ctl, lease_id)
    deadline = asyncio.get_running_loop().time() + wait
    while lease.state == LeaseState.PENDING.value:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        async with ctl.lease_changed:
            try:
                await asyncio.wait_for(ctl.lease_changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        lease, pod = await _lease_or_404(ctl, lease_id)
    return await render_lease(ctl, lease, pod)


@leases.post("/{lease_id}/heartbeat")
async def heartbeat(lease_id: str, request: Request, ctl: Ctl, _: Companion) -> dict[str, Any]:
    cfg: ApiConfig = request.app.state.api_config
    now = ctl.clock()
    lease, pod = await ctl.store.heartbeat(lease_id, now + cfg.lease_ttl_s, now)
    if lease is None:
        raise ApiError(404, "not_found", f"no lease {lease_id}")
    if lease.state not in ACTIVE_LEASE_STATES or lease.expires_at <= now:
        raise ApiError(409, "lease_ended", f"lease {lease_id} is {lease.state}" + (
            f": {lease.reason}" if lease.reason else ""))
    return await render_lease(ctl, lease, pod)


@leases.delete("/{lease_id}")
async def release(
    lease_id: str, ctl: Ctl, _: Companion, pod_failed: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    """Release a lease (idempotent). ``?pod_failed=true``: the client could not reach the pod; it is taken
    out of the warm pool until a health probe says otherwise, so the next lease does not land on it."""
    now = ctl.clock()
    reason = "released by the client" + (": pod unreachable" if pod_failed else "")
    lease = await ctl.store.end_lease(lease_id, LeaseState.RELEASED, reason, now)
    if lease is None:
        raise ApiError(404, "not_found", f"no lease {lease_id}")
    if pod_failed and lease.pod_id:
        await ctl.store.mark_unhealthy(lease.pod_id, now)
        await ctl.store.add_events([(now, f"pod/{lease.pod_id}", "ReportedUnreachable", f"by lease {lease_id}")])
        ctl.wake()
    elif await ctl.store.queue_length():
        ctl.wake()  # a freed slot can serve a waiting lease now; otherwise the idle clock needs no hurry
    async with ctl.lease_changed:
        ctl.lease_changed.notify_all()
    return await render_lease(ctl, lease)


@leases.get("")
async def list_leases(
    ctl: Ctl, _: Admin, state: Annotated[LeaseState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    rows = await ctl.store.list_leases(state.value if state else None, limit)
    return {"leases": [await render_lease(ctl, row) for row in rows]}


async def _lease_or_404(ctl: Controller, lease_id: str) -> tuple[LeaseRow, PodRow | None]:
    lease, pod = await ctl.store.lease_with_pod(lease_id)
    if lease is None:
        raise ApiError(404, "not_found", f"no lease {lease_id}")
    return lease, pod


# ----------------------------------------------------------------------------------------------- admin

admin = APIRouter(prefix="/v1", tags=["admin"])


@admin.get("/pods")
async def list_pods(ctl: Ctl, _: Admin, all: bool = False) -> dict[str, Any]:
    rows = await (ctl.store.all_pods() if all else ctl.store.live_pods())
    active = await ctl.store.active_leases()
    return {"pods": [await render_pod(ctl, row, active) for row in rows]}


@admin.get("/pods/{pod_id}")
async def get_pod(pod_id: str, ctl: Ctl, _: Admin) -> dict[str, Any]:
    row = await _pod_or_404(ctl, pod_id)
    return await render_pod(ctl, row, await ctl.store.leases_on([pod_id]))


@admin.post("/pods/{pod_id}/{op}")
async def pod_override(
    pod_id: str, op: str, ctl: Ctl, _: Admin, force: bool = False
) -> dict[str, Any]:
    if op not in ("stop", "start", "terminate", "cordon", "uncordon"):
        raise ApiError(404, "not_found", f"no pod operation {op!r}")
    row = await _pod_or_404(ctl, pod_id)
    now = ctl.clock()
    held = await ctl.store.leases_on([pod_id])
    phase = PodPhase(row.phase)
    if op in ("cordon", "uncordon"):
        await ctl.store.update_pod(pod_id, [("cordoned", op == "cordon")])
    elif phase in (PodPhase.TERMINATED, PodPhase.FAILED) or row.runpod_id is None:
        raise ApiError(409, "conflict", f"pod {pod_id} is {row.phase}")
    elif op in ("stop", "terminate") and held and not force:
        raise ApiError(409, "pod_leased", f"pod {pod_id} holds {len(held)} lease(s); add ?force=true")
    else:
        try:
            await _override(ctl, row, op, now, held)
        except HostGpuBusy as e:
            raise ApiError(409, "host_gpu_busy", str(e)) from None
        except NotFound as e:
            raise ApiError(409, "not_found_at_runpod", str(e)) from None
        except ProviderError as e:
            raise ApiError(502, "provider_error", f"RunPod: {type(e).__name__}: {e}") from None
    await ctl.store.add_events([(now, f"pod/{pod_id}", f"Admin{op.title()}", f"by admin (force={force})")])
    ctl.wake()
    return await render_pod(ctl, await ctl.store.get_pod(pod_id), await ctl.store.leases_on([pod_id]))


async def _override(ctl: Controller, row: PodRow, op: str, now: float, held: list[LeaseRow]) -> None:
    async with ctl._lock:  # never act on a pod while a pass is acting on it
        for lease in held:
            await ctl.store.end_lease(lease.id, LeaseState.FAILED, f"pod {op} by admin", now)
        if op == "stop":
            if row.phase != PodPhase.STOPPED.value:
                await ctl.store.begin_stop(row.id, now, make_standby=True, force=True)
                await ctl.provider.stop_pod(row.runpod_id)
        elif op == "terminate":
            await ctl.store.update_pod(row.id, [("phase", PodPhase.TERMINATING), ("phase_since", now),
                                                ("reason", "terminated by admin")])
            await ctl.provider.terminate_pod(row.runpod_id)
        elif op == "start":
            if row.phase != PodPhase.STOPPED.value:
                raise ApiError(409, "conflict", f"pod {row.id} is {row.phase}, not stopped")
            await ctl.provider.resume_pod(row.runpod_id)
            # A pod an admin starts serves (and stops after the idle TTL) rather than being parked at once.
            await ctl.store.update_pod(row.id, [("phase", PodPhase.STARTING), ("phase_since", now),
                                                ("role", PodRole.SERVING), ("backoff_until", 0.0)])


@admin.get("/policy")
async def get_policy(ctl: Ctl, _: Admin) -> dict[str, Any]:
    return (await ctl.store.get_policy(ctl.default_policy)).model_dump()


@admin.patch("/policy")
async def patch_policy(request: Request, ctl: Ctl, _: Admin) -> dict[str, Any]:
    body = await _json_body(request)
    try:
        patch = PolicyPatch.model_validate(body)
        current = await ctl.store.get_policy(ctl.default_policy)
        merged = Policy.model_validate(current.model_dump() | patch.model_dump(exclude_none=True))
    except ValidationError as e:
        raise ApiError(422, "invalid_policy", _first_error(e)) from None
    await ctl.store.set_policy(merged)
    ctl.policy = merged
    await ctl.store.add_events([(ctl.clock(), "policy", "PolicyChanged", dumps(patch.model_dump(exclude_none=True)))])
    ctl.wake()
    return merged.model_dump()


@admin.post("/reconcile")
async def reconcile_now(ctl: Ctl, _: Admin) -> dict[str, Any]:
    actions = await ctl.reconcile_once()
    return {"ok": ctl.last_error == "", "error": ctl.last_error or None,
            "actions": [type(a).__name__ for a in actions]}


@admin.get("/events")
async def events(
    ctl: Ctl, _: Admin, limit: Annotated[int, Query(ge=1, le=5000)] = 200, object: str | None = None
) -> dict[str, Any]:
    rows = await ctl.store.events(limit, object)
    return {"events": [{"time": iso(e.time), "object": e.object, "reason": e.reason, "message": e.message}
                       for e in rows]}


@admin.get("/cost")
async def cost(ctl: Ctl, _: Admin) -> dict[str, Any]:
    spend = await ctl.store.spend()
    by_pod: dict[str, dict[str, float]] = {}
    totals = {"gpu": 0.0, "storage": 0.0}
    for row in spend:
        kind, _, pod_id = row.key.partition(":")
        by_pod.setdefault(pod_id, {"gpu": 0.0, "storage": 0.0})[kind] = round(row.usd, 6)
        totals[kind] = totals.get(kind, 0.0) + row.usd
    m = ctl.metrics
    per_hour = {kind: m.cost_per_hour.labels(kind=kind)._value.get() for kind in ("gpu", "storage")}
    return {
        "usd_per_hour": {**{k: round(v, 6) for k, v in per_hour.items()}, "total": round(sum(per_hour.values()), 6)},
        "spent_usd": {**{k: round(v, 6) for k, v in totals.items()}, "total": round(sum(totals.values()), 6)},
        "by_pod": by_pod,
    }


async def _pod_or_404(ctl: Controller, pod_id: str) -> PodRow:
    row = await ctl.store.get_pod(pod_id)
    if row is None:
        raise ApiError(404, "not_found", f"no pod {pod_id}")
    return row


# ------------------------------------------------------------------------------------------ plumbing


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err.get("loc", ())) or "body"
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
        err = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in err.get("loc", ())) or "request"
        return error_response(422, "invalid_request", f"{where}: {err.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(e).__name__, exc_info=e)
        return error_response(500, "internal", "internal error; see the controller log")
