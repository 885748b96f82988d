"""`/v1/leases`: the companion server's endpoints (create with the warm path inline, long-poll, heartbeat, release)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ..domain import ACTIVE_LEASE_STATES, ClaimPath, LeaseState
from ..loop import Controller
from ..store import DuplicateKey, SlotTaken, dumps
from ..tables import LeaseRow, PodRow
from .common import (
    MAX_WAIT_S,
    Admin,
    ApiError,
    Companion,
    Ctl,
    LeaseCreate,
    first_error,
    json_body,
    json_schema_body,
    lease_body,
    render_lease,
)
from .schema import COMPANION, ID_MAX_LENGTH, ID_PATTERN, LeaseList, LeaseOut, errors, ok

leases = APIRouter(prefix="/v1/leases", tags=["leases"])
# An explicit Idempotency-Key whose lease has ended answers 409 for this long, then names a new lease (Stripe keeps
# keys 24 h). The default key, the session id, names a new lease as soon as the session's lease has ended.
REPLAY_WINDOW_S = 24 * 3600.0
LeaseId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]


@leases.post("", status_code=201, openapi_extra=json_schema_body(LeaseCreate),
             responses={**ok(LeaseOut, 200, 201), **errors(400, *COMPANION, 409, 413, 503)})
async def create_lease(
    request: Request, ctl: Ctl, _: Companion,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    body = await json_body(request)
    try:
        req = LeaseCreate.model_validate(body)
    except ValidationError as e:
        ctl.metrics.lease_requests.labels(result="invalid").inc()
        raise ApiError(422, "invalid_request", first_error(e)) from None
    key = idempotency_key or req.session_id
    request_hash = hashlib.sha256(dumps(req.model_dump()).encode()).hexdigest()
    for _ in range(3):
        try:
            # New keys are the common case: insert straight away and let the unique index spot a replay.
            return await _new_lease(ctl, req, key, request_hash)
        except DuplicateKey:
            existing = await ctl.store.lease_by_key(key)
            if existing is None:
                continue  # the other lease freed the key a moment ago
            if existing.state in ACTIVE_LEASE_STATES or (
                idempotency_key is not None and ctl.clock() - existing.created_at < REPLAY_WINDOW_S
            ):
                return _replay(ctl, existing, request_hash)
            # The session's lease has ended (or an explicit key's replay window has passed): a new lease.
            await ctl.store.free_key(existing.id)
    raise ApiError(409, "conflict", "the idempotency key is being used by concurrent requests; retry")


def _created(row: LeaseRow) -> Response:
    """201 with exactly the bytes stored as the first response (which a replay sends again)."""
    return Response(row.first_response, status_code=201, media_type="application/json")


def _replay(ctl: Controller, existing: LeaseRow, request_hash: str) -> Response:
    """The first response to this key, byte for byte, while its lease is live; 422 if the key came with another
    body; 409 ``lease_ended`` once its lease has ended (the first response would present it as live)."""
    if existing.state not in ACTIVE_LEASE_STATES:
        ctl.metrics.lease_requests.labels(result="ended").inc()
        raise ApiError(409, "lease_ended", f"this Idempotency-Key named lease {existing.id}, which is "
                       f"{existing.state}; use a new key for a new lease")
    if existing.request_hash != request_hash:
        ctl.metrics.lease_requests.labels(result="idempotency_mismatch").inc()
        raise ApiError(422, "idempotency_mismatch", "this Idempotency-Key was used with another body")
    ctl.metrics.lease_requests.labels(result="replay").inc()
    return Response(existing.first_response, status_code=200, media_type="application/json")


async def _new_lease(ctl: Controller, req: LeaseCreate, key: str, request_hash: str) -> Response:
    """The warm path inline (a Ready pod with a free slot, checked by the insert itself) unless leases are queued,
    else pending. The first response is stored with the row, so a replay returns it byte for byte."""
    now = ctl.clock()
    row = LeaseRow(
        id="l_" + secrets.token_hex(8), session_id=req.session_id, voice_id=req.voice_id, language=req.language,
        state=LeaseState.PENDING.value, idempotency_key=key, request_hash=request_hash, created_at=now,
        expires_at=now + ctl.tuning.lease_ttl_s,
    )
    per_pod = ctl.policy.sessions_per_pod
    queued = await ctl.store.queue_length()
    # Leases already waiting go first: a slot that frees up is theirs (the next pass, woken by the release, assigns
    # it in queue order). Taken here by each newcomer instead, it left the queue waiting until pending_timeout_s.
    for pod, used in [] if queued else await ctl.store.warm_candidates(per_pod):
        warm = row.model_copy(update={
            "pod_id": pod.id, "slot": next(s for s in range(per_pod) if s not in used),
            "path": ClaimPath.WARM.value, "state": LeaseState.READY.value, "ready_at": now,
        })
        body = lease_body(warm, pod, None, now)
        warm.first_response = json.dumps(body)
        try:
            if await ctl.store.insert_lease(warm, require_ready_pod=True):
                ctl.metrics.lease_requests.labels(result="warm").inc()
                ctl.metrics.lease_wait.labels(path=ClaimPath.WARM.value).observe(ctl.clock() - now)
                await ctl.store.add_events([(now, f"lease/{warm.id}", "Ready",
                                             f"warm: pod {pod.id} slot {warm.slot} for session {req.session_id}")])
                return _created(warm)
        except SlotTaken:
            continue  # another request took that slot a moment ago: try the next pod
    if queued >= ctl.tuning.queue_limit:
        if existing := await ctl.store.lease_by_key(key):  # a replay is answered even when the queue is full
            return _replay(ctl, existing, request_hash)
        ctl.metrics.lease_requests.labels(result="queue_full").inc()
        raise ApiError(503, "queue_full", "too many leases are waiting for a pod; retry later")
    body = lease_body(row, None, queued + 1, now)
    row.first_response = json.dumps(body)
    await ctl.store.insert_lease(row)
    await ctl.store.add_events([(now, f"lease/{row.id}", "Pending", f"queued for session {req.session_id}")])
    ctl.metrics.lease_requests.labels(result="pending").inc()
    ctl.wake()
    return _created(row)


@leases.get("/{lease_id}", responses={**ok(LeaseOut, 200), **errors(*COMPANION, 404)})
async def get_lease(
    lease_id: LeaseId, ctl: Ctl, _: Companion, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0
) -> dict[str, Any]:
    lease, pod = await _lease_or_404(ctl, lease_id)
    deadline = asyncio.get_running_loop().time() + wait
    while lease.state == LeaseState.PENDING.value:
        # A client long-polling for its lease is alive: each round counts as a heartbeat.
        now = ctl.clock()
        lease, pod = await ctl.store.heartbeat(lease_id, now + ctl.tuning.lease_ttl_s, now)
        remaining = deadline - asyncio.get_running_loop().time()
        if lease is None or remaining <= 0 or ctl.stopping:
            break
        async with ctl.lease_changed:
            try:
                await asyncio.wait_for(ctl.lease_changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        lease, pod = await _lease_or_404(ctl, lease_id)
    if lease is None:
        raise ApiError(404, "not_found", f"no lease {lease_id}")
    return await render_lease(ctl, lease, pod)


@leases.post("/{lease_id}/heartbeat", responses={**ok(LeaseOut, 200), **errors(*COMPANION, 404, 409)})
async def heartbeat(lease_id: LeaseId, ctl: Ctl, _: Companion) -> dict[str, Any]:
    now = ctl.clock()
    lease, pod = await ctl.store.heartbeat(lease_id, now + ctl.tuning.lease_ttl_s, now)
    if lease is None:
        raise ApiError(404, "not_found", f"no lease {lease_id}")
    if lease.state not in ACTIVE_LEASE_STATES:
        raise ApiError(409, "lease_ended", f"lease {lease_id} has ended: {lease.state}" + (
            f" ({lease.reason})" if lease.reason else ""))
    if lease.expires_at <= now:
        raise ApiError(409, "lease_ended", f"lease {lease_id} has ended: it expired {now - lease.expires_at:.0f}s ago "
                       "with no heartbeat within its TTL")
    return await render_lease(ctl, lease, pod)


@leases.delete("/{lease_id}", responses={**ok(LeaseOut, 200), **errors(*COMPANION, 404)})
async def release(
    lease_id: LeaseId, ctl: Ctl, _: Companion, pod_failed: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    """Release a lease (idempotent). ``?pod_failed=true``: the client could not reach the pod; it is taken
    out of the warm pool until a health probe says otherwise, so the next lease does not land on it."""
    now = ctl.clock()
    reason = "released by the client" + (": pod unreachable" if pod_failed else "")
    active = ctl.store.is_active(lease_id)
    lease = await ctl.store.end_lease(lease_id, LeaseState.RELEASED, reason, now)
    if lease is None:
        raise ApiError(404, "not_found", f"no lease {lease_id}")
    if active:
        await ctl.store.add_events([(now, f"lease/{lease_id}", "Released", reason)])
    if pod_failed and lease.pod_id:
        await ctl.store.mark_unhealthy(lease.pod_id, now)
        await ctl.store.add_events([(now, f"pod/{lease.pod_id}", "ReportedUnreachable", f"by lease {lease_id}")])
        ctl.wake()
    elif await ctl.store.queue_length():
        if active and lease.pod_id is not None and lease.slot is not None:
            await _hand_over(ctl, lease.pod_id, lease.slot)
        ctl.wake()  # whatever waits still can be served by a pass; otherwise the idle clock needs no hurry
    async with ctl.lease_changed:
        ctl.lease_changed.notify_all()
    return await render_lease(ctl, lease)


async def _hand_over(ctl: Controller, pod_id: str, slot: int) -> None:
    """The slot a release freed goes to the oldest queued lease at once, if its pod is still Ready: the warm path
    for the queue (a newcomer takes no slot while leases wait). The queue then waits for no pass, and so for no
    RunPod call; if the pod is not Ready, or the slot went meanwhile, the next pass serves the queue instead."""
    head = await ctl.store.queue_head()
    if head is None:
        return
    now = ctl.clock()
    try:
        if not await ctl.store.assign_lease(head, pod_id, slot, ClaimPath.WARM, True, now, require_ready_pod=True):
            return
    except SlotTaken:
        return
    lease = await ctl.store.get_lease(head)
    if lease is not None:
        ctl.metrics.lease_wait.labels(path=ClaimPath.WARM.value).observe(max(0.0, now - lease.created_at))
    await ctl.store.add_events([(now, f"lease/{head}", "Ready", f"warm: pod {pod_id} slot {slot}, freed by a release")])


@leases.get("", responses={**ok(LeaseList, 200), **errors(401, 403, 422)})
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


