"""The real daemon against the emulator over HTTP: standby, claim ladder, idle TTL, capacity fallbacks."""

import asyncio
import os
import socket
import sqlite3
import time

import pytest

from reconciler import claim

from .harness import ADMIN, GPU_A, GPU_B, Api, until


async def standby_parked(api: Api) -> dict | None:
    pods = await api.pods()
    parked = [p for p in pods if p["role"] == "standby" and p["state"] == "stopped" and p["was_ready"]]
    return parked[0] if parked else None


async def test_standby_is_created_becomes_ready_and_is_stopped(stack):
    server, api, emu = stack
    sb = await until(lambda: standby_parked(api))
    assert sb["gpu_type"] == GPU_A and sb["runpod_id"]
    live = await emu.live()
    assert [(p["id"], p["desired_status"]) for p in live] == [(sb["runpod_id"], "EXITED")]
    events = (await api.get("/v1/events", ADMIN)).json()["events"]
    reasons = [e["reason"] for e in events if e["object"] == f"pod/{sb['id']}"]
    assert {"Creating", "Created", "PhaseReady", "Stopping", "PhaseStopped"} <= set(reasons)


async def test_lease_resumes_the_standby_then_a_new_standby_appears_and_idle_ttl_stops_it(stack):
    server, api, emu = stack
    sb = await until(lambda: standby_parked(api))
    created = await api.lease("session-1")
    assert created.status_code == 201, created.text
    lease = created.json()
    assert lease["state"] == "pending"
    ready = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
    assert ready["state"] == "ready" and ready["path"] == "standby_resume" and ready["pod_id"] == sb["id"]
    assert ready["token"] and ready["endpoints"]["stt"].endswith("/ws/stt")
    # the endpoint is the pod's current public port (it changes on every resume)
    emu_pod = next(p for p in await emu.pods() if p["id"] == sb["runpod_id"])
    assert ready["endpoints"]["stt"] == emu_pod["endpoint"].replace("http://", "ws://") + "/ws/stt"
    new_sb = await until(lambda: standby_parked(api))
    assert new_sb["id"] != sb["id"]
    # release: the pod stays warm for idle_ttl_s (1 s here), then it is stopped and becomes a standby
    assert (await api.http.delete(f"/v1/leases/{lease['id']}", headers=api.h())).json()["state"] == "released"

    async def stopped():
        pod = (await api.get(f"/v1/pods/{sb['id']}", ADMIN)).json()
        return pod["state"] == "stopped" and pod["role"] == "standby"

    await until(stopped, timeout=20)


async def test_warm_pod_is_granted_inline(make_controller, emu):
    server = await make_controller(idle_ttl_s=60.0)
    api = Api(server.url)
    try:
        await until(lambda: standby_parked(api))
        first = await api.lease("s1")
        ready = (await api.get(f"/v1/leases/{first.json()['id']}", wait=20)).json()
        assert ready["state"] == "ready"
        await api.http.delete(f"/v1/leases/{first.json()['id']}", headers=api.h())
        second = await api.lease("s2")
        body = second.json()
        assert second.status_code == 201 and body["state"] == "ready" and body["path"] == "warm"
        assert body["pod_id"] == ready["pod_id"]
    finally:
        await api.aclose()


async def test_resume_on_a_filled_host_falls_back_to_cold_create(stack):
    server, api, emu = stack
    sb = await until(lambda: standby_parked(api))
    machine = next(p["machine_id"] for p in await emu.pods() if p["id"] == sb["runpod_id"])
    await emu.fill(machine)  # other tenants take the GPU the standby gave up
    lease = (await api.lease("session-2")).json()
    ready = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
    # a newly created pod serves it: cold_create, or warm if that new pod was Ready before the next pass
    assert ready["state"] == "ready" and ready["path"] in ("cold_create", "warm") and ready["pod_id"] != sb["id"]
    new_pod = (await api.get(f"/v1/pods/{ready['pod_id']}", ADMIN)).json()
    assert new_pod["created_at"] > sb["created_at"]
    events = (await api.get("/v1/events", ADMIN, object=f"pod/{sb['id']}")).json()["events"]
    failed = [e for e in events if e["reason"] == "ResumeFailed"]
    assert failed and "There are not enough free GPUs on the host machine to start this pod." in failed[0]["message"]
    metrics = (await api.http.get("/metrics")).text
    assert f'harper_capacity_errors_total{{gpu_type="{GPU_A}",reason="host_gpu_busy"}} 1.0' in metrics


