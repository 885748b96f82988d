"""The controller's REST API: auth scopes, idempotency, bad input, admin overrides, cost and metrics; each on a
SQLite file and on PostgreSQL."""

import pytest

from gpu_server.auth import verify_token

from .harness import ADMIN, COMPANION, Api, until
from .test_controller_lifecycle import standby_parked


@pytest.fixture
def database_url(any_database):
    return any_database


async def test_auth_scopes(stack):
    server, api, emu = stack
    anonymous = await api.http.post("/v1/leases", json={"session_id": "x"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    forged = await api.http.post("/v1/leases", json={"session_id": "x"}, headers={"Authorization": "Bearer nope"})
    assert forged.status_code == 401
    assert "nope" not in forged.text
    for path in ("/v1/pods", "/v1/policy", "/v1/events", "/v1/cost", "/v1/leases"):
        response = await api.get(path, COMPANION)
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden", path
        assert (await api.get(path, ADMIN)).status_code == 200, path
    assert (await api.post("/v1/reconcile", COMPANION)).status_code == 403
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert (await api.http.get(path)).status_code == 200, path
    metrics = (await api.http.get("/metrics")).text
    assert COMPANION not in metrics and ADMIN not in metrics


async def test_idempotency_key_replays_the_first_response(stack):
    server, api, emu = stack
    first = await api.lease("sess", key="k-1")
    replay = await api.lease("sess", key="k-1")
    assert first.status_code == 201 and replay.status_code == 200
    assert replay.json() == first.json()
    other_body = await api.lease("sess", key="k-1", voice_id="another")
    assert other_body.status_code == 422 and other_body.json()["error"]["code"] == "idempotency_mismatch"
    # without a header the session id is the key
    a, b = await api.lease("sess-2"), await api.lease("sess-2")
    assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
    leases = (await api.get("/v1/leases", ADMIN)).json()["leases"]
    assert sorted(lease["session_id"] for lease in leases) == ["sess", "sess-2"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b'{"session_id": 5}', 422, "invalid_request"),
        (b'{"session_id": ""}', 422, "invalid_request"),
        (b'{"session_id": "a", "surprise": 1}', 422, "invalid_request"),
        (b'{"session_id": "a\\u0000b"}', 422, "invalid_request"),  # NUL: PostgreSQL cannot store it
        (b'{"session_id": "s", "voice_id": "v\\u001b[31m"}', 422, "invalid_request"),
        (b"[1, 2]", 422, "invalid_request"),
        (b'{"session_id": "' + b"x" * 70_000 + b'"}', 413, "too_large"),
    ],
)
async def test_bad_lease_bodies_get_clear_errors_and_nothing_is_stored(stack, body, status, code):
    server, api, emu = stack
    response = await api.http.post("/v1/leases", content=body, headers=api.h(**{"Content-Type": "application/json"}))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert (await api.get("/v1/leases", ADMIN)).json()["leases"] == []


async def test_unknown_ids_and_bad_params(stack):
    server, api, emu = stack
    assert (await api.get("/v1/leases/nope")).status_code == 404
    assert (await api.post("/v1/leases/nope/heartbeat")).status_code == 404
    assert (await api.http.delete("/v1/leases/nope", headers=api.h())).status_code == 404
    assert (await api.get("/v1/pods/nope", ADMIN)).status_code == 404
    assert (await api.post("/v1/pods/nope/stop", ADMIN)).status_code == 404
    bad_wait = await api.get("/v1/leases/nope", wait="soon")
    assert bad_wait.status_code == 422 and bad_wait.json()["error"]["code"] == "invalid_request"
    bad_state = await api.get("/v1/leases", ADMIN, state="sleepy")
    assert bad_state.status_code == 422


async def test_release_is_idempotent_and_token_verifies_offline(stack):
    server, api, emu = stack
    await until(lambda: standby_parked(api))
    lease = (await api.lease("s")).json()
    ready = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
    pod_row = await server.controller.store.get_pod(ready["pod_id"])
    claims = verify_token(pod_row.secret, ready["token"], now=server.controller.clock(), pod_id=ready["pod_id"])
    assert claims.lease_id == lease["id"]
    first = await api.http.delete(f"/v1/leases/{lease['id']}", headers=api.h())
    again = await api.http.delete(f"/v1/leases/{lease['id']}", headers=api.h())
    assert first.status_code == again.status_code == 200 and again.json()["state"] == "released"
    assert (await api.post(f"/v1/leases/{lease['id']}/heartbeat")).status_code == 409


