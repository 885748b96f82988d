"""RunPod's REST API v2 (``/v2/...``) over the same emulator as GraphQL: pods, actions, logs, catalog, billing.

    GET    /v2/pods                       {"pods": [Pod]}                      op list_pods
    POST   /v2/pods                       201 Pod (PROVISIONING)               op create_pod
    GET    /v2/pods/{id}                  Pod | 404                            op get_pod
    PATCH  /v2/pods/{id}                  Pod (a running container restarts when its settings change)
                                                                               op update_pod
    DELETE /v2/pods/{id}                  204                                  op terminate_pod
    POST   /v2/pods/{id}/action           {"action": start|stop|restart|terminate}: 200 Pod, 204 for
                                          terminate, 409 when not in the pod's ``actions``
                                                                               ops resume_pod, stop_pod,
                                                                               restart_pod, terminate_pod
    GET    /v2/pods/{id}/logs             text/event-stream (see ``logs``)     op logs
    GET    /v2/catalog/gpus[/{id}]        GPU types; stock with include=AVAILABILITY&product=POD
                                                                               op gpu_types
    GET    /v2/billing/pods               time-bucketed records from the ledger  op billing

Every call goes through the same gate, in this order: counted in ``/_admin/requests``; 401 without the
account's Bearer key; 429 if the rate-limit policy's quota is spent (``ratelimit.py``); body and parameter
validation (422); then injected faults (``faults.py``) and the operation. Errors are problem documents
(``problems.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from runpod_emulator.auth import rest_key_ok
from runpod_emulator.catalogue import BY_ID, CATALOGUE, CloudType
from runpod_emulator.emulator import Emulator
from runpod_emulator.errors import FleetError
from runpod_emulator.faults import FaultKind, Hit
from runpod_emulator.fleet import Pod, PodSpec
from runpod_emulator.operations import ACTIONS, INVALID, Api, Op
from runpod_emulator.problems import UNAUTHORIZED, Problem, fault_problem, fleet_problem, validation_problem
from runpod_emulator.rest_logs import stream_logs
from runpod_emulator.rest_params import availability_query, billing_query, logs_query
from runpod_emulator.rest_validation import CREATE_POD, POD_ACTION, UPDATE_POD, check
from runpod_emulator.rest_views import ACTIONS as ALLOWED
from runpod_emulator.rest_views import billing_rest, gpu_type_rest, pod_rest, rest_status

router = APIRouter(prefix="/v2", include_in_schema=False)
DEFAULT_DISK_GB = 50  # v2 documents no default container disk; v1's was 50 GB


# The gate ---------------------------------------------------------------------------------------------------


async def _admit(request: Request, op: str) -> Emulator:
    """Count the call, check the key, spend rate-limit quota; raises the 401 or 429 problem."""
    emulator: Emulator = request.app.state.emulator
    emulator.requests.count(Api.REST, [op])
    if not rest_key_ok(request, emulator.settings):
        raise Problem(401, UNAUTHORIZED, rate_headers=False)
    admission = emulator.rate_limiter.admit(emulator.clock.now())
    request.state.rate_headers = {k: v for k, v in admission.headers.items() if k != "Retry-After"}
    if not admission.allowed:
        raise Problem(
            429,
            f"Rate limit exceeded: retry after {admission.retry_after} seconds.",
            headers={"Retry-After": str(admission.retry_after)},
        )
    await emulator.tick()
    return emulator


def _fault(emulator: Emulator, op: Op) -> Hit | None:
    """Draw an injected fault for the call; one that stops the call is raised here."""
    hit = emulator.faults.draw([op.value], api=Api.REST)
    if hit is not None and not hit.rule.applies_operation:
        raise fault_problem(hit)
    return hit


def _never_boot(hit: Hit | None) -> bool:
    return hit is not None and hit.rule.kind is FaultKind.NO_RUNTIME


async def _answer(request: Request, hit: Hit | None, body: Any, status: int = 200) -> Response:
    """The answer of a call that was carried out, unless an applied fault or a held answer says otherwise."""
    if hit is not None and hit.rule.kind in (FaultKind.INTERNAL, FaultKind.GATEWAY):
        raise fault_problem(hit)  # RunPod can fail a call that did happen
    if hit is not None and hit.rule.kind is FaultKind.TIMEOUT:
        await asyncio.sleep(hit.rule.delay)
    headers = getattr(request.state, "rate_headers", {})
    if status == 204:
        return Response(status_code=204, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


async def _json(request: Request) -> tuple[Any, bool]:
    """The body as JSON, and whether it parsed."""
    try:
        return await request.json(), True
    except ValueError:
        return None, False


def _require_json(parsed: bool) -> None:
    if not parsed:
        raise Problem(400, "The request body is not valid JSON.")


async def _run(coro: Any) -> Any:
    try:
        return await coro
    except FleetError as e:
        raise fleet_problem(e) from e


def _pod(emulator: Emulator, pod_id: str) -> Pod:
    try:
        return emulator.fleet.get(pod_id)
    except FleetError as e:
        raise fleet_problem(e) from e


# Pods -------------------------------------------------------------------------------------------------------


@router.get("/pods")
async def list_pods(request: Request) -> Response:
    emulator = await _admit(request, Op.LIST_PODS)
    hit = _fault(emulator, Op.LIST_PODS)
    return await _answer(request, hit, {"pods": [pod_rest(p, emulator) for p in emulator.fleet.live_pods()]})


@router.post("/pods")
async def create_pod(request: Request) -> Response:
    body, parsed = await _json(request)
    emulator = await _admit(request, Op.CREATE_POD)
    _require_json(parsed)
    spec = _create_spec(body)
    hit = _fault(emulator, Op.CREATE_POD)
    pod = await _run(emulator.create(spec, never_boot=_never_boot(hit)))
    return await _answer(request, hit, pod_rest(pod, emulator), 201)


def _create_spec(body: Any) -> PodSpec:
    errors = check(body, CREATE_POD)
    if not errors and "templateId" not in body and "image" not in body:
        errors.append("$: missing properties: 'image'")  # image is required unless templateId is set
    if errors:
        raise validation_problem(errors)
    if ("gpu" in body) == ("cpu" in body):
        raise Problem(400, "Exactly one of gpu or cpu must be set.")
    if "cpu" in body:
        raise Problem(400, "This emulator has no CPU machines: create a GPU pod.")
    if "templateId" in body:
        raise Problem(404, f"Template {body['templateId']} not found.")  # the emulator keeps no templates
    gpu = body["gpu"]
    if gpu.get("allowedCudaVersions") and "minCudaVersion" in gpu:
        raise Problem(400, "gpu.allowedCudaVersions and gpu.minCudaVersion are mutually exclusive.")
    volume_gb, mount_path = _persistent_mount(body.get("mounts"), has_volume=None)
    return PodSpec(
        name=body["name"],
        image_name=body["image"],
        gpu_type_id=gpu["id"],
        gpu_count=int(gpu.get("count", 1)),
        cloud=CloudType(body.get("cloud", "SECURE")),
        ports=",".join(body.get("ports", [])),
        env=tuple(body.get("env", {}).items()),
        volume_gb=volume_gb,
        container_disk_gb=int(body.get("disk", DEFAULT_DISK_GB)),
        volume_mount_path=mount_path or "/workspace",
        docker_args=body.get("args", ""),
        allowed_cuda_versions=tuple(gpu.get("allowedCudaVersions", ())),
        min_cuda_version=gpu.get("minCudaVersion"),
        data_center_ids=tuple(body.get("dataCenterIds", ())),
        registry=body.get("registry"),
        global_networking=bool(body.get("globalNetworking", False)),
    )


def _persistent_mount(mounts: dict[str, Any] | None, has_volume: bool | None) -> tuple[int, str | None]:
    """(size, path) of a persistent mount; 0 and None without one. ``has_volume``: None on create, else
    whether the pod was created with one (the mount kind is fixed at create)."""
    mounts = mounts or {}
    if "persistent" in mounts and "network" in mounts:
        raise Problem(400, "Set at most one of mounts.persistent and mounts.network.")
    if "network" in mounts:
        volumes = mounts["network"]
        if has_volume is not None or not volumes:
            raise Problem(400, "A network volume can only be attached at create.")
        raise Problem(400, f"Network volume {volumes[0]['volumeId']} not found.")  # the emulator has none
    if "persistent" not in mounts:
        return 0, None
    if has_volume is False:
        raise Problem(400, "The mount kind is fixed at create: this pod has no persistent mount.")
    return int(mounts["persistent"]["size"]), mounts["persistent"]["path"]


@router.get("/pods/{pod_id}")
async def get_pod(pod_id: str, request: Request) -> Response:
    emulator = await _admit(request, Op.GET_POD)
    hit = _fault(emulator, Op.GET_POD)
    return await _answer(request, hit, pod_rest(_pod(emulator, pod_id), emulator))


_UPDATABLE = {
    "name": "name",
    "image": "image_name",
    "args": "docker_args",
    "disk": "container_disk_gb",
    "registry": "registry",
    "locked": "locked",
    "globalNetworking": "global_networking",
}


@router.patch("/pods/{pod_id}")
async def update_pod(pod_id: str, request: Request) -> Response:
    body, parsed = await _json(request)
    emulator = await _admit(request, Op.UPDATE_POD)
    _require_json(parsed)
    if errors := check(body, UPDATE_POD):
        raise validation_problem(errors)
    pod = _pod(emulator, pod_id)
    if "templateId" in body:
        raise Problem(404, f"Template {body['templateId']} not found.")
    changes: dict[str, Any] = {attr: body[key] for key, attr in _UPDATABLE.items() if key in body}
    if "ports" in body:
        changes["ports"] = ",".join(body["ports"])
    if "env" in body:
        changes["env"] = tuple(body["env"].items())
    size, path = _persistent_mount(body.get("mounts"), has_volume=pod.spec.volume_gb > 0)
    if path is not None:
        changes |= {"volume_gb": size, "volume_mount_path": path}
    hit = _fault(emulator, Op.UPDATE_POD)
    pod = await _run(emulator.update(pod_id, changes))
    return await _answer(request, hit, pod_rest(pod, emulator))


@router.delete("/pods/{pod_id}")
async def delete_pod(pod_id: str, request: Request) -> Response:
    emulator = await _admit(request, Op.TERMINATE_POD)
    hit = _fault(emulator, Op.TERMINATE_POD)
    await _run(emulator.terminate(pod_id))
    return await _answer(request, hit, None, 204)


@router.post("/pods/{pod_id}/action")
async def pod_action(pod_id: str, request: Request) -> Response:
    body, parsed = await _json(request)
    action = body.get("action") if isinstance(body, dict) else None
    op = ACTIONS.get(action) if isinstance(action, str) else None
    emulator = await _admit(request, op or INVALID)
    _require_json(parsed)
    if errors := check(body, POD_ACTION):
        raise validation_problem(errors)
    assert op is not None
    pod = _pod(emulator, pod_id)
    status = rest_status(pod)
    if action not in ALLOWED[status]:
        # RunPod's 409 wording is not recorded; clients go by the status and re-read the pod.
        raise Problem(409, f"Cannot {action} a pod in status {status}; allowed now: {', '.join(ALLOWED[status])}.")
    hit = _fault(emulator, op)
    if op is Op.TERMINATE_POD:
        await _run(emulator.terminate(pod_id))
        return await _answer(request, hit, None, 204)
    if op is Op.STOP_POD:
        pod = await _run(emulator.stop(pod_id))
    elif op is Op.RESTART_POD:
        pod = await _run(emulator.restart(pod_id, never_boot=_never_boot(hit)))
    else:  # start: same GPU count, same machine; ERROR restarts in place
        pod = await _run(emulator.resume(pod_id, 0, never_boot=_never_boot(hit)))
    return await _answer(request, hit, pod_rest(pod, emulator))


@router.get("/pods/{pod_id}/logs")
async def pod_logs(pod_id: str, request: Request) -> Response:
    emulator = await _admit(request, Op.LOGS)
    query = logs_query(request)
    hit = _fault(emulator, Op.LOGS)
    backfill, seen = await _run(emulator.pod_logs(pod_id, source=query.source, tail=query.tail, cursor=query.cursor))
    if hit is not None and hit.rule.kind in (FaultKind.INTERNAL, FaultKind.GATEWAY):
        raise fault_problem(hit)  # "applied" to a read: nothing to carry out
    if hit is not None and hit.rule.kind is FaultKind.TIMEOUT:
        await asyncio.sleep(hit.rule.delay)
    headers = {
        **getattr(request.state, "rate_headers", {}),
        "Cache-Control": "no-cache",
        "Connection": "keep-alive",
        "X-Accel-Buffering": "no",
    }
    return stream_logs(emulator, pod_id, backfill, seen, query.source, headers)


# Catalog and billing ----------------------------------------------------------------------------------------


@router.get("/catalog/gpus")
async def list_gpu_types(request: Request) -> Response:
    emulator = await _admit(request, Op.GPU_TYPES)
    availability = availability_query(request)
    hit = _fault(emulator, Op.GPU_TYPES)
    entries = [gpu_type_rest(g, emulator, availability, listing=True) for g in CATALOGUE]
    return await _answer(request, hit, {"gpus": [e for e in entries if e is not None]})


@router.get("/catalog/gpus/{gpu_id}")
async def get_gpu_type(gpu_id: str, request: Request) -> Response:
    emulator = await _admit(request, Op.GPU_TYPES)
    availability = availability_query(request)
    hit = _fault(emulator, Op.GPU_TYPES)
    if gpu_id not in BY_ID:
        raise Problem(404, f"GPU type {gpu_id} not found.")
    return await _answer(request, hit, gpu_type_rest(BY_ID[gpu_id], emulator, availability, listing=False))


@router.get("/billing/pods")
async def pod_billing(request: Request) -> Response:
    emulator = await _admit(request, Op.BILLING)
    now = emulator.clock.now()
    window, pod_id = billing_query(request, now)
    hit = _fault(emulator, Op.BILLING)
    return await _answer(request, hit, billing_rest(emulator.billing_records(window, pod_id), window, pod_id))
