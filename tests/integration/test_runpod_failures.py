"""RunPod's own failures, as the emulator produces them, and what the controller makes of each (issue 13):

- GraphQL's 429 as recorded (a bare ``{"message"}`` body the SDK 1.12.0 meets with ``KeyError('data')``): the
  create fails for that pass, nothing is left at RunPod, a later pass creates again and the lease is served;
- the recorded capacity texts ("This machine does not have the resources...", "No compatible CUDA host...", "no
  longer any instances"): the GPU type is skipped for a while and the next one serves; the low-balance text stops
  creates and says why the lease waits;
- a pod that never gets a runtime (bad image, CUDA mismatch), after a create or a resume: the ready timeout
  replaces it and the lease is served by another;
- ports that appear some seconds after RUNNING: no pod is Ready, and no lease gets endpoints, before its port
  exists;
- other tenants taking the GPU a standby gave back (churn, nobody arranging it): the resume fails with
  host-GPU-busy, and the lease is served once GPUs are free again;
- GraphQL's stale ``runtime.ports`` on an EXITED pod: never taken for an endpoint; HTTP ports reachable only
  through the proxy: the controller needs none (the gpu_server port is TCP).
"""

from __future__ import annotations

import time

import pytest

from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import ADMIN, EMULATOR_KEY, GPU_A, GPU_B, Api, ControllerServer, EmulatorAdmin, controller_settings, until
from .test_controller_lifecycle import standby_parked


@pytest.fixture
async def make_stack(tmp_path):
    """(controller, companion Api, emulator admin) on an emulator with the given fidelity settings."""
    started: list = []

    async def make(emulator: dict | None = None, **controller) -> tuple[ControllerServer, Api, EmulatorAdmin]:
        settings = dict(port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=0.2, load_seconds=0.2, seed=7,
                        machines_per_type=2, gpus_per_machine=2, rate_limit="off") | (emulator or {})
        emu_server = EmulatorServer(EmulatorSettings(**settings))
        await emu_server.start()
        started.append(emu_server)
        server = ControllerServer(controller_settings(emu_server.url, str(tmp_path / f"h{len(started)}.db"),
                                                      **controller))
        await server.start()
        api, emu = Api(server.url), EmulatorAdmin(emu_server.url)
        started.extend([server, api, emu])
        return server, api, emu

    yield make
    for thing in reversed(started):
        await (thing.aclose() if hasattr(thing, "aclose") else thing.stop())


async def _events(api: Api, reason: str) -> list[dict]:
    return [e for e in (await api.get("/v1/events", ADMIN, limit=5000)).json()["events"] if e["reason"] == reason]


async def _served(api: Api, lease_id: str, timeout: float = 30) -> dict:
    async def ready():
        got = (await api.get(f"/v1/leases/{lease_id}", wait=5)).json()
        return got if got["state"] == "ready" else None

    return await until(ready, timeout=timeout)


async def test_graphql_429_as_recorded_fails_the_create_for_that_pass_and_a_later_pass_serves(make_stack):
    server, api, emu = await make_stack(runpod_api="graphql", standby_count=0)
    await emu.fault(op="create_pod", kind="rate_limit_recorded", count=2)
    lease = (await api.lease("s")).json()
    ready = await _served(api, lease["id"])
    assert ready["path"] in ("cold_create", "warm")
    failed = await _events(api, "CreateFailed")
    assert len(failed) == 2 and all("Transient" in e["message"] for e in failed), failed
    live = await emu.live()
    assert len(live) == 1 and live[0]["id"] == (await api.get(f"/v1/pods/{ready['pod_id']}", ADMIN)).json()["runpod_id"]
    assert (await emu.requests())["by_api"]["graphql"]["ops"]["create_pod"] == 3  # two refused, one made


@pytest.mark.parametrize("api_kind", ["rest", "graphql"])
@pytest.mark.parametrize(("kind", "text"), [
    ("no_resources", "This machine does not have the resources to deploy this pod"),
    ("no_cuda_host", "No compatible CUDA host is currently available."),
    ("out_of_stock", "There are no longer any instances available"),
])
async def test_capacity_texts_skip_the_gpu_type_and_the_next_serves(make_stack, api_kind, kind, text):
    server, api, emu = await make_stack(runpod_api=api_kind, standby_count=0, out_of_stock_s=600)
    await emu.fault(op="create_pod", kind=kind, count=1)
    lease = (await api.lease("s")).json()
    ready = await _served(api, lease["id"])
    pod = (await api.get(f"/v1/pods/{ready['pod_id']}", ADMIN)).json()
    assert pod["gpu_type"] == GPU_B
    skipped = await _events(api, "OutOfStock")
    assert len(skipped) == 1 and GPU_A in skipped[0]["message"] and text in skipped[0]["message"], skipped
    assert not await _events(api, "CreateFailed")  # capacity, not a refusal of the request
    # The type stays skipped: the next pod goes to the other type without trying it again.
    second = (await api.lease("t")).json()
    pod2 = (await api.get(f"/v1/pods/{(await _served(api, second['id']))['pod_id']}", ADMIN)).json()
    assert pod2["gpu_type"] == GPU_B
    ops = (await emu.requests())["by_api"][api_kind]["ops"]
    assert ops["create_pod"] == 3


async def test_low_balance_stops_creates_and_says_why_the_lease_waits(make_stack):
    server, api, emu = await make_stack(standby_count=0)
    await emu.fault(op="create_pod", kind="low_balance", count=1)
    lease = (await api.lease("s")).json()

    async def says_balance():
        got = (await api.get(f"/v1/leases/{lease['id']}")).json()
        return got if got["state"] == "pending" and "RunPod balance too low" in (got["reason"] or "") else None

    waiting = await until(says_balance)
    assert "Your account balance is too low" in waiting["reason"]  # RunPod's own words, passed on
    for _ in range(4):
        await server.controller.reconcile_once()
    assert (await emu.requests())["by_api"]["rest"]["ops"]["create_pod"] == 1  # no create tried meanwhile
    assert not await emu.live()


