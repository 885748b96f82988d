"""Scheduled warm capacity in the live daemon: edited through PATCH /v1/policy (validated, persisted), exported
as ``harper_warm_target``, and honoured: a window keeps its pods Ready through it and lets them go after."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reconciler.domain import Policy
from reconciler.schedule import parse_schedule

from .faketime import FakeTimeStack
from .harness import ADMIN, GPU_A, GPU_B, Api

WINDOW = {"timezone": "Europe/Berlin", "windows": [{"start": "08:30", "end": "18:00", "pods": 2,
                                                     "days": ["mon", "tue", "wed", "thu", "fri"]}]}


@pytest.mark.parametrize(("schedule", "complaint"), [
    ({"timezone": "Mars/Olympus", "windows": []}, "unknown time zone"),
    ({"timezone": "UTC", "windows": [{"start": "9:00", "end": "17:00", "pods": 1}]}, "HH:MM"),
    ({"timezone": "UTC", "windows": [{"start": "09:00", "end": "25:00", "pods": 1}]}, "not a time of day"),
    ({"timezone": "UTC", "windows": [{"start": "09:00", "end": "09:00", "pods": 1}]}, "empty"),
    ({"timezone": "UTC", "windows": [{"start": "09:00", "end": "17:00", "pods": 0}]}, "greater than or equal to 1"),
    ({"timezone": "UTC", "windows": [{"start": "09:00", "end": "17:00", "pods": 1, "days": ["funday"]}]},
     "unknown day"),
    ({"timezone": "UTC", "windows": [{"start": "09:00", "end": "17:00", "pods": 1, "when": "always"}]},
     "Extra inputs"),
    ({"timezone": "UTC", "windows": [{"start": "09:00", "end": "17:00", "pods": 11}]}, "above max_pods 10"),
])
async def test_bad_windows_are_refused_and_change_nothing(stack, schedule, complaint) -> None:
    _, api, _ = stack
    before = (await api.get("/v1/policy", ADMIN)).json()
    response = await api.http.patch("/v1/policy", json={"warm_schedule": schedule}, headers=api.h(ADMIN))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_policy" and "warm_schedule" in error["message"]
    assert complaint in error["message"]
    assert (await api.get("/v1/policy", ADMIN)).json() == before


async def test_a_schedule_is_stored_and_survives_a_restart(make_controller) -> None:
    server = await make_controller()
    api = Api(server.url)
    try:
        assert (await api.get("/v1/policy", ADMIN)).json()["warm_schedule"] == {"timezone": "UTC", "windows": []}
        response = await api.http.patch("/v1/policy", json={"warm_schedule": WINDOW}, headers=api.h(ADMIN))
        assert response.status_code == 200, response.text
        stored = response.json()["warm_schedule"]
        assert stored["timezone"] == "Europe/Berlin" and stored["windows"][0]["pods"] == 2
        await server.stop()
        server = await make_controller()  # same database
        api2 = Api(server.url)
        assert (await api2.get("/v1/policy", ADMIN)).json()["warm_schedule"] == stored
        await api2.aclose()
    finally:
        await api.aclose()


async def _warm_target(api: Api) -> float:
    text = (await api.http.get("/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith("harper_warm_target "))
    return float(line.split()[1])


async def test_a_window_keeps_its_pods_ready_through_it_and_lets_them_go_after(tmp_path) -> None:
    start = datetime(2026, 1, 5, 8, 59, 40, tzinfo=UTC).timestamp()  # a Monday; the window opens 20 s in
    policy = Policy(standby_count=1, idle_ttl_s=5.0, stopped_ttl_s=600.0, gpu_types=[GPU_A, GPU_B],
                    warm_schedule=parse_schedule("mon-fri/09:00-09:01=2", "UTC"))
    seen: list[tuple[float, int, int, int, float]] = []  # (time, serving Ready, of them idle, GPU pods, target)

    async with FakeTimeStack(tmp_path, start, policy, interval_s=1.0, boot_s=3.0, load_s=1.0) as stack:
        async def look(t: float) -> None:
            pods = await stack.api.pods()
            ready = [p for p in pods if p["role"] == "serving" and p["state"] == "ready"]
            holding = sum(1 for p in pods if p["state"] in ("creating", "starting", "ready"))
            seen.append((t - start, len(ready), sum(not p["leases"] for p in ready), holding,
                         await _warm_target(stack.api)))

        # a session in the middle of the window takes a warm pod: the schedule replaces it at once
        await stack.play([(40.0, 10.0)], until_s=100.0, each_tick=look)
        leases = (await stack.api.get("/v1/leases", ADMIN)).json()["leases"]

    assert [lease["path"] for lease in leases] == ["warm"]
    opens, closes = 20, 80
    ready_by = opens + 9  # pods resumed or created as the window opens are Ready 4 s later (8 s behind a resume)
    assert all(ready == 0 and target == 0 for t, ready, _, _, target in seen if t < opens)
    during = [s for s in seen if ready_by <= s[0] < closes]
    assert during and all(ready >= 2 and target == 2 for _, ready, _, _, target in during), during
    # two of them idle, but for the 4 s the replacement of the pod the session took needs to boot
    assert all(idle >= 2 for t, _, idle, _, _ in during if not 40 <= t < 45), during
    assert [idle for t, _, idle, _, _ in during if t == 45] == [2]
    after = [s for s in seen if s[0] >= closes]
    assert after and all(ready == holding == target == 0 for _, ready, _, holding, target in after), after
