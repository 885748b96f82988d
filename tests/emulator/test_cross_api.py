"""One fleet behind both APIs: a pod made through GraphQL (the official SDK) is seen, stopped and billed
through REST v2 and the other way round, and ``/_admin/requests`` tells which API a client used."""

from __future__ import annotations

import pytest
import runpod

from runpod_emulator.clock import FakeClock

from .conftest import API_KEY, RTX_4090, StartEmulator, admin, graphql, rest


def test_created_by_the_sdk_stopped_by_rest_seen_by_both(emulator):
    pod = runpod.create_pod("harper-x1", "harper/gpu:1", RTX_4090, ports="8000/tcp", env={"K": "V"})
    with rest(emulator) as client:
        seen = client.get(f"/v2/pods/{pod['id']}").json()
        assert (seen["name"], seen["image"], seen["env"], seen["status"]) == (
            "harper-x1", "harper/gpu:1", {"K": "V"}, "RUNNING")
        assert seen["cloud"] == "SECURE"  # the SDK's cloudType ALL places (and bills) on secure cloud
        sdk_port = runpod.get_pod(pod["id"])["runtime"]["ports"][0]["publicPort"]
        assert seen["runtime"]["ports"][0]["public"] == sdk_port

        assert client.post(f"/v2/pods/{pod['id']}/action", json={"action": "stop"}).json()["status"] == "EXITED"
        after = runpod.get_pod(pod["id"])
        assert after["desiredStatus"] == "EXITED" and after["runtime"] is None
        assert after["lastStatusChange"].startswith("Exited by user")

        assert runpod.resume_pod(pod["id"], 1)["desiredStatus"] == "RUNNING"
        assert client.get(f"/v2/pods/{pod['id']}").json()["status"] in ("STARTING", "RUNNING")

        made = client.post("/v2/pods", json={"name": "harper-x2", "image": "img", "gpu": {"id": RTX_4090},
                                             "ports": ["8000/tcp"], "env": {"A": "b=c"}}).json()
        by_sdk = {p["id"]: p for p in runpod.get_pods()}
        assert set(by_sdk) == {pod["id"], made["id"]}
        assert by_sdk[made["id"]]["env"] == ["A=b=c"] and by_sdk[made["id"]]["ports"] == "8000/tcp"
        assert by_sdk[made["id"]]["machineId"] == admin(emulator, "GET", "/pods").json()[1]["machine_id"]

        runpod.terminate_pod(made["id"])
        assert client.get(f"/v2/pods/{made['id']}").status_code == 404
        assert client.delete(f"/v2/pods/{pod['id']}").status_code == 204
        assert runpod.get_pod(pod["id"]) is None and runpod.get_pods() == []


def test_rest_billing_agrees_with_the_admin_bill_across_both_apis(start_emulator: StartEmulator):
    clock = FakeClock(start=1_767_225_600.0)  # 2026-01-01T00:00:00Z
    server = start_emulator(clock=clock, boot_seconds=90, resume_boot_seconds=20)
    with rest(server) as client:
        a = runpod.create_pod("a", "img", RTX_4090, volume_in_gb=20, ports="8000/tcp")
        b = client.post("/v2/pods", json={"name": "b", "image": "img", "gpu": {"id": "NVIDIA A40", "count": 2},
                                          "cloud": "COMMUNITY", "disk": 30}).json()
        clock.advance(1200)
        client.post(f"/v2/pods/{a['id']}/action", json={"action": "stop"})
        clock.advance(2400)
        runpod.resume_pod(a["id"], 1)
        runpod.stop_pod(b["id"])
        clock.advance(3000)
        client.delete(f"/v2/pods/{b['id']}")
        clock.advance(500)

        bill = admin(server, "GET", "/bill").json()
        for bucket in ("hour", "day"):
            billed = client.get("/v2/billing/pods", params={"bucketSize": bucket, "lastN": 3}).json()
            totals = billed["metadata"]["totals"]
            assert totals["totalAmount"] == pytest.approx(bill["total_usd"], rel=1e-12)
            assert totals["gpuAmount"] == pytest.approx(bill["gpu_usd"], rel=1e-12)
            assert totals["diskAmount"] == pytest.approx(bill["storage_usd"], rel=1e-12)
            for pod_id in (a["id"], b["id"]):
                one = client.get("/v2/billing/pods", params={"bucketSize": bucket, "lastN": 3, "podId": pod_id}).json()
                assert one["metadata"]["totals"]["totalAmount"] == pytest.approx(
                    bill["by_pod"][pod_id]["total_usd"], rel=1e-12)
        # The arithmetic itself: a ran 1200 s + 3500 s at $0.69, b 3600 s at 2 x $0.35 community.
        assert bill["by_pod"][a["id"]]["gpu_usd"] == pytest.approx(0.69 * 4700 / 3600, rel=1e-12)
        assert bill["by_pod"][b["id"]]["gpu_usd"] == pytest.approx(0.70 * 3600 / 3600, rel=1e-12)


