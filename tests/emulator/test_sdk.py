"""Every pod operation through the real runpod SDK (1.12.0) over HTTP, as the controller will call it."""

from __future__ import annotations

import re

import httpx
import pytest
import runpod
from runpod.error import AuthenticationError, QueryError

from runpod_emulator.fleet import NO_INSTANCES, NOT_ENOUGH_FREE_GPUS

from .conftest import RTX_4090, StartEmulator, admin, admin_pod

POD_FIELDS = {
    "id",
    "containerDiskInGb",
    "costPerHr",
    "desiredStatus",
    "dockerArgs",
    "dockerId",
    "env",
    "gpuCount",
    "imageName",
    "lastStatusChange",
    "machineId",
    "memoryInGb",
    "name",
    "podType",
    "port",
    "ports",
    "uptimeSeconds",
    "vcpuCount",
    "volumeInGb",
    "volumeMountPath",
    "runtime",
    "machine",
}


def create(**kwargs: object) -> dict:
    args = {"name": "harper-1", "image_name": "harper/gpu:1", "gpu_type_id": RTX_4090, "ports": "8000/tcp"}
    return runpod.create_pod(**{**args, **kwargs})


def test_create_returns_runpod_ids_and_env_as_strings(emulator):
    pod = create(env={"GPU_SERVER_SECRET": "s3cret", "A": "1"}, ports="8000/tcp,22/tcp")
    assert set(pod) == {"id", "imageName", "env", "machineId", "machine"}
    assert re.fullmatch(r"[a-z0-9]{14}", pod["id"])
    assert re.fullmatch(r"[a-z0-9]{12}", pod["machineId"])
    assert re.fullmatch(rf"{pod['id']}-[0-9a-f]{{8}}", pod["machine"]["podHostId"])
    assert pod["env"] == ["GPU_SERVER_SECRET=s3cret", "A=1"]
    assert pod["imageName"] == "harper/gpu:1"


def test_ids_are_deterministic_with_a_seed(start_emulator: StartEmulator):
    first = start_emulator(seed=42)
    ids_1 = [create()["id"] for _ in range(3)]
    first.stop_in_thread()
    start_emulator(seed=42)
    assert [create()["id"] for _ in range(3)] == ids_1


def test_get_pod_and_get_pods_have_the_sdk_fields(start_emulator: StartEmulator):
    start_emulator(boot_seconds=30)  # runtime stays null for the whole test
    pod_id = create(cloud_type="COMMUNITY", gpu_count=2, volume_in_gb=20, env={"K": "V"})["id"]
    pod = runpod.get_pod(pod_id)
    assert set(pod) == POD_FIELDS
    assert pod["desiredStatus"] == "RUNNING"
    assert pod["runtime"] is None  # not booted yet
    assert pod["costPerHr"] == pytest.approx(0.68)  # community $0.34 x 2 GPUs
    assert pod["gpuCount"] == 2
    assert pod["uptimeSeconds"] == 0
    assert pod["env"] == ["K=V"]
    assert pod["machine"] == {"gpuDisplayName": "RTX 4090"}
    assert pod["podType"] == "RESERVED"
    assert pod["lastStatusChange"].startswith("Rented by User: ")
    assert (pod["volumeInGb"], pod["containerDiskInGb"], pod["volumeMountPath"]) == (20, 10, "/runpod-volume")
    assert [p["id"] for p in runpod.get_pods()] == [pod_id]


def test_booted_pod_lists_its_ports(emulator):
    pod_id = create(ports="8000/tcp,22/tcp,8888/http")["id"]
    ports = {p["privatePort"]: p for p in runpod.get_pod(pod_id)["runtime"]["ports"]}
    assert set(ports) == {8000, 22, 8888}
    assert ports[8000]["ip"] == "127.0.0.1" and ports[8000]["isIpPublic"] is True
    assert ports[8000]["type"] == "tcp"
    assert ports[8888]["type"] == "http" and ports[8888]["isIpPublic"] is False
    assert len({p["publicPort"] for p in ports.values()}) == 3


