"""Admin endpoints: pods and overrides, policy, reconcile now, events, cost."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError

from ..domain import LeaseState, PodPhase, PodRole, Policy
from ..loop import Controller
from ..provider import HostGpuBusy, NotFound, ProviderError
from ..store import dumps
from ..tables import LeaseRow, PodRow
from .common import (
    PRINTABLE,
    Admin,
    ApiError,
    Ctl,
    PolicyPatch,
    first_error,
    iso,
    json_body,
    json_schema_body,
    render_pod,
)
from .schema import ADMIN, ID_MAX_LENGTH, ID_PATTERN, errors, ok

PodId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]
VERBS = ("stop", "start", "terminate", "cordon", "uncordon")
# Documented as an enum, checked by the handler: an unknown verb is a route that does not exist (404), not bad input.
PodVerb = Annotated[str, Path(json_schema_extra={"enum": list(VERBS)})]

admin = APIRouter(prefix="/v1", tags=["admin"])


@admin.get("/pods", responses=errors(*ADMIN))
async def list_pods(ctl: Ctl, _: Admin, all: bool = False) -> dict[str, Any]:
    rows = await (ctl.store.all_pods() if all else ctl.store.live_pods())
    active = await ctl.store.active_leases()
    return {"pods": [render_pod(row, active) for row in rows]}


@admin.get("/pods/{pod_id}", responses=errors(*ADMIN, 404))
async def get_pod(pod_id: PodId, ctl: Ctl, _: Admin) -> dict[str, Any]:
    row = await _pod_or_404(ctl, pod_id)
    return render_pod(row, await ctl.store.leases_on([pod_id]))


@admin.post("/pods/{pod_id}/{op}", responses=errors(*ADMIN, 404, 409, 502))
async def pod_override(
    pod_id: PodId, op: PodVerb, ctl: Ctl, _: Admin, force: bool = False
) -> dict[str, Any]:
    if op not in VERBS:
        raise ApiError(404, "not_found", f"no pod operation {op[:40]!r}")
    now = ctl.clock()
    async with ctl.exclusive():  # never act on a pod mid-pass; check the pod as it is now
        row = await _pod_or_404(ctl, pod_id)
        held = await ctl.store.leases_on([pod_id])
        phase = PodPhase(row.phase)
        # A repeat (the pod is already where the verb takes it) is a no-op; a verb that makes no sense for the
        # pod's phase is 409, whatever the verb.
        if phase in ALREADY[op] or (op in ("cordon", "uncordon") and row.cordoned == (op == "cordon")
                                    and phase not in GONE):
            return render_pod(row, held)
        if phase in GONE or (row.runpod_id is None and op not in ("cordon", "uncordon")):
            raise ApiError(409, "conflict", f"pod {pod_id} is {phase}: nothing to {op}")
        if op in ("cordon", "uncordon"):
            await ctl.store.update_pod(pod_id, [("cordoned", op == "cordon")])
        elif op == "start" and phase != PodPhase.STOPPED:
            raise ApiError(409, "conflict", f"pod {pod_id} is {phase}: start it once it is stopped")
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
    return render_pod(await ctl.store.get_pod(pod_id), await ctl.store.leases_on([pod_id]))


GONE = frozenset({PodPhase.TERMINATED, PodPhase.FAILED})
# Phases in which each verb has nothing left to do.
ALREADY = {
    "stop": frozenset({PodPhase.STOPPING, PodPhase.STOPPED}),
    "start": frozenset({PodPhase.CREATING, PodPhase.STARTING, PodPhase.READY}),
    "terminate": frozenset({PodPhase.TERMINATING, PodPhase.TERMINATED}),
    "cordon": frozenset(),
    "uncordon": frozenset(),
}


async def _override(ctl: Controller, row: PodRow, op: str, now: float, held: list[LeaseRow]) -> None:
    """stop/terminate (failing the pod's leases: the caller checked ``force``) or start a stopped pod."""
    if op == "start":
        await ctl.provider.resume_pod(row.runpod_id)
        # A pod an admin starts serves (and stops after the idle TTL) rather than being parked at once.
        await ctl.store.update_pod(row.id, [("phase", PodPhase.STARTING), ("phase_since", now),
                                            ("role", PodRole.SERVING), ("backoff_until", 0.0)])
        return
    for lease in held:
        await ctl.store.end_lease(lease.id, LeaseState.FAILED, f"pod {op} by admin", now)
    if op == "stop":
        if row.phase != PodPhase.STOPPED:
            await ctl.store.begin_stop(row.id, now, make_standby=True, force=True)
            await ctl.provider.stop_pod(row.runpod_id)
    else:
        await ctl.store.update_pod(row.id, [("phase", PodPhase.TERMINATING), ("phase_since", now),
                                            ("reason", "terminated by admin")])
        await ctl.provider.terminate_pod(row.runpod_id)


@admin.get("/policy", responses={**ok(Policy, 200), **errors(*ADMIN)})
async def get_policy(ctl: Ctl, _: Admin) -> dict[str, Any]:
    return (await ctl.store.get_policy(ctl.default_policy)).model_dump()


@admin.patch("/policy", openapi_extra=json_schema_body(PolicyPatch),
              responses={**ok(Policy, 200), **errors(400, *ADMIN, 413, 502)})
async def patch_policy(request: Request, ctl: Ctl, _: Admin) -> dict[str, Any]:
    body = await json_body(request)
    try:
        patch = PolicyPatch.model_validate(body)
        current = await ctl.store.get_policy(ctl.default_policy)
        merged = Policy.model_validate(current.model_dump() | patch.model_dump(exclude_none=True))
    except ValidationError as e:
        raise ApiError(422, "invalid_policy", first_error(e)) from None
    if patch.gpu_types is not None:
        await _check_gpu_types(ctl, [t for t in merged.gpu_types if t not in ctl.prices])
    await ctl.store.set_policy(merged)
    await ctl.store.add_events([(ctl.clock(), "policy", "PolicyChanged", dumps(patch.model_dump(exclude_none=True)))])
    ctl.wake()
    return merged.model_dump()


async def _check_gpu_types(ctl: Controller, gpu_types: list[str]) -> None:
    """422 for a GPU type RunPod does not list for pods on our cloud (asked now: a typo would otherwise only show
    as leases that never get a pod)."""
    if not gpu_types:
        return
    cloud = ctl.template.cloud_type
    try:
        offers = await ctl.provider.gpu_catalog(gpu_types, cloud)
    except ProviderError as e:
        message = f"could not check gpu_types with RunPod: {type(e).__name__}: {e}"
        raise ApiError(502, "provider_error", message) from None
    unknown = [t for t in gpu_types if t not in offers]
    if unknown:
        raise ApiError(422, "invalid_policy", f"gpu_types: RunPod does not offer {', '.join(map(repr, unknown))} "
                                              f"for pods on {cloud} cloud")


@admin.post("/reconcile", responses=errors(*ADMIN))
async def reconcile_now(ctl: Ctl, _: Admin) -> dict[str, Any]:
    actions = await ctl.reconcile_once()
    return {"ok": ctl.last_error == "", "error": ctl.last_error or None,
            "actions": [type(a).__name__ for a in actions]}


@admin.get("/events", responses=errors(*ADMIN))
async def events(
    ctl: Ctl, _: Admin, limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    object: Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)] = None,
) -> dict[str, Any]:
    rows = await ctl.store.events(limit, object)
    return {"events": [{"time": iso(e.time), "object": e.object, "reason": e.reason, "message": e.message}
                       for e in rows]}


