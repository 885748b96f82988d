"""The billing ledger on a fake clock: exact dollars for GPU time and storage across a pod's life."""

from __future__ import annotations

import pytest
import runpod

from runpod_emulator.clock import FakeClock

from .conftest import RTX_4090, StartEmulator, admin

MONTH_H = 730.0


def bill(server) -> dict:
    return admin(server, "GET", "/bill").json()


def test_run_stop_resume_terminate_costs(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, boot_seconds=60)
    pod = runpod.create_pod("p", "img", RTX_4090, volume_in_gb=20, container_disk_in_gb=10, ports="8000/tcp")

    clock.advance(3600)  # one hour RUNNING, boot included: GPU, volume and container disk all bill
    assert bill(server)["gpu_usd"] == pytest.approx(0.69, rel=1e-12)
    runpod.stop_pod(pod["id"])

    clock.advance(7200)  # two hours EXITED: only the volume, at the stopped rate
    runpod.resume_pod(pod["id"], 1)
    clock.advance(1800)  # half an hour RUNNING again
    runpod.terminate_pod(pod["id"])
    clock.advance(10_000)  # nothing after termination

    running_storage_h = (20 * 0.10 + 10 * 0.10) / MONTH_H
    stopped_storage_h = 20 * 0.20 / MONTH_H
    gpu = 0.69 * 1.5
    storage = running_storage_h * 1.5 + stopped_storage_h * 2
    got = bill(server)
    assert got["gpu_usd"] == pytest.approx(gpu, rel=1e-12)
    assert got["storage_usd"] == pytest.approx(storage, rel=1e-12)
    assert got["total_usd"] == pytest.approx(gpu + storage, rel=1e-12)
    assert got["by_pod"] == {
        pod["id"]: pytest.approx({"gpu_usd": gpu, "storage_usd": storage, "total_usd": gpu + storage}, rel=1e-12)
    }


def test_community_price_times_gpu_count(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock)
    pod = runpod.create_pod("p", "img", RTX_4090, cloud_type="COMMUNITY", gpu_count=2, container_disk_in_gb=0)
    assert runpod.get_pod(pod["id"])["costPerHr"] == pytest.approx(0.68)
    clock.advance(1800)
    assert bill(server)["gpu_usd"] == pytest.approx(0.34, rel=1e-12)
    assert bill(server)["storage_usd"] == 0


def test_reset_clears_the_ledger_pods_tenants_and_faults(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock)
    old = runpod.create_pod("p", "img", RTX_4090)
    admin(server, "POST", f"/machines/{old['machineId']}/fill").raise_for_status()
    admin(server, "POST", "/faults", json={"op": "myself", "kind": "auth"}).raise_for_status()
    clock.advance(60)
    assert bill(server)["total_usd"] > 0
    admin(server, "POST", "/reset").raise_for_status()
    assert bill(server) == {"total_usd": 0, "gpu_usd": 0, "storage_usd": 0, "by_pod": {}}
    assert runpod.get_pods() == [] and admin(server, "GET", "/pods").json() == []
    machines = admin(server, "GET", "/machines").json()
    assert all(m["free"] == m["gpus"] and m["pods"] == {} for m in machines)
    assert runpod.create_pod("p", "img", RTX_4090)["id"] != old["id"]  # ids are never reused
