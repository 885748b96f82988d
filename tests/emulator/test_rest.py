"""REST v2 over real HTTP: pods, the action table, errors as problem documents, PATCH, catalog stock, billing.

Every answer goes through ``rest()``, which checks it against RunPod's published OpenAPI document.
"""

from __future__ import annotations

import pytest

from runpod_emulator.clock import FakeClock
from runpod_emulator.messages import NO_CUDA_HOST, NO_INSTANCES, NOT_ENOUGH_FREE_GPUS

from .conftest import API_KEY, RTX_4090, StartEmulator, admin, rest

L4 = "NVIDIA L4"


def body(**overrides: object) -> dict:
    return {"name": "harper-r1", "image": "harper/gpu:1", "gpu": {"id": RTX_4090, "count": 1}, "ports": ["8000/tcp"],
            **overrides}


def test_create_boot_get_and_list(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, boot_seconds=60)
    with rest(server) as client:
        created = client.post("/v2/pods", json=body(env={"GPU_SERVER_SECRET": "s"}, ports=["8000/tcp", "22/tcp"],
                                                    mounts={"persistent": {"size": 20, "path": "/workspace"}},
                                                    disk=10, cloud="COMMUNITY"))
        assert created.status_code == 201
        pod = created.json()
        assert (pod["status"], pod["actions"], pod["runtime"], pod["startedAt"]) == (
            "PROVISIONING", ["stop", "terminate"], None, None)
        assert pod["env"] == {"GPU_SERVER_SECRET": "s"} and pod["ports"] == ["8000/tcp", "22/tcp"]
        assert pod["gpu"] == {"id": RTX_4090, "count": 1} and pod["cloud"] == "COMMUNITY"
        assert pod["cost"] == 0.34 and pod["disk"] == 10
        assert pod["mounts"] == {"persistent": {"size": 20, "path": "/workspace"}}
        assert pod["ssh"]["proxy"]["username"].startswith(pod["id"] + "-") and pod["ssh"]["direct"] is None

        clock.advance(60)
        running = client.get(f"/v2/pods/{pod['id']}").json()
        assert running["status"] == "RUNNING" and running["actions"] == ["stop", "restart", "terminate"]
        ports = {p["private"]: p for p in running["runtime"]["ports"]}
        assert set(ports) == {8000, 22} and ports[8000]["type"] == "tcp" and ports[8000]["ip"] == "127.0.0.1"
        assert running["ssh"]["direct"]["port"] == ports[22]["public"]
        assert running["startedAt"] is not None

        listed = client.get("/v2/pods").json()["pods"]
        assert [p["id"] for p in listed] == [pod["id"]]


def test_actions_follow_the_published_table(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, boot_seconds=30, resume_boot_seconds=5)
    with rest(server) as client:
        pod_id = client.post("/v2/pods", json=body()).json()["id"]

        def act(action: str, expect: int = 200):
            response = client.post(f"/v2/pods/{pod_id}/action", json={"action": action})
            assert response.status_code == expect, response.text
            return response

        refused = act("start", 409)  # PROVISIONING allows only stop and terminate
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["status"] == 409 and "PROVISIONING" in refused.json()["detail"]
        act("restart", 409)
        clock.advance(30)
        assert act("restart").json()["status"] == "STARTING"  # a restart: not PROVISIONING again
        clock.advance(5)
        stopped = act("stop").json()
        assert (stopped["status"], stopped["actions"], stopped["cost"], stopped["runtime"]) == (
            "EXITED", ["start", "terminate"], 0.0, None)
        act("stop", 409)
        started = act("start").json()
        assert started["status"] == "STARTING" and started["cost"] == 0.69
        clock.advance(5)
        assert client.get(f"/v2/pods/{pod_id}").json()["status"] == "RUNNING"
        assert act("terminate", 204).content == b""
        assert client.get(f"/v2/pods/{pod_id}").status_code == 404
        assert client.post(f"/v2/pods/{pod_id}/action", json={"action": "start"}).status_code == 404
        assert client.get("/v2/pods").json() == {"pods": []}


