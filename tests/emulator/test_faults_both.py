"""Fault rules name an operation and hit it on both APIs; each fault kind answers as RunPod does on each API."""

from __future__ import annotations

import httpx
import pytest
import requests
import runpod
from runpod.error import AuthenticationError, QueryError

from runpod_emulator.clock import FakeClock
from runpod_emulator.messages import (
    INTERNAL_ERROR,
    LOW_BALANCE,
    NO_CUDA_HOST,
    NO_INSTANCES,
    NO_RESOURCES,
    NOT_ENOUGH_FREE_GPUS,
    RATE_LIMITED_BARE,
)

from .conftest import RTX_4090, StartEmulator, admin, graphql, rest

POD = {"name": "harper-f", "image": "img", "gpu": {"id": RTX_4090}, "ports": ["8000/tcp"]}


def arm(server, **rule: object) -> None:
    response = admin(server, "POST", "/faults", json=rule)
    assert response.status_code == 201, response.text


def sdk_create() -> dict:
    return runpod.create_pod("harper-f", "img", RTX_4090, ports="8000/tcp")


def test_one_rule_hits_the_graphql_field_and_the_rest_call_alike(emulator):
    pod = sdk_create()
    arm(emulator, op="stop_pod", kind="internal", count=2)
    with pytest.raises(QueryError, match="Something went wrong"):
        runpod.stop_pod(pod["id"])
    with rest(emulator) as client:
        failed = client.post(f"/v2/pods/{pod['id']}/action", json={"action": "stop"})
        assert (failed.status_code, failed.json()["detail"]) == (500, INTERNAL_ERROR)
        assert client.get(f"/v2/pods/{pod['id']}").json()["status"] == "RUNNING"  # nothing happened
        assert client.post(f"/v2/pods/{pod['id']}/action", json={"action": "stop"}).status_code == 200
    assert admin(emulator, "GET", "/faults").json() == {"faults": []}


@pytest.mark.parametrize("op", ["podResume", "resume_pod", "start"])
def test_graphql_names_ops_and_aliases_are_one_operation(emulator, op):
    pod = sdk_create()
    runpod.stop_pod(pod["id"])
    arm(emulator, op=op, kind="host_gpu_busy", count=2)
    with pytest.raises(QueryError) as caught:
        runpod.resume_pod(pod["id"], 1)
    assert str(caught.value) == NOT_ENOUGH_FREE_GPUS
    with rest(emulator) as client:
        busy = client.post(f"/v2/pods/{pod['id']}/action", json={"action": "start"})
        assert (busy.status_code, busy.json()["detail"]) == (400, NOT_ENOUGH_FREE_GPUS)
        assert client.post(f"/v2/pods/{pod['id']}/action", json={"action": "start"}).status_code == 200
    listed = admin(emulator, "GET", "/faults").json()["faults"]
    assert listed == []


def test_a_rule_can_be_narrowed_to_one_api(emulator):
    arm(emulator, op="catalog", kind="auth", api="rest")
    assert runpod.get_gpus()  # GraphQL untouched
    with rest(emulator) as client:
        refused = client.get("/v2/catalog/gpus")
        assert refused.status_code == 401 and "ratelimit" not in refused.headers
        assert client.get("/v2/catalog/gpus").status_code == 200
    arm(emulator, op="gpu_types", kind="auth", api="graphql")
    with rest(emulator) as client:
        assert client.get("/v2/catalog/gpus/" + RTX_4090).status_code == 200
    with pytest.raises(AuthenticationError):
        runpod.get_gpus()


@pytest.mark.parametrize(
    ("kind", "text", "rest_status"),
    [
        ("out_of_stock", NO_INSTANCES, 400),
        ("no_resources", NO_RESOURCES, 400),
        ("no_cuda_host", NO_CUDA_HOST, 400),
        ("low_balance", LOW_BALANCE, 402),
    ],
)
def test_capacity_and_account_texts_on_both_apis(emulator, kind, text, rest_status):
    arm(emulator, op="create_pod", kind=kind, count=2)
    with pytest.raises(QueryError) as caught:
        sdk_create()
    assert str(caught.value) == text
    with rest(emulator) as client:
        refused = client.post("/v2/pods", json=POD)
        assert refused.status_code == rest_status
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["detail"] == text
        assert client.get("/v2/pods").json() == {"pods": []}


def test_gateway_answers_html_on_both_apis(emulator):
    arm(emulator, op="list_pods", kind="gateway", count=2)
    with pytest.raises(requests.exceptions.JSONDecodeError):
        runpod.get_pods()  # what SDK 1.12.0 raises on a non-JSON body
    with rest(emulator) as client:
        page = client.get("/v2/pods")
    assert page.status_code == 502 and page.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in page.text and "cloudflare" in page.text