async def test_a_type_the_catalog_shows_without_stock_is_skipped_without_a_create(make_controller, emu):
    for machine in await emu.machines():
        if machine["gpu_type_id"] == GPU_A:
            await emu.fill(machine["id"])
    server = await make_controller()
    api = Api(server.url)
    try:
        sb = await until(lambda: standby_parked(api))
        assert sb["gpu_type"] == GPU_B
        requests = (await emu.requests())["by_api"]
        assert requests["rest"]["ops"]["create_pod"] == 1  # no doomed create on the type without stock
        assert requests.get("graphql", {}).get("total", 0) == 0  # a default controller speaks REST only
        metrics = (await api.http.get("/metrics")).text
        assert f'harper_gpu_stock{{gpu_type="{GPU_A}"}} 0.0' in metrics
    finally:
        await api.aclose()


async def test_out_of_stock_at_create_falls_back_to_the_next_type(make_controller, emu):
    # The catalog said there was stock, but it went between the read and the create (RunPod never falls back).
    await emu.fault(op="create_pod", kind="out_of_stock", count=1)
    server = await make_controller()
    api = Api(server.url)
    try:
        sb = await until(lambda: standby_parked(api))
        assert sb["gpu_type"] == GPU_B
        events = (await api.get("/v1/events", ADMIN)).json()["events"]
        assert any(e["reason"] == "OutOfStock" and GPU_A in e["message"] for e in events)
    finally:
        await api.aclose()


async def test_max_pods_and_budget_hold_leases_in_the_queue(make_controller, emu):
    server = await make_controller(standby_count=0, max_pods=1, idle_ttl_s=60.0)
    api = Api(server.url)
    try:
        first = (await api.lease("a")).json()
        assert (await api.get(f"/v1/leases/{first['id']}", wait=20)).json()["state"] == "ready"
        second = (await api.lease("b")).json()
        await server.controller.reconcile_once()
        waiting = (await api.get(f"/v1/leases/{second['id']}")).json()
        assert waiting["state"] == "pending" and waiting["queue_position"] == 1 and waiting["pod_id"] is None
        # raising max_pods but setting a budget below two pods still holds it
        patch = await api.http.patch("/v1/policy", json={"max_pods": 5, "budget_usd_per_hour": 1.0}, headers=api.h(ADMIN))
        assert patch.status_code == 200, patch.text
        await server.controller.reconcile_once()
        assert (await api.get(f"/v1/leases/{second['id']}")).json()["state"] == "pending"
        assert len(await emu.live()) == 1
        # with room in the budget the queued lease gets its pod
        await api.http.patch("/v1/policy", json={"budget_usd_per_hour": 5.0}, headers=api.h(ADMIN))
        assert (await api.get(f"/v1/leases/{second['id']}", wait=20)).json()["state"] == "ready"
    finally:
        await api.aclose()


async def test_heartbeat_expiry_frees_the_slot(make_controller, emu):
    server = await make_controller(standby_count=0, max_pods=1, lease_ttl_s=1.5, idle_ttl_s=60.0)
    api = Api(server.url)
    try:
        first = (await api.lease("a")).json()
        ready = (await api.get(f"/v1/leases/{first['id']}", wait=20)).json()
        hb = await api.post(f"/v1/leases/{first['id']}/heartbeat")
        assert hb.status_code == 200 and hb.json()["expires_at"] >= ready["expires_at"]
        second = (await api.lease("b")).json()
        assert second["state"] == "pending"
        # no more heartbeats for the first: it expires and the second (kept alive) takes its slot

        async def second_ready():
            await api.post(f"/v1/leases/{second['id']}/heartbeat")
            return await _state(api, second["id"], "ready")

        got = await until(second_ready, timeout=20, every=0.3)
        assert got["pod_id"] == ready["pod_id"] and got["path"] == "warm"
        expired = (await api.get(f"/v1/leases/{first['id']}")).json()
        assert expired["state"] == "expired" and expired["token"] is None
        late = await api.post(f"/v1/leases/{first['id']}/heartbeat")
        assert late.status_code == 409 and late.json()["error"]["code"] == "lease_ended"
    finally:
        await api.aclose()


async def _state(api: Api, lease_id: str, state: str) -> dict | None:
    body = (await api.get(f"/v1/leases/{lease_id}")).json()
    return body if body["state"] == state else None


