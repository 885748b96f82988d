"""The emulator against RunPod's published REST v2 contract (the vendored OpenAPI document).

Every REST answer in the emulator tests is checked by ``contract.ContractChecker`` as it arrives; here the
checker is shown to bite, every documented operation is driven through its answers, and the emulator's own
request validation is held to the schema: it refuses (422) exactly the bodies the schema refuses.
"""

from __future__ import annotations

import json

import httpx
import pytest

from runpod_emulator.clock import FakeClock

from .conftest import RTX_4090, StartEmulator, admin, rest
from .contract import SPEC_PATH, ContractChecker, component, operation_for, spec

POD = {"name": "harper-c", "image": "img", "gpu": {"id": RTX_4090}, "ports": ["8000/tcp", "22/tcp"]}


def test_the_vendored_document_is_runpods_v2_contract():
    document = json.loads(SPEC_PATH.read_text())
    assert document["openapi"].startswith("3.1") and document["info"]["version"] == "2.0.0"
    assert set(document["paths"]) == {
        "/v2/pods", "/v2/pods/{id}", "/v2/pods/{id}/logs", "/v2/pods/{id}/action", "/v2/catalog/gpus",
        "/v2/catalog/gpus/{id}", "/v2/billing/pods"}


def test_every_documented_operation_answers_within_the_contract(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, boot_seconds=5, rate_limit="1000/minute,100000/hour,1000000/day")
    checker = ContractChecker()
    with rest(server, checker=checker) as client:
        pod = client.post("/v2/pods", json={**POD, "mounts": {"persistent": {"size": 20, "path": "/w"}},
                                            "env": {"A": "1"}}).json()
        url = f"/v2/pods/{pod['id']}"
        client.get("/v2/pods")
        client.get(url)  # PROVISIONING
        client.post(f"{url}/action", json={"action": "start"})  # 409
        clock.advance(5)
        client.get(url)  # RUNNING with runtime ports and ssh.direct
        client.patch(url, json={"name": "renamed", "locked": False})
        client.patch(url, json={"unknown": True})  # 422
        client.post(f"{url}/action", json={"action": "restart"})
        client.post(f"{url}/action", json={"action": "stop"})
        client.post(f"{url}/action", json={"action": "stop"})  # 409
        client.post(f"{url}/action", json={"action": "start"})
        admin(server, "POST", f"/pods/{pod['id']}/crash", json={"log": "boom"})
        client.get(url)  # ERROR
        with client.stream("GET", f"{url}/logs", params={"tail": 1}) as stream:
            event = next(line for line in stream.iter_lines() if line.startswith("data: "))
        payload = json.loads(event.removeprefix("data: "))
        assert set(payload) == {"ts", "source", "line"} and payload["source"] in ("container", "system")
        client.get("/v2/catalog/gpus")
        client.get("/v2/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD"})
        client.get(f"/v2/catalog/gpus/{RTX_4090}", params={"include": "AVAILABILITY", "product": "POD"})
        client.get("/v2/catalog/gpus/no-such-gpu")  # 404
        client.get("/v2/catalog/gpus", params={"include": "AVAILABILITY"})  # 400
        client.post("/v2/pods", json={**POD, "bogus": 1})  # 422
        other = client.post("/v2/pods", json={**POD, "gpu": {"id": "NVIDIA A40", "count": 9}})  # 400 capacity
        assert other.status_code == 400
        clock.advance(4000)
        client.get("/v2/billing/pods", params={"bucketSize": "hour", "lastN": 3})
        client.get("/v2/billing/pods", params={"podId": pod["id"]})
        client.get("/v2/billing/pods", params={"bucketSize": "fortnight"})  # 422
        client.delete(url)
        client.delete(url)  # 404
        client.get(url)  # 404
        admin(server, "POST", "/faults", json={"op": "*", "kind": "rate_limit", "api": "rest"})
        client.get("/v2/pods")  # 429
        admin(server, "POST", "/faults", json={"op": "create_pod", "kind": "low_balance"})
        client.post("/v2/pods", json=POD)  # 402
        admin(server, "POST", "/faults", json={"op": "list_pods", "kind": "internal"})
        client.get("/v2/pods")  # 500
        second = client.post("/v2/pods", json=POD).json()
        client.post(f"/v2/pods/{second['id']}/action", json={"action": "terminate"})  # 204
    with rest(server, key=None, checker=checker) as anonymous:
        anonymous.get("/v2/pods")  # 401

    expected = {
        ("GET", "/v2/pods", s) for s in (200, 401, 429, 500)
    } | {("POST", "/v2/pods", s) for s in (201, 400, 402, 422)} | {
        ("GET", "/v2/pods/{id}", s) for s in (200, 404)
    } | {("PATCH", "/v2/pods/{id}", s) for s in (200, 422)} | {("DELETE", "/v2/pods/{id}", s) for s in (204, 404)} | {
        ("POST", "/v2/pods/{id}/action", s) for s in (200, 204, 409)
    } | {("GET", "/v2/pods/{id}/logs", 200)} | {("GET", "/v2/catalog/gpus", s) for s in (200, 400)} | {
        ("GET", "/v2/catalog/gpus/{id}", s) for s in (200, 404)
    } | {("GET", "/v2/billing/pods", s) for s in (200, 422)}
    assert expected <= checker.seen, sorted(expected - checker.seen)