def test_delete_is_204_then_404(emulator):
    with rest(emulator) as client:
        pod_id = client.post("/v2/pods", json=body()).json()["id"]
        assert client.delete(f"/v2/pods/{pod_id}").status_code == 204
        missing = client.delete(f"/v2/pods/{pod_id}")
        assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    assert admin(emulator, "GET", "/pods").json()[0]["state"] == "TERMINATED"


@pytest.mark.parametrize(
    ("sent", "errors"),
    [
        (body(bogus=1), ["$: additional properties 'bogus' not allowed"]),
        (body(gpu={"id": RTX_4090, "colour": "red"}), ["$.gpu: additional properties 'colour' not allowed"]),
        ({"image": "i", "gpu": {"id": RTX_4090}}, ["$: missing properties: 'name'"]),
        ({"name": "n", "gpu": {"id": RTX_4090}}, ["$: missing properties: 'image'"]),
        (body(name=5), ["$.name: expected string, but got integer"]),
        (body(gpu={"id": RTX_4090, "count": 0}), ["$.gpu.count: must be >= 1 but found 0"]),
        (body(cloud="ALL"), ["$.cloud: value must be one of 'SECURE', 'COMMUNITY'"]),
        (body(env={"A": 1}), ["$.env.A: expected string, but got integer"]),
        (body(mounts={"persistent": {"size": 5, "path": "/w"}}), ["$.mounts.persistent.size: must be >= 10 but found 5"]),
        (body(a=1, b=2), ["$: additional properties 'a', 'b' not allowed"]),
    ],
)
def test_bodies_off_the_schema_are_422_naming_the_field(emulator, sent, errors):
    with rest(emulator) as client:
        response = client.post("/v2/pods", json=sent)
        assert response.status_code == 422
        assert response.json()["errors"] == errors
        assert client.get("/v2/pods").json() == {"pods": []}  # nothing was created


def test_bad_action_bodies(emulator):
    with rest(emulator) as client:
        pod_id = client.post("/v2/pods", json=body()).json()["id"]
        assert client.post(f"/v2/pods/{pod_id}/action", json={"action": "explode"}).json()["errors"] == [
            "$.action: value must be one of 'start', 'stop', 'restart', 'terminate'"]
        assert client.post(f"/v2/pods/{pod_id}/action", json={"action": "stop", "force": True}).status_code == 422
        assert client.post(f"/v2/pods/{pod_id}/action", content=b"{not json").status_code == 400
        assert client.get(f"/v2/pods/{pod_id}").json()["status"] == "RUNNING"  # none of them did anything


def test_auth_uses_the_graphql_key_and_401_has_no_rate_headers(start_emulator: StartEmulator):
    server = start_emulator(api_key="the-key")
    with rest(server, key="the-key") as client:
        assert client.get("/v2/pods").status_code == 200
    for key in (None, "wrong"):
        with rest(server, key=key) as client:
            refused = client.get("/v2/pods")
            assert refused.status_code == 401 and refused.json()["title"] == "Unauthorized"
            assert "ratelimit" not in refused.headers and "the-key" not in refused.text
    with rest(server, key=None) as client:  # REST takes the key as a Bearer header only
        assert client.get("/v2/pods", params={"api_key": "the-key"}).status_code == 401


