"""End to end on one machine: controller (local mode) -> emulator -> real gpu_server pods on CPU models."""

import asyncio
import time

import httpx
import pytest

from reconciler.demo import round_trip, word_error_rate
from reconciler.local_pods import read_emulator

from .conftest import COMPANION

pytestmark = pytest.mark.timeout(600)


async def test_demo_round_trip_then_idle_ttl_stops_the_pod_and_a_standby_is_left(local_stack):
    stack = await local_stack(HARPER_IDLE_TTL_S="3")
    standby = await stack.wait_standby()
    text = "Please book a table for two at seven tonight."
    result = await round_trip(stack.url, COMPANION, text, progress=lambda *_: None)
    assert result["path"] == "standby_resume" and result["pod_id"] == standby["id"]
    assert word_error_rate(text, result["transcript"]) < 0.1, result
    assert result["tts_first_audio_ms"] > 0 and result["stt_final_ms"] is not None
    # released by round_trip: after the idle TTL the serving pod is stopped and becomes a standby again
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = await stack.pods()
        served = next(p for p in pods if p["id"] == standby["id"])
        if served["state"] == "stopped" and all(p["state"] == "stopped" for p in pods):
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(f"pods not all stopped after the idle TTL: {pods}")
    standbys = [p for p in pods if p["role"] == "standby" and p["was_ready"]]
    assert standbys and served["role"] == "standby"
    events = (await stack.admin.get("/v1/events", params={"object": f"pod/{standby['id']}"})).json()["events"]
    assert any("idle for" in e["message"] for e in events)
    # Local mode speaks REST v2, like a default controller against RunPod: not one GraphQL call.
    emulator_url, key = read_emulator(stack.workdir / "local")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        calls = (await http.get(f"{emulator_url}/_admin/requests")).json()["by_api"]
    assert calls["rest"]["total"] > 0 and calls.get("graphql", {}).get("total", 0) == 0, calls