@pytest.mark.parametrize("op", ["create_pod", "resume_pod"])
async def test_a_pod_that_never_gets_a_runtime_is_replaced_after_the_ready_timeout(make_stack, op):
    server, api, emu = await make_stack(ready_timeout_s=3.0, standby_count=1 if op == "resume_pod" else 0,
                                        resume_backoff_s=60)
    if op == "resume_pod":
        await until(lambda: standby_parked(api))
    await emu.fault(op=op, kind="no_runtime", count=1)
    started = time.monotonic()
    lease = (await api.lease("s")).json()
    ready = await _served(api, lease["id"])
    assert time.monotonic() - started >= 3.0  # the first pod had its whole ready timeout
    stuck = [e for e in await _events(api, "PodFailed") if "not Ready after" in e["message"]]
    assert len(stuck) == 1, await _events(api, "PodFailed")
    stuck_pod = stuck[0]["object"].removeprefix("pod/")
    assert ready["pod_id"] != stuck_pod
    gone = (await api.get(f"/v1/pods/{stuck_pod}", ADMIN)).json()
    assert gone["state"] in ("terminating", "terminated") and "not Ready after" in gone["reason"]
    runpod_id = gone["runpod_id"]
    assert runpod_id not in {p["id"] for p in await emu.live()}


async def test_no_pod_is_ready_before_its_port_appears(make_stack):
    server, api, emu = await make_stack({"boot_seconds": 0.3, "ports_delay_seconds": 2.0, "load_seconds": 0.0},
                                        standby_count=0)
    lease = (await api.lease("s")).json()
    saw_running_without_port = False
    while (got := (await api.get(f"/v1/leases/{lease['id']}")).json())["state"] == "pending":
        live = await emu.live()
        rest = (await emu.http.get(f"/v2/pods/{live[0]['id']}")).json() if live else {}
        if rest.get("status") == "RUNNING" and not (rest.get("runtime") or {}).get("ports"):
            saw_running_without_port = True
            pods = await api.pods()
            assert all(p["state"] != "ready" and p["endpoints"] is None for p in pods), pods
        await api.get("/healthz")
    assert saw_running_without_port  # the window was there, and nothing was Ready in it
    endpoint = (await emu.live())[0]["endpoint"]
    assert got["state"] == "ready" and got["endpoints"]["stt"] == endpoint.replace("http://", "ws://") + "/ws/stt"


async def test_tenants_taking_the_freed_gpu_fail_the_resume_and_the_lease_is_served_later(make_stack):
    server, api, emu = await make_stack(resume_backoff_s=60, out_of_stock_s=1)
    sb = await until(lambda: standby_parked(api))
    # Other tenants, at their own pace, take every GPU that is free: the standby's among them.
    await emu.http.put("/_admin/tenants", json={"take_per_hour": 1e7, "release_per_hour": 0})
    await until(lambda: _all_taken(emu))
    await emu.http.put("/_admin/tenants", json={"take_per_hour": 0, "release_per_hour": 0})
    lease = (await api.lease("s")).json()

    async def resume_failed():
        return [e for e in await _events(api, "ResumeFailed") if e["object"] == f"pod/{sb['id']}"]

    failed = await until(resume_failed)
    assert "There are not enough free GPUs on the host machine to start this pod." in failed[0]["message"]
    assert (await api.get(f"/v1/leases/{lease['id']}")).json()["state"] == "pending"
    # Tenants give GPUs back: the lease is served by a new pod (the standby backs off).
    await emu.http.put("/_admin/tenants", json={"take_per_hour": 0, "release_per_hour": 1e7})
    ready = await _served(api, lease["id"])
    assert ready["pod_id"] != sb["id"]


async def _all_taken(emu: EmulatorAdmin) -> bool:
    return all(m["free"] == 0 for m in await emu.machines())


async def test_stale_ports_on_an_exited_pod_are_never_an_endpoint(make_stack):
    server, api, emu = await make_stack({"stale_exited_ports": True}, runpod_api="graphql")
    sb = await until(lambda: standby_parked(api))
    graphql_view = await emu.http.post("/graphql", json={"query": "query { myself { pods { id desiredStatus "
                                                                  "runtime { ports { privatePort publicPort } } } } }"})
    stale = [p for p in graphql_view.json()["data"]["myself"]["pods"] if p["id"] == sb["runpod_id"]]
    assert stale[0]["desiredStatus"] == "EXITED" and stale[0]["runtime"]["ports"]  # RunPod's stale ports
    for _ in range(3):
        await server.controller.reconcile_once()
    pod = (await api.get(f"/v1/pods/{sb['id']}", ADMIN)).json()
    assert pod["state"] == "stopped" and pod["endpoints"] is None and not pod["healthy"]
    lease = (await api.lease("s")).json()
    ready = await _served(api, lease["id"])
    current = next(p for p in await emu.live() if p["id"] == sb["runpod_id"])["endpoint"]
    assert ready["pod_id"] == sb["id"] and ready["endpoints"]["tts"] == current.replace("http://", "ws://") + "/ws/tts"


async def test_http_ports_only_through_the_proxy_do_not_matter(make_stack):
    server, api, emu = await make_stack({"http_proxy_only": True})
    await until(lambda: standby_parked(api))
    lease = (await api.lease("s")).json()
    assert (await _served(api, lease["id"]))["endpoints"]