def test_capacity_failures_are_400_with_runpods_sentences(start_emulator: StartEmulator):
    server = start_emulator(machines_per_type=1, gpus_per_machine=2)
    with rest(server) as client:
        first = client.post("/v2/pods", json=body()).json()
        client.post(f"/v2/pods/{first['id']}/action", json={"action": "stop"})
        machine = next(m for m in admin(server, "GET", "/machines").json() if m["gpu_type_id"] == RTX_4090)
        admin(server, "POST", f"/machines/{machine['id']}/fill").raise_for_status()

        no_stock = client.post("/v2/pods", json=body(name="second"))
        assert (no_stock.status_code, no_stock.json()["detail"]) == (400, NO_INSTANCES)
        busy = client.post(f"/v2/pods/{first['id']}/action", json={"action": "start"})
        assert (busy.status_code, busy.json()["detail"]) == (400, NOT_ENOUGH_FREE_GPUS)
        assert client.get(f"/v2/pods/{first['id']}").json()["status"] == "EXITED"

        cuda = client.post("/v2/pods", json=body(gpu={"id": L4, "allowedCudaVersions": ["11.8"]}))
        assert (cuda.status_code, cuda.json()["detail"]) == (400, NO_CUDA_HOST)
        assert client.post("/v2/pods", json=body(gpu={"id": L4, "minCudaVersion": "12.9"})).json()["detail"] == (
            NO_CUDA_HOST)
        assert client.post("/v2/pods", json=body(gpu={"id": L4, "minCudaVersion": "12.2"})).status_code == 201
        community = client.post("/v2/pods", json=body(gpu={"id": L4}, cloud="COMMUNITY"))
        assert (community.status_code, community.json()["detail"]) == (400, NO_INSTANCES)  # L4 is secure-only
        elsewhere = client.post("/v2/pods", json=body(gpu={"id": L4}, dataCenterIds=["US-KS-2"]))
        assert elsewhere.status_code == 400
        unknown_gpu = client.post("/v2/pods", json=body(gpu={"id": "NVIDIA GeForce GTX 9999"}))
        assert unknown_gpu.status_code == 400


def test_rules_the_schema_cannot_say_are_400_or_404(emulator):
    with rest(emulator) as client:
        assert client.post("/v2/pods", json={**body(), "cpu": {"id": "cpu3c", "vcpuCount": 2}}).status_code == 400
        assert client.post("/v2/pods", json={"name": "n", "image": "i"}).status_code == 400  # neither gpu nor cpu
        both = body(mounts={"persistent": {"size": 10, "path": "/w"}, "network": [{"volumeId": "v", "path": "/n"}]})
        assert client.post("/v2/pods", json=both).status_code == 400
        assert client.post("/v2/pods", json=body(templateId="tpl")).status_code == 404
        cuda_both = body(gpu={"id": RTX_4090, "allowedCudaVersions": ["12.8"], "minCudaVersion": "12.0"})
        assert client.post("/v2/pods", json=cuda_both).status_code == 400
        assert client.post("/v2/pods", json=body(ports=["8000/udp"])).status_code == 400
        assert client.get("/v2/pods").json() == {"pods": []}


def test_patch_renames_in_place_and_restarts_a_running_container_on_new_settings(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, boot_seconds=10, resume_boot_seconds=2)
    with rest(server) as client:
        pod = client.post("/v2/pods", json=body(mounts={"persistent": {"size": 20, "path": "/workspace"}})).json()
        clock.advance(10)
        url = f"/v2/pods/{pod['id']}"
        renamed = client.patch(url, json={"name": "harper-renamed", "locked": True})
        assert renamed.status_code == 200
        assert (renamed.json()["name"], renamed.json()["locked"], renamed.json()["status"]) == (
            "harper-renamed", True, "RUNNING")
        changed = client.patch(url, json={"env": {"NEW": "1"}, "ports": ["8000/tcp", "8888/http"]}).json()
        assert changed["status"] == "STARTING" and changed["env"] == {"NEW": "1"}
        clock.advance(2)
        ports = {p["private"] for p in client.get(url).json()["runtime"]["ports"]}
        assert ports == {8000, 8888}
        grown = client.patch(url, json={"mounts": {"persistent": {"size": 40, "path": "/data"}}}).json()
        assert grown["mounts"] == {"persistent": {"size": 40, "path": "/data"}} and grown["status"] == "RUNNING"

        assert client.patch(url, json={"bogus": 1}).json()["errors"] == ["$: additional properties 'bogus' not allowed"]
        assert client.patch(url, json={"mounts": {"network": [{"volumeId": "v", "path": "/n"}]}}).status_code == 400
        assert client.patch("/v2/pods/nosuchpod00000", json={"name": "x"}).status_code == 404
        bare = client.post("/v2/pods", json=body(name="no-volume")).json()
        mount = {"mounts": {"persistent": {"size": 10, "path": "/w"}}}
        assert client.patch(f"/v2/pods/{bare['id']}", json=mount).status_code == 400  # kind fixed at create


