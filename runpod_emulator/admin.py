"""The admin API under ``/_admin``: inspect the fleet and the bill, inject faults, play the other tenants.

Not part of RunPod; it exists for tests and demos. Auth: open when the emulator has no ``--api-key``;
otherwise the same key as GraphQL (``Authorization: Bearer`` or ``?api_key=``), or 401.

    GET    /_admin/pods                      every pod, terminated ones included (state, REST status...)
    GET    /_admin/bill                      {"total_usd", "gpu_usd", "storage_usd", "by_pod": {...}}
    GET    /_admin/faults                    armed fault rules
    POST   /_admin/faults                    arm one (body: faults.FaultRule); 422 on a bad body
    DELETE /_admin/faults                    disarm all
    GET    /_admin/requests                  calls received: {"total", "by_api": {"graphql"|"rest":
                                             {"total", "ops": {"<op>": n}}}}
    DELETE /_admin/requests                  start counting from zero
    GET    /_admin/rate-limit                the REST policy and what is left in each window
    PUT    /_admin/rate-limit                body {"policy": "60/minute,3000/hour" | "off"}: a new policy,
                                             every window full again; 422 on a bad policy
    GET    /_admin/tenants                   the other tenants' churn rates
    PUT    /_admin/tenants                   body {"take_per_hour": x, "release_per_hour": y}
    GET    /_admin/machines                  machines, their GPUs and who holds them
    POST   /_admin/machines/{id}/fill        other tenants take every free GPU there
    POST   /_admin/machines/{id}/free        other tenants give theirs back
    POST   /_admin/pods/{id}/sick            its /health answers 503 (body {"sick": false} heals it);
                                             simulated runner only (409 otherwise), 404 for an unknown pod
    POST   /_admin/pods/{id}/crash           its container exits now: body {"log": "last words",
                                             "exit_code": 1}, both optional; the pod shows ERROR on REST
                                             (GraphQL: RUNNING with no runtime); 404 unknown, 409 if the pod
                                             is not starting or running
    POST   /_admin/reset                     pods, machines, faults, ledger, logs, request counts and rate
                                             windows back to the start
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from runpod_emulator.auth import admin_key_ok
from runpod_emulator.emulator import Emulator
from runpod_emulator.faults import FaultRule
from runpod_emulator.fleet import Machine, Pod, PodState
from runpod_emulator.ratelimit import RateLimitPolicy
from runpod_emulator.rest_views import rest_status
from runpod_emulator.runner import service_port


def _emulator(request: Request) -> Emulator:
    emulator: Emulator = request.app.state.emulator
    if not admin_key_ok(request, emulator.settings):
        raise HTTPException(status_code=401, detail="Unauthorized")
    return emulator


EmulatorDep = Annotated[Emulator, Depends(_emulator)]
router = APIRouter(prefix="/_admin", tags=["admin"])


def pod_admin_view(pod: Pod, emulator: Emulator) -> dict[str, Any]:
    private = service_port(pod.ports)
    public = pod.public_ports.get(private) if private is not None else None
    runner = emulator.runner.describe(pod.id)
    return {
        "id": pod.id,
        "name": pod.spec.name,
        "state": pod.state,
        "desired_status": pod.desired_status,
        "status": rest_status(pod),
        "exit_code": pod.exit_code,
        "machine_id": pod.machine_id,
        "gpu_type_id": pod.gpu_type.id,
        "gpu_count": pod.gpu_count,
        "cloud_type": pod.spec.cloud,
        "cost_per_hr": pod.cost_per_hr,
        "created_at": pod.created_at,
        "booted": pod.state is PodState.RUNNING,
        "booted_at": pod.booted_at,
        "serving": runner["serving"],
        "ready": runner["ready"],
        "public_ports": {str(k): v for k, v in pod.public_ports.items()},
        "endpoint": f"http://{emulator.settings.pod_host}:{public}" if public else None,
        "runner": {"kind": emulator.runner.kind, **runner},
    }


def machine_view(machine: Machine) -> dict[str, Any]:
    return {
        "id": machine.id,
        "gpu_type_id": machine.gpu_type.id,
        "gpus": machine.gpus,
        "free": machine.free,
        "tenant_gpus": machine.tenant_gpus,
        "pods": dict(machine.pod_gpus),
    }


@router.get("/pods")
async def list_pods(emulator: EmulatorDep) -> list[dict[str, Any]]:
    await emulator.tick()
    return [pod_admin_view(p, emulator) for p in emulator.fleet.pods.values()]


class Sickness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sick: bool = True


@router.post("/pods/{pod_id}/sick")
async def make_sick(pod_id: str, emulator: EmulatorDep, body: Sickness | None = None) -> dict[str, Any]:
    pod = emulator.fleet.pods.get(pod_id)
    if pod is None:
        raise HTTPException(status_code=404, detail=f"no pod {pod_id!r}")
    set_sick = getattr(emulator.runner, "set_sick", None)
    if set_sick is None:
        raise HTTPException(status_code=409, detail=f"the {emulator.runner.kind} runner cannot fake a sick pod")
    set_sick(pod_id, (body or Sickness()).sick)
    return pod_admin_view(pod, emulator)


class Crash(BaseModel):
    model_config = ConfigDict(extra="forbid")

    log: str | None = Field(None, description="the container's last words, added to its log")
    exit_code: int | None = 1


@router.post("/pods/{pod_id}/crash")
async def crash(pod_id: str, emulator: EmulatorDep, body: Crash | None = None) -> dict[str, Any]:
    pod = emulator.fleet.pods.get(pod_id)
    if pod is None or pod.state is PodState.TERMINATED:
        raise HTTPException(status_code=404, detail=f"no pod {pod_id!r}")
    if pod.state not in (PodState.STARTING, PodState.RUNNING):
        raise HTTPException(status_code=409, detail=f"pod {pod_id} is {pod.state}: no container is running")
    body = body or Crash()
    await emulator.crash(pod_id, body.log, body.exit_code)
    return pod_admin_view(pod, emulator)


@router.get("/requests")
async def requests(emulator: EmulatorDep) -> dict[str, Any]:
    return emulator.requests.as_json()


@router.delete("/requests")
async def clear_requests(emulator: EmulatorDep) -> dict[str, Any]:
    emulator.requests.clear()
    return emulator.requests.as_json()


class RateLimitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(description="QUOTA/WINDOW[,QUOTA/WINDOW...], e.g. 60/minute,3000/hour; or off")

    @field_validator("policy")
    @classmethod
    def _parse(cls, value: str) -> str:
        return str(RateLimitPolicy.parse(value))


@router.get("/rate-limit")
async def rate_limit(emulator: EmulatorDep) -> dict[str, Any]:
    return emulator.rate_limiter.as_json(emulator.clock.now())


@router.put("/rate-limit")
async def set_rate_limit(body: RateLimitBody, emulator: EmulatorDep) -> dict[str, Any]:
    emulator.set_rate_limit(RateLimitPolicy.parse(body.policy))
    return emulator.rate_limiter.as_json(emulator.clock.now())


class TenantChurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    take_per_hour: float = Field(ge=0, description="each free GPU is taken by another tenant at this rate")
    release_per_hour: float = Field(ge=0, description="each GPU another tenant holds is given back at this rate")


@router.get("/tenants")
async def tenants(emulator: EmulatorDep) -> dict[str, Any]:
    return {"take_per_hour": emulator.tenant_take_per_hour, "release_per_hour": emulator.tenant_release_per_hour}


@router.put("/tenants")
async def set_tenants(body: TenantChurn, emulator: EmulatorDep) -> dict[str, Any]:
    emulator.set_tenant_churn(body.take_per_hour, body.release_per_hour)
    return await tenants(emulator)


@router.get("/bill")
async def bill(emulator: EmulatorDep) -> dict[str, Any]:
    return emulator.bill().as_json()


@router.get("/faults")
async def list_faults(emulator: EmulatorDep) -> dict[str, Any]:
    return {"faults": emulator.faults.as_json()}


@router.post("/faults", status_code=201)
async def add_fault(rule: FaultRule, emulator: EmulatorDep) -> dict[str, Any]:
    emulator.faults.add(rule)
    return {"faults": emulator.faults.as_json()}


@router.delete("/faults")
async def clear_faults(emulator: EmulatorDep) -> dict[str, Any]:
    emulator.faults.clear()
    return {"faults": []}


@router.get("/machines")
async def list_machines(emulator: EmulatorDep) -> list[dict[str, Any]]:
    return [machine_view(m) for m in emulator.fleet.machines.values()]


def _known_machine(emulator: Emulator, machine_id: str) -> None:
    if machine_id not in emulator.fleet.machines:
        raise HTTPException(status_code=404, detail=f"no machine {machine_id!r}")


@router.post("/machines/{machine_id}/fill")
async def fill_machine(machine_id: str, emulator: EmulatorDep) -> dict[str, Any]:
    _known_machine(emulator, machine_id)
    return machine_view(await emulator.fill_machine(machine_id))


@router.post("/machines/{machine_id}/free")
async def free_machine(machine_id: str, emulator: EmulatorDep) -> dict[str, Any]:
    _known_machine(emulator, machine_id)
    return machine_view(await emulator.free_machine(machine_id))


@router.post("/reset")
async def reset(emulator: EmulatorDep) -> dict[str, Any]:
    await emulator.reset()
    return {"ok": True}