def test_stop_resume_terminate_cycle(emulator):
    pod = create()
    stopped = runpod.stop_pod(pod["id"])
    assert stopped == {"id": pod["id"], "desiredStatus": "EXITED"}
    after_stop = runpod.get_pod(pod["id"])
    assert after_stop["runtime"] is None
    assert after_stop["lastStatusChange"].startswith("Exited by user: ")

    resumed = runpod.resume_pod(pod["id"], 1)
    assert resumed["desiredStatus"] == "RUNNING"
    assert resumed["machineId"] == pod["machineId"]  # a resume stays on its machine
    assert resumed["machine"]["podHostId"] == pod["machine"]["podHostId"]

    assert runpod.terminate_pod(pod["id"]) is None
    assert runpod.get_pod(pod["id"]) is None
    assert runpod.get_pods() == []
    assert admin_pod(emulator, pod["id"])["state"] == "TERMINATED"


def test_unknown_pod_is_null_and_cannot_be_stopped(emulator):
    assert runpod.get_pod("doesnotexist00") is None
    with pytest.raises(QueryError, match="not found"):
        runpod.stop_pod("doesnotexist00")


def test_gpu_catalogue(emulator):
    gpus = {g["id"]: g for g in runpod.get_gpus()}
    assert {
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 3090",
        "NVIDIA A40",
        "NVIDIA L4",
        "NVIDIA RTX A6000",
        "NVIDIA A100 80GB PCIe",
        "NVIDIA H100 80GB HBM3",
    } <= set(gpus)
    assert set(gpus[RTX_4090]) == {"id", "displayName", "memoryInGb"}
    gpu = runpod.get_gpu(RTX_4090)
    assert (gpu["securePrice"], gpu["communityPrice"]) == (0.69, 0.34)
    assert gpu["lowestPrice"]["uninterruptablePrice"] == 0.34
    assert gpu["displayName"] == "RTX 4090" and gpu["memoryInGb"] == 24
    with pytest.raises(ValueError, match="No GPU found"):
        runpod.get_gpu("NVIDIA GeForce GTX 9999")


def test_resume_on_a_machine_taken_by_other_tenants(emulator):
    pod = create()
    runpod.stop_pod(pod["id"])
    admin(emulator, "POST", f"/machines/{pod['machineId']}/fill").raise_for_status()
    with pytest.raises(QueryError) as caught:
        runpod.resume_pod(pod["id"], 1)
    assert str(caught.value) == NOT_ENOUGH_FREE_GPUS
    assert runpod.get_pod(pod["id"])["desiredStatus"] == "EXITED"

    admin(emulator, "POST", f"/machines/{pod['machineId']}/free").raise_for_status()
    assert runpod.resume_pod(pod["id"], 1)["desiredStatus"] == "RUNNING"


def test_create_with_empty_stock(start_emulator: StartEmulator):
    start_emulator(machines_per_type=1, gpus_per_machine=1)
    create()
    with pytest.raises(QueryError) as caught:
        create()
    assert str(caught.value) == NO_INSTANCES
    assert len(runpod.get_pods()) == 1


def test_community_cloud_without_community_offer_is_out_of_stock(emulator):
    with pytest.raises(QueryError) as caught:
        create(gpu_type_id="NVIDIA L4", cloud_type="COMMUNITY")
    assert str(caught.value) == NO_INSTANCES


def test_wrong_key_is_an_authentication_error(start_emulator: StartEmulator, monkeypatch):
    server = start_emulator(api_key="the-right-key")
    monkeypatch.setattr(runpod, "api_key", "a-wrong-key")
    with pytest.raises(AuthenticationError):
        runpod.get_pods()
    assert runpod.get_pods(api_key="the-right-key") == []
    url = f"{server.url}/graphql"
    query = {"query": "{ myself { id } }"}
    assert httpx.post(url, params={"api_key": "the-right-key"}, json=query).status_code == 200
    assert httpx.post(url, params={"api_key": "a-wrong-key"}, json=query).status_code == 401
    assert httpx.post(url, json=query).status_code == 401
    assert httpx.get(f"{server.url}/_admin/pods").status_code == 401
    assert httpx.get(f"{server.url}/_admin/pods", params={"api_key": "the-right-key"}).status_code == 200


def test_without_a_configured_key_any_key_but_none_is_accepted(emulator):
    query = {"query": "{ myself { id } }"}
    assert httpx.post(f"{emulator.url}/graphql", params={"api_key": "whatever"}, json=query).status_code == 200
    assert httpx.post(f"{emulator.url}/graphql", json=query).status_code == 401
    assert httpx.get(f"{emulator.url}/_admin/pods").status_code == 200  # admin is open without a key


def test_get_user_for_network_volume_lookups(emulator):
    user = runpod.get_user()
    assert user["id"].startswith("user_") and user["networkVolumes"] == [] and user["pubKey"] == ""