def test_catalog_stock_levels_follow_free_gpus(start_emulator: StartEmulator):
    server = start_emulator(machines_per_type=2, gpus_per_machine=4)
    stock = {"include": "AVAILABILITY", "product": "POD"}
    with rest(server) as client:
        plain = {g["id"]: g for g in client.get("/v2/catalog/gpus").json()["gpus"]}
        assert "availability" not in plain[RTX_4090] and "dataCenters" not in plain[RTX_4090]
        assert plain[RTX_4090]["price"] == {"secure": 0.69, "community": 0.34}
        assert plain[L4]["community"] is False and plain[L4]["maxCount"] == {"secure": 4, "community": 0}

        def level(gpu: str = RTX_4090, **params: object) -> dict:
            return client.get(f"/v2/catalog/gpus/{gpu}", params={**stock, **params}).json()

        assert level()["availability"] == "HIGH" and level()["dataCenters"][0]["availability"] == "HIGH"
        assert level()["cudaVersions"] == [{"version": "12.8", "available": True}]
        machines = [m for m in admin(server, "GET", "/machines").json() if m["gpu_type_id"] == RTX_4090]
        admin(server, "POST", f"/machines/{machines[0]['id']}/fill")
        assert level()["availability"] == "HIGH"  # 4 of 8 free
        for _ in range(3):
            assert client.post("/v2/pods", json=body()).status_code == 201
        assert level()["availability"] == "LOW"  # 1 of 8 free
        assert level(count=2)["availability"] == "NONE"  # no machine has two free
        client.post("/v2/pods", json=body())
        empty = level()
        assert empty["availability"] == "NONE" and "dataCenters" not in empty
        listed = {g["id"]: g for g in client.get("/v2/catalog/gpus", params=stock).json()["gpus"]}
        assert listed[RTX_4090]["availability"] == "NONE" and listed["NVIDIA A40"]["availability"] == "HIGH"
        assert level(L4, cloud="COMMUNITY")["availability"] == "NONE"  # not offered there
        assert level(L4, cudaVersions="12.4")["availability"] == "NONE"
        assert level(L4, minCudaVersion="12")["availability"] == "HIGH"
        assert level(L4, countryCodes="FR")["availability"] == "NONE"
        assert RTX_4090 not in [g["id"] for g in client.get("/v2/catalog/gpus", params={**stock, "countryCodes": "FR"})
                                .json()["gpus"]]

        assert client.get("/v2/catalog/gpus", params={"include": "AVAILABILITY"}).status_code == 400
        assert client.get("/v2/catalog/gpus", params={"product": "POD"}).status_code == 400
        assert client.get("/v2/catalog/gpus", params={**stock, "cudaVersions": "12.8", "minCudaVersion": "12"}
                          ).status_code == 400
        assert client.get("/v2/catalog/gpus", params={**stock, "count": "zero"}).status_code == 422
        assert client.get("/v2/catalog/gpus", params={**stock, "cloud": "ALL"}).status_code == 422
        assert client.get("/v2/catalog/gpus", params={"include": "PRICES", "product": "POD"}).status_code == 422
        assert client.get("/v2/catalog/gpus/NVIDIA GeForce GTX 9999").status_code == 404