@admin.get("/cost", responses=errors(*ADMIN))
async def cost(ctl: Ctl, _: Admin) -> dict[str, Any]:
    spend = await ctl.store.spend()
    by_pod: dict[str, dict[str, float]] = {}
    totals = {"gpu": 0.0, "storage": 0.0}
    for row in spend:
        kind, _, pod_id = row.key.partition(":")
        by_pod.setdefault(pod_id, {"gpu": 0.0, "storage": 0.0})[kind] = round(row.usd, 6)
        totals[kind] = totals.get(kind, 0.0) + row.usd
    per_hour = ctl.usd_per_hour
    billed = None
    if ctl.billed is not None:
        billed_totals = ctl.billed["totals"]
        billed = {
            **{k: round(v, 6) for k, v in billed_totals.items()}, "total": round(sum(billed_totals.values()), 6),
            "as_of": iso(ctl.billed["as_of"]),
        }
        for pod_id, amounts in ctl.billed["by_pod"].items():
            by_pod.setdefault(pod_id, {"gpu": 0.0, "storage": 0.0})["billed"] = {
                k: round(v, 6) for k, v in amounts.items()}
    today = datetime.fromtimestamp(ctl.clock(), UTC)
    return {
        "usd_per_hour": {**{k: round(v, 6) for k, v in per_hour.items()}, "total": round(sum(per_hour.values()), 6)},
        "spent_usd": {**{k: round(v, 6) for k, v in totals.items()}, "total": round(sum(totals.values()), 6)},
        "today": _period(await ctl.store.spend_since(today.strftime("%Y-%m-%d"))),
        "month_to_date": _period(await ctl.store.spend_since(today.strftime("%Y-%m-01"))),
        # What RunPod's billing records say for the same pods (REST v2; null on GraphQL or before the first
        # read). They lag the estimate by up to ``HARPER_BILLING_INTERVAL_S``.
        "billed_usd": billed,
        "by_pod": by_pod,
    }


def _period(totals: dict[str, float]) -> dict[str, float]:
    """Estimated spend of a UTC period (today, month to date), by kind."""
    amounts = {kind: round(totals.get(kind, 0.0), 6) for kind in ("gpu", "storage")}
    return {**amounts, "total": round(sum(amounts.values()), 6)}


async def _pod_or_404(ctl: Controller, pod_id: str) -> PodRow:
    row = await ctl.store.get_pod(pod_id)
    if row is None:
        raise ApiError(404, "not_found", f"no pod {pod_id}")
    return row