async def test_a_pod_reported_unreachable_gets_no_lease_until_its_probe_passes(make_controller, emu):
    """``DELETE /v1/leases/{id}?pod_failed=true`` takes the pod out of the warm pool; passes reuse a recent
    healthy probe, but never for a pod under suspicion, so it stays out while its /health fails (here the
    emulator makes it sick) and comes back once it answers again. Passes are driven by hand."""
    server = await make_controller(idle_ttl_s=600.0, reconcile_interval_s=30.0, standby_count=0)
    api = Api(server.url)

    async def ready(lease_id: str) -> dict | None:
        await api.post("/v1/reconcile", ADMIN)
        body = (await api.get(f"/v1/leases/{lease_id}")).json()
        return body if body["state"] == "ready" else None

    try:
        first = (await api.lease("s1")).json()
        granted = await until(lambda: ready(first["id"]), timeout=20)
        pod_id = granted["pod_id"]
        runpod_id = (await api.get(f"/v1/pods/{pod_id}", ADMIN)).json()["runpod_id"]
        assert (await emu.http.post(f"/_admin/pods/{runpod_id}/sick")).status_code == 200
        released = await api.http.delete(f"/v1/leases/{first['id']}", params={"pod_failed": "true"}, headers=api.h())
        assert released.json()["state"] == "released"

        assert (await api.post("/v1/reconcile", ADMIN)).json()["ok"]  # well within the probe-reuse interval
        assert (await api.get(f"/v1/pods/{pod_id}", ADMIN)).json()["healthy"] is False
        second = (await api.lease("s2")).json()
        assert second["state"] == "pending"  # not warm on the sick pod
        elsewhere = await until(lambda: ready(second["id"]), timeout=20)
        assert elsewhere["pod_id"] != pod_id and elsewhere["path"] == "cold_create"

        assert (await emu.http.post(f"/_admin/pods/{runpod_id}/sick", json={"sick": False})).status_code == 200

        async def healthy_again() -> bool:
            await api.post("/v1/reconcile", ADMIN)
            return (await api.get(f"/v1/pods/{pod_id}", ADMIN)).json()["healthy"]

        await until(healthy_again, timeout=20)
        third = (await api.lease("s3")).json()
        assert (third["state"], third["path"], third["pod_id"]) == ("ready", "warm", pod_id)
    finally:
        await api.aclose()



@pytest.mark.parametrize(("renewed_ago", "kept"), [(60.0, True), (1.0, False)], ids=["long-outage", "quick-restart"])
async def test_after_a_long_outage_no_lease_whose_client_is_alive_expires(make_controller, emu, database_url,
                                                                         renewed_ago, kept):
    """Found by the chaos bench: leases whose clients kept heartbeating expired when no controller ran for longer
    than the TTL, as no heartbeat could land. A controller that takes over from one that died holding the database
    long enough ago gives every active lease one TTL from its start (a silent client loses its lease one TTL
    later); after a quick restart (a crash loop) nothing changes, so vanished clients' leases still expire."""
    server = await make_controller(lease_ttl_s=2.0, idle_ttl_s=60.0)
    api = Api(server.url)
    try:
        await until(lambda: standby_parked(api))
        held = (await api.lease("alive")).json()
        held = (await api.get(f"/v1/leases/{held['id']}", wait=20)).json()
        assert held["state"] == "ready"
        await server.stop()
        await asyncio.sleep(2.5)  # past the TTL: the client's heartbeats found no controller meanwhile
        _leave_dead_holder(database_url, renewed_ago)  # as a SIGKILLed controller leaves the lock row
        again = await make_controller(lease_ttl_s=2.0, idle_ttl_s=60.0)
        api2 = Api(again.url)
        try:
            beat = await api2.post(f"/v1/leases/{held['id']}/heartbeat")
            assert (beat.status_code == 200) == kept, beat.text
            await again.controller.reconcile_once()
            state = (await api2.get(f"/v1/leases/{held['id']}")).json()["state"]
            assert state == ("ready" if kept else "expired")
        finally:
            await api2.aclose()
    finally:
        await api.aclose()


def _leave_dead_holder(database_url: str, renewed_ago: float) -> None:
    """The lock row of a controller on this machine whose process is gone, last renewed ``renewed_ago`` s ago."""
    now = time.time()
    process = claim.process_key(os.getpid()).rsplit("/", 1)[0] + "/1"  # this pid, another start time: gone
    with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
        conn.execute("INSERT INTO controller_lock (id, token, host, pid, process, api_url, since, renewed_at, "
                     "stale_after_s) VALUES (1, 'dead', ?, ?, ?, '', ?, ?, 30)",
                     (socket.gethostname(), os.getpid(), process, now - 100, now - renewed_ago))