def test_admin_requests_counts_calls_by_api_and_operation(start_emulator: StartEmulator):
    server = start_emulator(api_key=API_KEY)
    pod = runpod.create_pod("p", "img", RTX_4090)  # get_gpu first, then the create mutation
    runpod.get_pods()
    runpod.stop_pod(pod["id"])
    graphql(server, "{ myself { id } }", key="wrong")  # refused, but received
    graphql(server, "{ not valid")
    with rest(server) as client:
        client.get("/v2/pods")
        client.get(f"/v2/pods/{pod['id']}")
        client.post(f"/v2/pods/{pod['id']}/action", json={"action": "start"})
        client.post(f"/v2/pods/{pod['id']}/action", json={"action": "fly"})
        client.get("/v2/catalog/gpus")
        client.get("/v2/billing/pods")
    with rest(server, key=None) as anonymous:
        anonymous.get("/v2/pods")
    counts = admin(server, "GET", "/requests").json()
    assert counts["by_api"]["graphql"] == {
        "total": 6, "ops": {"create_pod": 1, "gpu_types": 1, "invalid": 1, "list_pods": 2, "stop_pod": 1}}
    assert counts["by_api"]["rest"] == {
        "total": 7,
        "ops": {"billing": 1, "get_pod": 1, "gpu_types": 1, "invalid": 1, "list_pods": 2, "resume_pod": 1},
    }
    assert counts["total"] == 13
    assert admin(server, "DELETE", "/requests").json()["total"] == 0
    runpod.get_pods()
    assert admin(server, "GET", "/requests").json()["by_api"]["graphql"]["ops"] == {
        "list_pods": 1}


def test_an_error_pod_through_graphql_restarts_on_resume_and_stops(emulator):
    pod = runpod.create_pod("p", "img", RTX_4090, ports="8000/tcp")
    admin(emulator, "POST", f"/pods/{pod['id']}/crash", json={"log": "Segmentation fault"}).raise_for_status()
    with rest(emulator) as client:
        assert client.get(f"/v2/pods/{pod['id']}").json()["status"] == "ERROR"
        assert runpod.resume_pod(pod["id"], 1)["desiredStatus"] == "RUNNING"  # restarts in place
        assert client.get(f"/v2/pods/{pod['id']}").json()["status"] in ("STARTING", "RUNNING")
        machine = next(m for m in admin(emulator, "GET", "/machines").json() if m["id"] == pod["machineId"])
        assert machine["pods"] == {pod["id"]: 1}  # it never gave its GPU back
        admin(emulator, "POST", f"/pods/{pod['id']}/crash").raise_for_status()
        assert runpod.stop_pod(pod["id"])["desiredStatus"] == "EXITED"  # GraphQL may stop an ERROR pod
        assert client.get(f"/v2/pods/{pod['id']}").json()["status"] == "EXITED"