def test_gateway_after_the_operation_was_applied(emulator):
    arm(emulator, op="create_pod", kind="gateway", applied=True)
    with rest(emulator) as client:
        assert client.post("/v2/pods", json=POD).status_code == 502
        assert [p["name"] for p in client.get("/v2/pods").json()["pods"]] == ["harper-f"]  # it happened


def test_graphql_429_as_recorded_is_a_bare_message(emulator):
    arm(emulator, op="list_pods", kind="rate_limit_recorded", count=3)
    raw = graphql(emulator, "{ myself { pods { id } } }")
    assert raw.status_code == 429 and raw.headers["retry-after"] == "1"
    assert raw.json() == {"message": RATE_LIMITED_BARE}
    with pytest.raises(KeyError, match="data"):
        runpod.get_pods()  # SDK 1.12.0 looks for data and finds none
    with rest(emulator) as client:
        limited = client.get("/v2/pods")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
        assert limited.json()["status"] == 429


def test_rate_limit_fault_on_rest(emulator):
    arm(emulator, op="*", kind="rate_limit", api="rest")
    with rest(emulator) as client:
        limited = client.get("/v2/billing/pods")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        assert "ratelimit" in limited.headers


def test_internal_applied_on_a_rest_create_still_created_the_pod(emulator):
    arm(emulator, op="create_pod", kind="internal", applied=True)
    with rest(emulator) as client:
        assert client.post("/v2/pods", json=POD).status_code == 500
        assert len(client.get("/v2/pods").json()["pods"]) == 1


def test_timeout_on_rest_applies_then_holds_the_answer(emulator):
    arm(emulator, op="terminate_pod", kind="timeout", delay_s=1.0)
    with rest(emulator) as client:
        pod_id = client.post("/v2/pods", json=POD).json()["id"]
        with pytest.raises(httpx.ReadTimeout):
            client.delete(f"/v2/pods/{pod_id}", timeout=0.3)
        assert client.get(f"/v2/pods/{pod_id}").status_code == 404  # it happened, the client never heard


def test_no_runtime_leaves_pods_starting_forever_on_both_apis(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, boot_seconds=30)
    arm(server, op="create_pod", kind="no_runtime", count=2)
    stuck_sdk = sdk_create()
    with rest(server) as client:
        stuck_rest = client.post("/v2/pods", json=POD).json()
        healthy = client.post("/v2/pods", json=POD).json()
        clock.advance(3600)
        assert client.get(f"/v2/pods/{stuck_rest['id']}").json()["status"] == "PROVISIONING"
        assert client.get(f"/v2/pods/{stuck_sdk['id']}").json()["runtime"] is None
        assert client.get(f"/v2/pods/{healthy['id']}").json()["status"] == "RUNNING"
        sdk_view = runpod.get_pod(stuck_sdk["id"])
        assert sdk_view["desiredStatus"] == "RUNNING" and sdk_view["runtime"] is None

        # A resume can be stuck as well; a later resume of the same pod boots normally.
        arm(server, op="start", kind="no_runtime")
        client.post(f"/v2/pods/{healthy['id']}/action", json={"action": "stop"})
        client.post(f"/v2/pods/{healthy['id']}/action", json={"action": "start"})
        clock.advance(3600)
        assert client.get(f"/v2/pods/{healthy['id']}").json()["status"] == "STARTING"
        client.post(f"/v2/pods/{healthy['id']}/action", json={"action": "stop"})
        client.post(f"/v2/pods/{healthy['id']}/action", json={"action": "start"})
        clock.advance(30)
        assert client.get(f"/v2/pods/{healthy['id']}").json()["status"] == "RUNNING"


def test_no_runtime_waits_for_a_call_that_starts_a_container(emulator):
    arm(emulator, op="*", kind="no_runtime")
    runpod.get_pods()  # not a starting call: the rule stays armed
    assert admin(emulator, "GET", "/faults").json()["faults"][0]["remaining"] == 1
    with rest(emulator) as client:
        pod = client.post("/v2/pods", json=POD).json()
        assert client.get(f"/v2/pods/{pod['id']}").json()["status"] == "PROVISIONING"


@pytest.mark.parametrize(
    ("rule", "complaint"),
    [
        ({"op": "list_pods", "kind": "no_runtime"}, "no_runtime only applies"),
        ({"op": "stop_pod", "kind": "internal", "api": "soap"}, "api"),
        ({"op": "resume", "kind": "internal"}, "op must be"),
    ],
)
def test_bad_rules_are_422(emulator, rule, complaint):
    response = admin(emulator, "POST", "/faults", json=rule)
    assert response.status_code == 422 and complaint in response.text


def test_listed_rules_name_the_operation(emulator):
    arm(emulator, op="podStop", kind="internal", count=3)
    arm(emulator, op="catalog", kind="gateway", api="rest")
    listed = admin(emulator, "GET", "/faults").json()["faults"]
    assert [(f["op"], f["operation"], f["api"]) for f in listed] == [
        ("podStop", "stop_pod", None), ("catalog", "gpu_types", "rest")]
