"""The controller on RunPod's REST v2 through the emulator: ERROR pods replaced at once with their log line in
the events, rate limits honoured (a 429 storm delays passes but fails no lease; a burst of 50 sessions under the
documented 60/min policy earns no 429), and the cost estimate agreeing with what RunPod billed."""

import asyncio

import pytest

from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import ADMIN, EMULATOR_KEY, Api, ControllerServer, EmulatorAdmin, controller_settings, until
from .test_controller_lifecycle import standby_parked
from .test_operator_truth import gauge

CRASH_LINE = "RuntimeError: CUDA driver version is insufficient for CUDA runtime version"


async def test_a_pod_that_fails_is_replaced_at_once_and_its_log_line_is_in_the_events(stack):
    server, api, emu = stack
    sb = await until(lambda: standby_parked(api))
    lease = (await api.lease("s1")).json()
    ready = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
    assert ready["state"] == "ready" and ready["pod_id"] == sb["id"]
    await emu.crash(sb["runpod_id"], CRASH_LINE)

    async def failed():
        got = (await api.get(f"/v1/leases/{lease['id']}")).json()
        return got if got["state"] == "failed" else None

    ended = await until(failed, timeout=10)  # not after the 900 s ready timeout: at the next pass
    assert "ERROR" in ended["reason"]
    async def pod_failed_event():
        events = (await api.get("/v1/events", ADMIN, object=sb["id"])).json()["events"]
        return next((e for e in events if e["reason"] == "PodFailed"), None)

    failure = await until(pod_failed_event, timeout=10)
    assert CRASH_LINE in failure["message"] and "RunPod reports the container in ERROR" in failure["message"]
    pod = (await api.get(f"/v1/pods/{sb['id']}", ADMIN)).json()
    assert pod["state"] in ("terminating", "terminated") and CRASH_LINE in pod["reason"]
    replacement = await until(lambda: standby_parked(api))  # the pool is refilled
    assert replacement["id"] != sb["id"]
    # A session that comes now is served as usual.
    again = (await api.lease("s2")).json()
    assert (await api.get(f"/v1/leases/{again['id']}", wait=20)).json()["state"] == "ready"


async def test_a_pod_that_fails_while_booting_gives_its_lease_a_new_pod(make_controller, emu):
    server = await make_controller(standby_count=0)
    api = Api(server.url)
    try:
        lease = (await api.lease("cold")).json()

        async def booting():
            pods = await emu.live()
            return pods[0] if pods else None

        first = await until(booting)
        await emu.crash(first["id"], "ImportError: libcudnn.so.9: cannot open shared object file")
        ready = (await api.get(f"/v1/leases/{lease['id']}", wait=30)).json()
        assert ready["state"] == "ready" and ready["path"] == "cold_create"
        every = (await api.get("/v1/pods", ADMIN, all="true")).json()["pods"]
        crashed = next(p for p in every if p["runpod_id"] == first["id"])
        assert ready["pod_id"] != crashed["id"] and "libcudnn.so.9" in crashed["reason"]
    finally:
        await api.aclose()


async def test_a_429_storm_delays_passes_but_fails_no_lease(make_controller, emu):
    server = await make_controller(standby_count=0, lease_ttl_s=30.0)
    api = Api(server.url)
    try:
        await until(lambda: _passes(api, "ok"))
        await emu.fault(op="*", kind="rate_limit", count=15)  # every REST call answered 429 for a while
        leases = [(await api.lease(f"storm-{i}")).json() for i in range(3)]
        await until(lambda: _passes(api, "throttled"), timeout=20)
        for lease in leases:  # long polls count as heartbeats while the storm lasts
            for _ in range(3):
                got = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
                if got["state"] != "pending":
                    break
            assert got["state"] == "ready", got
        metrics = (await api.http.get("/metrics")).text
        assert gauge(metrics, "harper_leases", state="failed") == 0
        assert gauge(metrics, "harper_leases", state="expired") == 0
    finally:
        await api.aclose()