def _answer(method: str, path: str, status: int, body: object, headers: dict | None = None) -> httpx.Response:
    request = httpx.Request(method, f"http://emulator{path}")
    content = json.dumps(body).encode()
    all_headers = {"content-type": "application/json", "RateLimit": '"minute";r=1;t=1',
                   "RateLimit-Policy": '"minute";q=60;w=60', **(headers or {})}
    return httpx.Response(status, content=content, headers=all_headers, request=request)


def test_the_checker_refuses_answers_that_break_the_contract(emulator):
    with rest(emulator) as client:
        good = client.post("/v2/pods", json=POD).json()
    checker = ContractChecker()
    checker(_answer("GET", f"/v2/pods/{good['id']}", 200, good))  # the real thing passes

    broken = {k: v for k, v in good.items() if k != "actions"}
    with pytest.raises(AssertionError, match="actions"):
        checker(_answer("GET", "/v2/pods/abc", 200, broken))
    with pytest.raises(AssertionError, match="status"):
        checker(_answer("GET", "/v2/pods/abc", 200, {**good, "status": "STOPPED"}))
    with pytest.raises(AssertionError, match="breaks the contract"):
        checker(_answer("GET", "/v2/pods", 200, [good]))  # v1's bare array, not {"pods": [...]}
    with pytest.raises(AssertionError, match="createdAt"):
        checker(_answer("GET", "/v2/pods/abc", 200, {**good, "createdAt": "yesterday"}))
    with pytest.raises(AssertionError, match="detail"):
        checker(_answer("GET", "/v2/pods/abc", 404, {"title": "Not Found", "status": 404},
                        {"content-type": "application/problem+json"}))
    with pytest.raises(AssertionError, match="not in"):
        checker(_answer("GET", "/v2/pods/abc", 404, {"title": "Not Found", "status": 404, "detail": "x"}))
    with pytest.raises(AssertionError, match="RateLimit"):
        checker(_answer("GET", "/v2/pods/abc", 200, good, {"RateLimit": ""}))
    with pytest.raises(AssertionError, match="Retry-After"):
        checker(_answer("GET", "/v2/pods", 429, {"title": "Too Many Requests", "status": 429, "detail": "x"},
                        {"content-type": "application/problem+json"}))
    with pytest.raises(AssertionError, match="not an operation"):
        operation_for("POST", "/v2/pods/abc/start")  # REST v1's shape


def test_request_bodies_the_emulator_refuses_are_those_the_schema_refuses(emulator):
    create = component("CreatePodRequest")
    update = component("UpdatePodRequest")
    action = component("PodActionRequest")
    creates = [
        POD,
        {**POD, "bogus": 1},
        {**POD, "gpu": {"id": RTX_4090, "count": 0}},
        {**POD, "gpu": {"id": RTX_4090, "nvlink": True}},
        {**POD, "gpu": {"id": RTX_4090, "allowedCudaVersions": ["12.8"]}},
        {**POD, "gpu": {"id": RTX_4090, "minCudaVersion": "12"}},
        {**POD, "cloud": "ALL"},
        {**POD, "ports": "8000/tcp"},
        {**POD, "env": {"A": 1}},
        {**POD, "env": {"A": "1"}, "registry": None, "args": "--x", "disk": 20, "startSsh": True},
        {**POD, "mounts": {"persistent": {"size": 5, "path": "/w"}}},
        {**POD, "mounts": {"persistent": {"size": 10}}},
        {**POD, "mounts": {"ephemeral": {}}},
        {**POD, "dataCenterIds": "EMU-1"},
        {**POD, "name": ""},
        {k: v for k, v in POD.items() if k != "image"},
        {k: v for k, v in POD.items() if k != "name"},
    ]
    updates = [{"name": "x"}, {"name": ""}, {"locked": "yes"}, {"interruptible": True}, {"env": {"A": "b"}},
               {"mounts": {"persistent": {"size": 20, "path": "/w"}}}, {}]
    actions = [{"action": "stop"}, {"action": "pause"}, {}, {"action": "stop", "now": True}]
    with rest(emulator) as client:
        target = client.post("/v2/pods", json={**POD, "mounts": {"persistent": {"size": 10, "path": "/w"}}}).json()
        for body in creates:
            refused = client.post("/v2/pods", json=body).status_code == 422
            assert refused == (not create.is_valid(body)), body
        for body in updates:
            refused = client.patch(f"/v2/pods/{target['id']}", json=body).status_code == 422
            assert refused == (not update.is_valid(body)), body
        for body in actions:
            refused = client.post(f"/v2/pods/{target['id']}/action", json=body).status_code == 422
            assert refused == (not action.is_valid(body)), body
    assert spec()["components"]["schemas"]["CreatePodRequest"]["unevaluatedProperties"] is False
