"""Fault injection: each kind answers the way RunPod fails, through the SDK where it can see it."""

from __future__ import annotations

import httpx
import pytest
import runpod
from runpod.error import AuthenticationError, QueryError

from runpod_emulator.fleet import NO_INSTANCES, NOT_ENOUGH_FREE_GPUS
from runpod_emulator.graphql_api import INTERNAL_ERROR

from .conftest import RTX_4090, StartEmulator, admin, graphql

RATE_LIMIT_BODY = {
    "errors": [
        {
            "message": "Too Many Requests: rate limit exceeded, retry after 1 seconds",
            "extensions": {"code": "RATE_LIMITED"},
        }
    ]
}
CREATE = (
    'mutation { podFindAndDeployOnDemand(input: {name: "f", imageName: "img", '
    'gpuTypeId: "NVIDIA GeForce RTX 4090", ports: "8000/tcp"}) { id } }'
)


def arm(server, **rule: object) -> httpx.Response:
    response = admin(server, "POST", "/faults", json=rule)
    assert response.status_code == 201, response.text
    return response


def create() -> dict:
    return runpod.create_pod("f", "img", RTX_4090, ports="8000/tcp")


def test_host_gpu_busy_on_resume(emulator):
    pod = create()
    runpod.stop_pod(pod["id"])
    arm(emulator, op="podResume", kind="host_gpu_busy")
    with pytest.raises(QueryError) as caught:
        runpod.resume_pod(pod["id"], 1)
    assert str(caught.value) == NOT_ENOUGH_FREE_GPUS
    assert runpod.get_pod(pod["id"])["desiredStatus"] == "EXITED"
    assert runpod.resume_pod(pod["id"], 1)["desiredStatus"] == "RUNNING"  # count defaults to one call


def test_out_of_stock_on_create(emulator):
    arm(emulator, op="podFindAndDeployOnDemand", kind="out_of_stock", count=2)
    for _ in range(2):
        with pytest.raises(QueryError) as caught:
            create()
        assert str(caught.value) == NO_INSTANCES
    assert runpod.get_pods() == []
    create()


def test_internal_error_without_and_with_the_operation_applied(emulator):
    arm(emulator, op="podFindAndDeployOnDemand", kind="internal")
    response = graphql(emulator, CREATE)
    assert response.status_code == 500
    assert response.json() == {
        "errors": [
            {
                "message": INTERNAL_ERROR,
                "path": ["podFindAndDeployOnDemand"],
                "extensions": {"code": "INTERNAL_SERVER_ERROR"},
            }
        ],
        "data": {"podFindAndDeployOnDemand": None},
    }
    assert runpod.get_pods() == []

    arm(emulator, op="podFindAndDeployOnDemand", kind="internal", applied=True)
    with pytest.raises(QueryError, match="Something went wrong"):
        create()
    assert len(runpod.get_pods()) == 1  # "create can succeed while reporting an error"


def test_internal_on_resume_can_still_start_the_pod(emulator):
    pod = create()
    runpod.stop_pod(pod["id"])
    arm(emulator, op="podResume", kind="internal", applied=True)
    with pytest.raises(QueryError, match="Something went wrong"):
        runpod.resume_pod(pod["id"], 1)
    assert runpod.get_pod(pod["id"])["desiredStatus"] == "RUNNING"


def test_rate_limit(emulator):
    arm(emulator, op="*", kind="rate_limit")
    response = graphql(emulator, "{ myself { id } }")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json() == RATE_LIMIT_BODY
    arm(emulator, op="myself", kind="rate_limit")
    with pytest.raises(QueryError, match="Too Many Requests"):
        runpod.get_pods()


def test_timeout_applies_the_operation_then_holds_the_answer(emulator):
    arm(emulator, op="podFindAndDeployOnDemand", kind="timeout", delay_s=1.0)
    with pytest.raises(httpx.ReadTimeout):
        graphql(emulator, CREATE, timeout=0.3)
    assert len(runpod.get_pods()) == 1  # it happened, but the client never heard


def test_auth_fault(emulator):
    arm(emulator, op="gpuTypes", kind="auth")
    with pytest.raises(AuthenticationError):
        runpod.get_gpus()
    assert runpod.get_gpus()


def test_rate_is_seeded_and_partial(start_emulator: StartEmulator):
    def hits() -> list[bool]:
        with httpx.Client(base_url=server.url, params={"api_key": "k"}) as client:
            return [client.post("/graphql", json={"query": "{ myself { id } }"}).status_code == 429 for _ in range(40)]

    server = start_emulator(seed=3)
    arm(server, op="myself", kind="rate_limit", rate=0.5)
    first = hits()
    assert 0 < sum(first) < 40
    server.stop_in_thread()
    server = start_emulator(seed=3)
    arm(server, op="myself", kind="rate_limit", rate=0.5)
    assert hits() == first


def test_faults_can_be_listed_and_cleared(emulator):
    arm(emulator, op="podStop", kind="internal", count=3)
    listed = admin(emulator, "GET", "/faults").json()["faults"]
    assert [(f["op"], f["kind"], f["remaining"]) for f in listed] == [("podStop", "internal", 3)]
    assert admin(emulator, "DELETE", "/faults").json() == {"faults": []}
    pod = create()
    assert runpod.stop_pod(pod["id"])["desiredStatus"] == "EXITED"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"op": "podStop", "kind": "meteor"}, "kind"),
        ({"op": "podRestart", "kind": "internal"}, "op must be"),
        ({"op": "podStop", "kind": "internal", "count": 0}, "count"),
        ({"op": "podStop", "kind": "internal", "rate": 1.5}, "rate"),
        ({"op": "podStop", "kind": "internal", "delay_s": 3}, "delay_s only applies"),
        ({"op": "podStop", "kind": "auth", "applied": True}, "applied only applies"),
        ({"op": "podStop", "kind": "auth", "colour": "red"}, "colour"),
        ({"kind": "auth"}, "op"),
    ],
)
def test_bad_fault_bodies_are_422(emulator, body, complaint):
    response = admin(emulator, "POST", "/faults", json=body)
    assert response.status_code == 422
    assert complaint in response.text
