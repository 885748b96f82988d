"""The GraphQL wire protocol for clients other than the SDK: $variables, validation errors, selections."""

from __future__ import annotations

import httpx

from runpod_emulator.fleet import NOT_ENOUGH_FREE_GPUS

from .conftest import RTX_4090, admin, graphql

CREATE = """
mutation createPod($input: PodFindAndDeployOnDemandInput!) {
  podFindAndDeployOnDemand(input: $input) { id desiredStatus machineId costPerHr }
}"""
GET = "query getPod($input: PodFilter!) { pod(input: $input) { id desiredStatus runtime { ports { privatePort publicPort type isIpPublic ip } } } }"
RESUME = "mutation resume($input: PodResumeInput!) { podResume(input: $input) { id desiredStatus } }"
STOP = "mutation stop($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }"
TERMINATE = "mutation terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"


def create_input(**overrides: object) -> dict:
    data = {
        "name": "harper-7",
        "imageName": "harper/gpu:1",
        "gpuTypeId": RTX_4090,
        "cloudType": "SECURE",
        "gpuCount": 1,
        "ports": "8000/tcp",
        "env": [{"key": "A", "value": "a=b c"}],
    }
    return {"input": {**data, **overrides}}


def test_full_cycle_with_variables(emulator):
    created = graphql(emulator, CREATE, create_input())
    assert created.status_code == 200
    pod = created.json()["data"]["podFindAndDeployOnDemand"]
    assert set(pod) == {"id", "desiredStatus", "machineId", "costPerHr"}  # only what was selected
    assert pod["desiredStatus"] == "RUNNING" and pod["costPerHr"] == 0.69

    got = graphql(emulator, GET, {"input": {"podId": pod["id"]}}).json()["data"]["pod"]
    assert got["runtime"]["ports"][0]["privatePort"] == 8000
    stopped = graphql(emulator, STOP, {"input": {"podId": pod["id"]}}).json()
    assert stopped == {"data": {"podStop": {"id": pod["id"], "desiredStatus": "EXITED"}}}
    resumed = graphql(emulator, RESUME, {"input": {"podId": pod["id"], "gpuCount": 1}}).json()
    assert resumed["data"]["podResume"]["desiredStatus"] == "RUNNING"
    assert graphql(emulator, TERMINATE, {"input": {"podId": pod["id"]}}).json() == {"data": {"podTerminate": None}}
    assert graphql(emulator, GET, {"input": {"podId": pod["id"]}}).json() == {"data": {"pod": None}}


def test_env_values_with_quotes_survive_variables(emulator):
    env = [{"key": "GREETING", "value": 'say "hi", then =go'}]
    pod_id = graphql(emulator, CREATE, create_input(env=env)).json()["data"]["podFindAndDeployOnDemand"]["id"]
    got = graphql(emulator, "query($id: String!) { pod(input: {podId: $id}) { env } }", {"id": pod_id}).json()
    assert got["data"]["pod"]["env"] == ['GREETING=say "hi", then =go']


def test_unknown_input_field_is_a_400_in_runpods_words(emulator):
    expected = 'Field "allowedCudaVersions" is not defined by type "PodResumeInput".'
    inline = graphql(emulator, 'mutation { podResume(input: {podId: "x", allowedCudaVersions: ["12.4"]}) { id } }')
    assert inline.status_code == 400
    assert inline.json()["errors"][0]["message"] == expected
    variables = graphql(emulator, RESUME, {"input": {"podId": "x", "allowedCudaVersions": ["12.4"]}})
    assert variables.status_code == 400
    assert variables.json()["errors"][0]["message"] == expected


def test_unknown_selection_is_a_400(emulator):
    response = graphql(emulator, "{ myself { id creditBalance } }")
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == 'Cannot query field "creditBalance" on type "User".'


def test_wrong_variable_type_and_syntax_errors_are_400(emulator):
    assert graphql(emulator, STOP, {"input": {"podId": 12, "bogus": True}}).status_code == 400
    assert graphql(emulator, "mutation { podStop(input: {podId: ").status_code == 400
    assert (
        httpx.post(f"{emulator.url}/graphql", content=b"not json", headers={"Authorization": "Bearer k"}).status_code
        == 400
    )


def test_business_error_shape(emulator):
    pod = graphql(emulator, CREATE, create_input()).json()["data"]["podFindAndDeployOnDemand"]
    graphql(emulator, STOP, {"input": {"podId": pod["id"]}})
    admin(emulator, "POST", f"/machines/{pod['machineId']}/fill")
    response = graphql(emulator, RESUME, {"input": {"podId": pod["id"], "gpuCount": 1}})
    assert response.status_code == 200
    assert response.json() == {
        "errors": [{"message": NOT_ENOUGH_FREE_GPUS, "path": ["podResume"], "extensions": {"code": "RUNPOD"}}],
        "data": {"podResume": None},
    }


def test_http_only_ports_are_internal_but_served_on_loopback(emulator):
    pod_id = graphql(emulator, CREATE, create_input(ports="8000/http")).json()["data"]["podFindAndDeployOnDemand"]["id"]
    ports = graphql(emulator, GET, {"input": {"podId": pod_id}}).json()["data"]["pod"]["runtime"]["ports"]
    assert len(ports) == 1
    assert ports[0]["type"] == "http" and ports[0]["isIpPublic"] is False
    health = httpx.get(f"http://{ports[0]['ip']}:{ports[0]['publicPort']}/health")
    assert health.status_code == 200


def test_gpu_types_by_ids_with_stock(emulator):
    query = """query($ids: [String]) { gpuTypes(input: {ids: $ids}) {
        id lowestPrice(input: {gpuCount: 1, secureCloud: true}) { uninterruptablePrice stockStatus } } }"""
    data = graphql(emulator, query, {"ids": ["NVIDIA A40", "NVIDIA L4"]}).json()["data"]["gpuTypes"]
    assert data == [
        {"id": "NVIDIA L4", "lowestPrice": {"uninterruptablePrice": 0.43, "stockStatus": "High"}},
        {"id": "NVIDIA A40", "lowestPrice": {"uninterruptablePrice": 0.44, "stockStatus": "High"}},
    ]


def test_myself_with_pub_key_and_network_volumes(emulator):
    graphql(emulator, CREATE, create_input())
    data = graphql(emulator, "{ myself { id pubKey networkVolumes { id } pods { id name } } }").json()["data"]
    assert data["myself"]["networkVolumes"] == [] and data["myself"]["pods"][0]["name"] == "harper-7"