async def test_policy_is_validated_and_applied(stack):
    server, api, emu = stack
    for bad in ({"standby_count": -1}, {"gpu_types": []}, {"idle_ttl_s": "long"}, {"nonsense": 1},
                {"gpu_types": ['bad"quote']}):
        response = await api.http.patch("/v1/policy", json=bad, headers=api.h(ADMIN))
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "invalid_policy"
    ok = await api.http.patch("/v1/policy", json={"standby_count": 2}, headers=api.h(ADMIN))
    assert ok.status_code == 200 and ok.json()["standby_count"] == 2

    async def two_parked():
        pods = await api.pods()
        return len([p for p in pods if p["role"] == "standby" and p["state"] == "stopped" and p["was_ready"]]) == 2

    await until(two_parked, timeout=30)


async def test_admin_overrides_start_stop_cordon_terminate(stack):
    server, api, emu = stack
    sb = await until(lambda: standby_parked(api))
    pid = sb["id"]
    await api.http.patch("/v1/policy", json={"idle_ttl_s": 120}, headers=api.h(ADMIN))
    started = await api.post(f"/v1/pods/{pid}/start", ADMIN)
    assert started.status_code == 200 and started.json()["state"] == "starting"

    async def state_is(state):
        return (await api.get(f"/v1/pods/{pid}", ADMIN)).json()["state"] == state

    await until(lambda: state_is("ready"))
    cordoned = await api.post(f"/v1/pods/{pid}/cordon", ADMIN)
    assert cordoned.json()["cordoned"] is True
    # a cordoned pod gets no lease: this one goes to another pod
    lease = (await api.lease("c1")).json()
    got = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
    assert got["state"] == "ready" and got["pod_id"] != pid
    assert (await api.post(f"/v1/pods/{pid}/uncordon", ADMIN)).json()["cordoned"] is False
    # start of a running, leased pod is a repeat: nothing happens to the pod or its lease
    leased = got["pod_id"]
    not_stopped = await api.post(f"/v1/pods/{leased}/start", ADMIN)
    assert not_stopped.status_code == 200 and not_stopped.json()["state"] == "ready"
    assert (await api.get(f"/v1/leases/{lease['id']}")).json()["state"] == "ready"
    # stop refuses a leased pod unless forced
    refused = await api.post(f"/v1/pods/{leased}/stop", ADMIN)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "pod_leased"
    forced = await api.post(f"/v1/pods/{leased}/stop", ADMIN, params={"force": "true"})
    assert forced.status_code == 200 and forced.json()["state"] == "stopping"
    assert (await api.get(f"/v1/leases/{lease['id']}")).json()["state"] == "failed"
    stopped = await api.post(f"/v1/pods/{pid}/stop", ADMIN)
    assert stopped.status_code == 200
    await until(lambda: state_is("stopped"))
    terminated = await api.post(f"/v1/pods/{pid}/terminate", ADMIN)
    assert terminated.status_code == 200
    await until(lambda: state_is("terminated"))
    assert all(p["id"] != sb["runpod_id"] for p in await emu.live())
    assert (await api.post(f"/v1/pods/{pid}/start", ADMIN)).status_code == 409
    assert (await api.post(f"/v1/pods/{pid}/explode", ADMIN)).status_code == 404
    events = (await api.get("/v1/events", ADMIN, object=f"pod/{pid}")).json()["events"]
    assert {"AdminStart", "AdminCordon", "AdminStop", "AdminTerminate"} <= {e["reason"] for e in events}


