"""The gauges the alert rules and dashboards compare against: the policy in force, unhealthy pods and RunPod's
rate-limit quota (``ControllerMetrics.set_state``, set at the end of every pass).

First on the metrics object itself, then through a real controller against the emulator: a ``PATCH /v1/policy``
shows in ``/metrics`` after the next pass, and a pod whose /health fails is counted until it answers again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.domain import PodPhase, PodRole, Policy
from reconciler.metrics import ControllerMetrics
from reconciler.tables import PodRow
from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings
from tests.integration.harness import (
    ADMIN,
    EMULATOR_KEY,
    Api,
    ControllerServer,
    EmulatorAdmin,
    controller_settings,
    until,
)


def samples(exposition: bytes | str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def pod(pod_id: str, phase: PodPhase, unhealthy_since: float | None = None) -> PodRow:
    return PodRow(id=pod_id, role=PodRole.SERVING, phase=phase, gpu_type="NVIDIA L4", secret="s", created_at=0.0,
                  phase_since=0.0, unhealthy_since=unhealthy_since)


def test_set_state_exports_the_policy_unhealthy_pods_and_the_quota() -> None:
    metrics = ControllerMetrics()
    policy = Policy(budget_usd_per_hour=12.5, standby_count=0, max_pods=4, sessions_per_pod=2, paused=True,
                    idle_ttl_s=90, stopped_ttl_s=600, gpu_types=["NVIDIA L4", "NVIDIA A40"])
    pods = [pod("a", PodPhase.READY, unhealthy_since=100.0), pod("b", PodPhase.READY),
            pod("c", PodPhase.STARTING, unhealthy_since=100.0)]  # only a Ready pod counts as unhealthy
    quota = {"minute": {"quota": 60, "remaining": 7, "reset_s": 12.0},
             "hour": {"quota": 3000, "remaining": 2900, "reset_s": 1800.0}}
    metrics.set_state(policy, pods, quota)
    found = samples(metrics.render())
    assert value(found, "harper_policy_budget_dollars_per_hour") == 12.5
    assert value(found, "harper_policy_standby_count") == 0
    assert value(found, "harper_policy_max_pods") == 4
    assert value(found, "harper_policy_sessions_per_pod") == 2
    assert value(found, "harper_policy_paused") == 1
    assert value(found, "harper_policy_idle_ttl_seconds") == 90
    assert value(found, "harper_policy_stopped_ttl_seconds") == 600
    assert value(found, "harper_policy_gpu_type", gpu_type="NVIDIA L4") == 1
    assert value(found, "harper_policy_gpu_type", gpu_type="NVIDIA A40") == 2
    assert value(found, "harper_pods_unhealthy") == 1
    assert value(found, "harper_provider_quota_limit", window="minute") == 60
    assert value(found, "harper_provider_quota_limit", window="hour") == 3000

    # the next pass: policy edited, the pod healthy again, an API without a quota (GraphQL)
    metrics.set_state(Policy(gpu_types=["NVIDIA A40"]), [pod("a", PodPhase.READY)], {})
    found = samples(metrics.render())
    assert value(found, "harper_policy_paused") == 0
    assert value(found, "harper_policy_standby_count") == 1
    assert value(found, "harper_policy_gpu_type", gpu_type="NVIDIA A40") == 1
    assert value(found, "harper_policy_gpu_type", gpu_type="NVIDIA L4") is None, "a dropped type must not linger"
    assert value(found, "harper_pods_unhealthy") == 0


# ------------------------------------------------------------------------------------- through a real controller


@pytest.fixture
async def stack(tmp_path) -> AsyncIterator[tuple[ControllerServer, Api, EmulatorAdmin]]:
    emulator = EmulatorServer(EmulatorSettings(
        port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=0.2, load_seconds=0.2, seed=7,
        machines_per_type=2, gpus_per_machine=2,
    ))
    await emulator.start()
    # Each assertion asks for a pass of its own (POST /v1/reconcile); the short interval only bounds how long
    # the controller reuses a healthy probe (one interval) before it asks a pod's /health again.
    server = ControllerServer(controller_settings(
        emulator.url, str(tmp_path / "harper.db"), reconcile_interval_s=0.5, standby_count=0, idle_ttl_s=600.0,
    ))
    try:
        await server.start()
        api, emu = Api(server.url), EmulatorAdmin(emulator.url)
        try:
            yield server, api, emu
        finally:
            await api.aclose()
            await emu.aclose()
            await server.stop()
    finally:
        await emulator.stop()


async def scrape(api: Api) -> dict:
    response = await api.http.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


async def test_metrics_follow_the_policy_and_pod_health(stack) -> None:
    server, api, emu = stack
    assert (await api.post("/v1/reconcile", ADMIN)).json()["ok"]
    found = await scrape(api)
    assert value(found, "harper_policy_budget_dollars_per_hour") == 20.0  # the settings' policy
    assert value(found, "harper_policy_standby_count") == 0
    assert value(found, "harper_pods_unhealthy") == 0
    if server.settings.runpod_api == "rest":  # GraphQL reports no quota
        limit = value(found, "harper_provider_quota_limit", window="minute")
        assert limit and 0 <= value(found, "harper_provider_quota_remaining", window="minute") <= limit

    patch = {"budget_usd_per_hour": 7.5, "standby_count": 0, "max_pods": 3, "sessions_per_pod": 2,
             "idle_ttl_s": 42, "gpu_types": ["NVIDIA L4"]}
    assert (await api.http.patch("/v1/policy", json=patch, headers=api.h(ADMIN))).status_code == 200
    assert (await api.post("/v1/reconcile", ADMIN)).json()["ok"]
    found = await scrape(api)
    assert value(found, "harper_policy_budget_dollars_per_hour") == 7.5
    assert value(found, "harper_policy_max_pods") == 3
    assert value(found, "harper_policy_sessions_per_pod") == 2
    assert value(found, "harper_policy_idle_ttl_seconds") == 42
    assert value(found, "harper_policy_paused") == 0
    assert value(found, "harper_policy_gpu_type", gpu_type="NVIDIA L4") == 1
    assert value(found, "harper_policy_gpu_type", gpu_type="NVIDIA GeForce RTX 4090") is None

    # a leased pod whose /health starts failing is counted until it answers again
    lease = (await api.lease("metrics")).json()

    async def ready() -> dict | None:
        await api.post("/v1/reconcile", ADMIN)
        body = (await api.get(f"/v1/leases/{lease['id']}")).json()
        return body if body["state"] == "ready" else None

    granted = await until(ready, timeout=20)
    runpod_id = (await api.get(f"/v1/pods/{granted['pod_id']}", ADMIN)).json()["runpod_id"]
    assert (await emu.http.post(f"/_admin/pods/{runpod_id}/sick")).status_code == 200
    await until(lambda: _unhealthy(api, 1), timeout=20)
    assert (await emu.http.post(f"/_admin/pods/{runpod_id}/sick", json={"sick": False})).status_code == 200
    await until(lambda: _unhealthy(api, 0), timeout=20)

    assert (await api.http.patch("/v1/policy", json={"paused": True}, headers=api.h(ADMIN))).status_code == 200
    assert (await api.post("/v1/reconcile", ADMIN)).json()["ok"]
    assert value(await scrape(api), "harper_policy_paused") == 1


async def _unhealthy(api: Api, expected: int) -> bool:
    await api.post("/v1/reconcile", ADMIN)
    return value(await scrape(api), "harper_pods_unhealthy") == expected