def test_billing_buckets_sum_to_the_bill(start_emulator: StartEmulator):
    clock = FakeClock(start=1_767_225_600.0 - 1800)  # 2025-12-31T23:30:00Z: the run crosses hour, day and year
    server = start_emulator(clock=clock, boot_seconds=0)
    with rest(server) as client:
        pod = client.post("/v2/pods", json=body(mounts={"persistent": {"size": 20, "path": "/w"}})).json()
        clock.advance(3600)  # 30 min in 2025, 30 min in 2026
        client.post(f"/v2/pods/{pod['id']}/action", json={"action": "stop"})
        clock.advance(1800)
        other = client.post("/v2/pods", json=body(name="other", gpu={"id": "NVIDIA A40"})).json()
        clock.advance(600)
        bill = admin(server, "GET", "/bill").json()

        hourly = client.get("/v2/billing/pods", params={"bucketSize": "hour", "lastN": 3}).json()
        assert hourly["metadata"]["query"] == {
            "startTime": "2025-12-31T23:00:00Z", "endTime": "2026-01-01T02:00:00Z", "bucketSize": "hour", "podId": None}
        mine = [r for r in hourly["records"] if r["podId"] == pod["id"]]
        assert [r["startTime"] for r in mine] == ["2025-12-31T23:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"]
        assert mine[0]["gpuAmount"] == pytest.approx(0.69 / 2) and mine[2]["gpuAmount"] == 0
        assert mine[2]["diskAmount"] > 0  # the stopped volume still bills
        assert hourly["metadata"]["uniquePodCount"] == 2 and hourly["metadata"]["recordCount"] == 4
        assert hourly["metadata"]["totals"]["totalAmount"] == pytest.approx(bill["total_usd"], rel=1e-12)
        for pod_id, charge in bill["by_pod"].items():
            records = [r for r in hourly["records"] if r["podId"] == pod_id]
            assert sum(r["gpuAmount"] for r in records) == pytest.approx(charge["gpu_usd"], rel=1e-12)
            assert sum(r["diskAmount"] for r in records) == pytest.approx(charge["storage_usd"], rel=1e-12)
            assert all(r["cpuAmount"] == 0 and r["totalAmount"] == pytest.approx(r["gpuAmount"] + r["diskAmount"])
                       for r in records)

        yearly = client.get("/v2/billing/pods", params={"bucketSize": "year", "podId": other["id"]}).json()
        assert [r["startTime"] for r in yearly["records"]] == ["2026-01-01T00:00:00Z"]
        assert yearly["metadata"]["query"]["podId"] == other["id"]
        daily = client.get("/v2/billing/pods", params={"startTime": "2025-12-31T12:00:00Z",
                                                       "endTime": "2026-01-01T00:00:01Z"}).json()
        assert daily["metadata"]["query"]["startTime"] == "2025-12-31T00:00:00Z"  # snapped down
        assert daily["metadata"]["query"]["endTime"] == "2026-01-02T00:00:00Z"  # snapped up
        assert daily["metadata"]["query"]["bucketSize"] == "day"

        assert client.get("/v2/billing/pods", params={"lastN": 2, "startTime": "2026-01-01T00:00:00Z"}
                          ).status_code == 400
        assert client.get("/v2/billing/pods", params={"bucketSize": "minute"}).status_code == 422
        assert client.get("/v2/billing/pods", params={"startTime": "yesterday"}).status_code == 422
        assert client.get("/v2/billing/pods", params={"lastN": 0}).status_code == 422


def test_api_key_never_appears_in_rest_answers(start_emulator: StartEmulator):
    server = start_emulator(api_key=API_KEY)
    with rest(server) as client:
        answers = [client.get("/v2/pods"), client.post("/v2/pods", json=body(bogus=1)),
                   client.get("/v2/pods/nosuchpod00000")]
    assert all(API_KEY not in a.text and API_KEY not in str(a.headers) for a in answers)