async def _passes(api: Api, result: str) -> bool:
    value = gauge((await api.http.get("/metrics")).text, "harper_reconcile_total", result=result)
    return bool(value and value > 0)


@pytest.mark.slow
async def test_a_burst_of_50_sessions_under_the_documented_rate_limit_earns_no_429(tmp_path):
    emulator = EmulatorServer(EmulatorSettings(
        port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=0.2, load_seconds=0.2, seed=5,
        machines_per_type=4, gpus_per_machine=16, rate_limit="60/minute,3000/hour,50000/day",
    ))
    await emulator.start()
    server = ControllerServer(controller_settings(
        emulator.url, str(tmp_path / "h.db"), standby_count=0, max_pods=60, budget_usd_per_hour=100.0,
        idle_ttl_s=600.0, lease_ttl_s=120.0))
    await server.start()
    api, emu = Api(server.url), EmulatorAdmin(emulator.url)
    try:
        leases = await asyncio.gather(*(api.lease(f"burst-{i}") for i in range(50)))
        ids = [lease.json()["id"] for lease in leases]

        async def all_ready():
            states = [(await api.get(f"/v1/leases/{i}")).json()["state"] for i in ids]
            assert "failed" not in states and "expired" not in states
            return states.count("ready") == 50

        await until(all_ready, timeout=240, every=2.0)
        metrics = (await api.http.get("/metrics")).text
        refused = [line for line in metrics.splitlines()
                   if line.startswith("harper_provider_requests_total") and 'outcome="RateLimited"' in line]
        assert all(line.endswith(" 0.0") for line in refused), refused  # RunPod never said 429
        calls = (await emu.requests())["by_api"]["rest"]
        assert calls["ops"]["create_pod"] == 50 and calls["total"] <= 120
    finally:
        await api.aclose()
        await emu.aclose()
        await server.stop()
        await emulator.stop()


async def test_the_estimate_agrees_with_what_runpod_billed(make_controller, emu):
    """A scripted run with churn (sessions come and go, pods are resumed, stopped, created): the controller's
    estimate and RunPod's billing records for the same pods agree within 1%."""
    server = await make_controller(standby_count=1, idle_ttl_s=1.0, billing_interval_s=1.0)
    api = Api(server.url)
    try:
        await until(lambda: standby_parked(api))
        for round_ in range(4):
            leases = [(await api.lease(f"churn-{round_}-{i}")).json() for i in range(2)]
            for lease in leases:
                assert (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()["state"] == "ready"
            await asyncio.sleep(2.0)
            for lease in leases:
                await api.http.delete(f"/v1/leases/{lease['id']}", headers=api.h())
            await asyncio.sleep(2.0)
        async def all_stopped():  # no GPU bills any more: the two sides cannot drift while they are read
            pods = await api.pods()
            return bool(pods) and all(p["state"] == "stopped" for p in pods)

        await until(all_stopped, timeout=30)
        await asyncio.sleep(1.5)  # one more billing read (every 1 s here) after the last change
        cost = (await api.get("/v1/cost", ADMIN)).json()
        estimated, billed = cost["spent_usd"], cost["billed_usd"]
        assert billed is not None and billed["total"] > 0
        assert estimated["total"] == pytest.approx(billed["total"], rel=0.01), (estimated, billed)
        assert estimated["gpu"] == pytest.approx(billed["gpu"], rel=0.01)
        # Everything in this run happened today (UTC), so today and month to date are the whole spend.
        assert cost["today"]["total"] == pytest.approx(estimated["total"], abs=2e-6)
        assert cost["month_to_date"] == cost["today"]
        metrics = (await api.http.get("/metrics")).text
        assert (gauge(metrics, "harper_cost_billed_dollars_total", kind="gpu") or 0) > 0
    finally:
        await api.aclose()