async def test_pause_holds_leases_and_reconcile_now(stack):
    server, api, emu = stack
    await until(lambda: standby_parked(api))
    await api.http.patch("/v1/policy", json={"paused": True}, headers=api.h(ADMIN))
    lease = (await api.lease("p")).json()
    now = await api.post("/v1/reconcile", ADMIN)
    assert now.status_code == 200 and now.json()["ok"] is True
    assert (await api.get(f"/v1/leases/{lease['id']}")).json()["state"] == "pending"
    await api.http.patch("/v1/policy", json={"paused": False}, headers=api.h(ADMIN))
    assert (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()["state"] == "ready"


async def test_cost_and_metrics_follow_the_pods(stack):
    server, api, emu = stack
    await until(lambda: standby_parked(api))
    lease = (await api.lease("c")).json()
    await api.get(f"/v1/leases/{lease['id']}", wait=20)

    async def spent():
        # once the replacement standby is parked, one RTX 4090 (the leased pod) is running
        cost = (await api.get("/v1/cost", ADMIN)).json()
        return cost if cost["spent_usd"]["gpu"] > 0 and abs(cost["usd_per_hour"]["gpu"] - 0.69) < 0.01 else None

    cost = await until(spent)
    # 20 GB volume + 20 GB container disk while running, 20 GB volume at the stopped rate for the standby
    expected_storage = (20 * 0.10 + 20 * 0.10) / 730 + 20 * 0.20 / 730
    assert cost["usd_per_hour"]["storage"] == pytest.approx(expected_storage, abs=1e-5)
    assert cost["by_pod"]
    metrics = (await api.http.get("/metrics")).text
    for name in ("harper_pods{", "harper_leases{", "harper_lease_requests_total{", "harper_lease_wait_seconds_bucket{",
                 "harper_cost_dollars_per_hour{", "harper_cost_dollars_total{", "harper_gpu_seconds_total{",
                 "harper_standby_ready ", "harper_reconcile_total{", "harper_reconcile_duration_seconds_bucket",
                 "harper_provider_requests_total{", "harper_provider_request_duration_seconds_bucket{",
                 "harper_capacity_errors_total", "harper_orphans_collected_total", "harper_build_info{"):
        assert name in metrics, name
    assert 'harper_lease_requests_total{result="pending"} 1.0' in metrics


async def test_a_pass_that_fails_after_listing_is_counted_and_reported(stack, monkeypatch):
    server, api, emu = stack
    await until(lambda: standby_parked(api))

    async def broken(actions, now):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server.controller.actuator, "run", broken)  # a fault past the RunPod listing
    failed = await api.post("/v1/reconcile", ADMIN)
    assert failed.status_code == 200
    assert failed.json() == {"ok": False, "error": "RuntimeError: disk on fire", "actions": []}
    metrics = (await api.http.get("/metrics")).text
    errors = [line for line in metrics.splitlines() if line.startswith('harper_reconcile_total{result="error"}')]
    assert errors and float(errors[0].split()[1]) >= 1
    monkeypatch.undo()
    assert (await api.post("/v1/reconcile", ADMIN)).json()["ok"] is True


async def test_a_full_queue_refuses_new_leases_but_still_answers_replays(make_controller):
    server = await make_controller(queue_limit=2)
    api = Api(server.url)
    try:
        await api.http.patch("/v1/policy", json={"paused": True}, headers=api.h(ADMIN))
        first = await api.lease("q1")
        await api.lease("q2")
        full = await api.lease("q3")
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        replay = await api.lease("q1")
        assert replay.status_code == 200 and replay.content == first.content
        other_body = await api.lease("q1", voice_id="v2")
        assert other_body.status_code == 422 and other_body.json()["error"]["code"] == "idempotency_mismatch"
    finally:
        await api.aclose()


async def test_openapi_documents_the_bodies_the_handlers_read_themselves(stack):
    server, api, emu = stack
    spec = (await api.http.get("/openapi.json")).json()

    def body(path: str, method: str) -> dict:
        return spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]

    assert body("/v1/leases", "post")["required"] == ["session_id"]
    policy_fields = set(body("/v1/policy", "patch")["properties"])
    assert policy_fields == set((await api.get("/v1/policy", ADMIN)).json())  # every policy field, no more


async def test_ids_and_filters_that_cannot_name_a_record_are_refused_before_the_database(stack):
    """A NUL in an id or a filter was a 500 on PostgreSQL (it cannot even compare such a string); ids the API never
    hands out, and over-long ones, are refused as invalid without a lookup."""
    server, api, emu = stack
    for method, path, token in [
        ("GET", "/v1/leases/a%00b", COMPANION), ("POST", "/v1/leases/a%00b/heartbeat", COMPANION),
        ("DELETE", "/v1/leases/a%00b", COMPANION), ("GET", "/v1/pods/a%00b", ADMIN),
        ("POST", "/v1/pods/a%00b/stop", ADMIN), ("GET", "/v1/events?object=pod/a%00b", ADMIN),
        ("GET", "/v1/leases/" + "l" * 65, COMPANION), ("GET", "/v1/leases/l_%E2%9C%93", COMPANION),
    ]:
        response = await api.http.request(method, path, headers=api.h(token))
        assert response.status_code == 422, (path, response.status_code, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    assert (await api.get("/v1/leases/l_0123456789abcdef")).status_code == 404  # a well-formed id is looked up


async def test_openapi_declares_every_answer_with_its_body(stack):
    server, api, emu = stack
    spec = (await api.http.get("/openapi.json")).json()
    error_ref = "#/components/schemas/ErrorBody"
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in ("401", "422"):  # every /v1 route: a missing token, a bad parameter
                assert responses[status]["content"]["application/json"]["schema"]["$ref"] == error_ref, (path, method)
            if path != "/v1/leases" or method == "get":
                admin_only = not path.startswith("/v1/leases") or (path == "/v1/leases" and method == "get")
                assert ("403" in responses) == admin_only, (path, method)
    create = spec["paths"]["/v1/leases"]["post"]["responses"]
    assert {"200", "201", "409", "413", "503"} <= set(create)  # a replay is 200, a full queue 503
    assert create["200"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/LeaseOut"
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's 422 body is not what we send
    patch = spec["paths"]["/v1/policy"]["patch"]["requestBody"]["content"]["application/json"]["schema"]
    idle = next(s for s in patch["properties"]["idle_ttl_s"]["anyOf"] if s["type"] == "number")
    assert (idle["minimum"], idle["maximum"]) == (0, 7 * 86400)  # the policy's bounds, as the handler applies them
    verb = next(p for p in spec["paths"]["/v1/pods/{pod_id}/{op}"]["post"]["parameters"] if p["name"] == "op")
    assert verb["schema"]["enum"] == ["stop", "start", "terminate", "cordon", "uncordon"]
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


async def test_a_waiting_lease_gets_the_freed_slot_at_once_and_a_newcomer_queues_behind(make_controller, emu):
    """Found by the chaos bench: with pods at max_pods, each slot a release freed went to the next new request on
    the warm path, while the leases already queued waited, were assigned by the next pass to a slot taken in the
    meantime, and timed out after pending_timeout_s. Now the release hands the slot to the oldest queued lease at
    once (no pass, so no RunPod call, needed: here RunPod cannot even be listed), and a newcomer queues behind."""
    server = await make_controller(standby_count=0, max_pods=1, idle_ttl_s=60.0)
    api = Api(server.url)
    try:
        first = (await api.lease("a")).json()
        first = (await api.get(f"/v1/leases/{first['id']}", wait=20)).json()
        assert first["state"] == "ready"
        waiting = (await api.lease("b")).json()
        assert waiting["state"] == "pending" and waiting["queue_position"] == 1
        await emu.fault(op="list_pods", kind="internal", count=10_000)  # from now on no pass gets anywhere
        await api.http.delete(f"/v1/leases/{first['id']}", headers=api.h())
        served = (await api.get(f"/v1/leases/{waiting['id']}")).json()
        assert served["state"] == "ready" and served["pod_id"] == first["pod_id"] and served["path"] == "warm"
        assert served["token"] and served["endpoints"]
        newcomer = (await api.lease("c")).json()
        assert newcomer["state"] == "pending" and newcomer["queue_position"] == 1, newcomer
        third = (await api.lease("d")).json()
        await api.http.delete(f"/v1/leases/{served['id']}", headers=api.h())
        assert (await api.get(f"/v1/leases/{newcomer['id']}")).json()["state"] == "ready"  # oldest first
        assert (await api.get(f"/v1/leases/{third['id']}")).json()["queue_position"] == 1
    finally:
        await emu.clear_faults()
        await api.aclose()


async def test_a_freed_slot_is_handed_over_only_while_its_pod_is_ready_and_uncordoned(make_controller, emu):
    server = await make_controller(standby_count=0, max_pods=1, idle_ttl_s=60.0)
    api = Api(server.url)
    try:
        first = (await api.lease("a")).json()
        first = (await api.get(f"/v1/leases/{first['id']}", wait=20)).json()
        waiting = (await api.lease("b")).json()
        assert (await api.post(f"/v1/pods/{first['pod_id']}/cordon", ADMIN)).status_code == 200
        await emu.fault(op="list_pods", kind="internal", count=10_000)
        await api.http.delete(f"/v1/leases/{first['id']}", headers=api.h())
        assert (await api.get(f"/v1/leases/{waiting['id']}")).json()["state"] == "pending"
    finally:
        await emu.clear_faults()
        await api.aclose()


async def test_a_query_parameter_the_route_does_not_take_is_refused(stack):
    """Found by schemathesis: unknown query parameters were ignored, so a typo answered as if it was not there
    (``?wiat=20`` returned a pending lease at once, ``?stat=ready`` the whole list)."""
    server, api, emu = stack
    lease = (await api.lease("s")).json()
    typo = await api.get(f"/v1/leases/{lease['id']}", wiat=20)
    assert typo.status_code == 422 and typo.json()["error"] == {
        "code": "invalid_request", "message": "query.wiat: not a parameter of this route"}
    assert (await api.get("/v1/leases", ADMIN, stat="ready")).status_code == 422
    assert (await api.get("/v1/leases", ADMIN, state="ready", limit=5)).status_code == 200  # declared ones pass
    assert (await api.get(f"/v1/leases/{lease['id']}", wait=0)).status_code == 200
    assert (await api.http.get("/v1/leases", params={"stat": "x"})).status_code == 401  # the token comes first
