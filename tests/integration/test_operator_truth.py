"""What an operator reads must be true: lease gauges, reasons, events, idempotency after a lease ends, what keeps
a pending lease alive, and error messages that match their codes (issue: the operator's first hour)."""

import asyncio

from .harness import ADMIN, Api, until
from .test_controller_lifecycle import standby_parked


def gauge(metrics: str, name: str, **labels: str) -> float | None:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in metrics.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


async def test_lease_gauges_drop_to_zero_when_a_state_empties(stack):
    server, api, emu = stack
    await until(lambda: standby_parked(api))
    await api.http.patch("/v1/policy", json={"paused": True}, headers=api.h(ADMIN))
    waiting = (await api.lease("w")).json()
    await api.http.patch("/v1/policy", json={"paused": False}, headers=api.h(ADMIN))
    ready = (await api.get(f"/v1/leases/{waiting['id']}", wait=20)).json()
    assert ready["state"] == "ready"
    metrics = (await api.http.get("/metrics")).text
    assert gauge(metrics, "harper_leases", state="ready") == 1
    await api.http.delete(f"/v1/leases/{waiting['id']}", headers=api.h())
    await api.post("/v1/reconcile", ADMIN)
    metrics = (await api.http.get("/metrics")).text
    assert gauge(metrics, "harper_leases", state="ready") == 0  # it used to stay at 1
    assert gauge(metrics, "harper_leases", state="pending") == 0
    assert gauge(metrics, "harper_leases", state="released") == 1
    assert gauge(metrics, "harper_leases", state="expired") == 0  # exported although none ever was


async def test_a_pending_lease_says_why_it_waits_and_an_event_says_so(stack):
    server, api, emu = stack
    await until(lambda: standby_parked(api))
    await api.http.patch("/v1/policy", json={"paused": True}, headers=api.h(ADMIN))
    lease = (await api.lease("held")).json()
    await api.post("/v1/reconcile", ADMIN)
    got = (await api.get(f"/v1/leases/{lease['id']}")).json()
    assert got["state"] == "pending" and got["reason"] == "paused"
    changed = await api.http.patch("/v1/policy", json={"paused": False, "max_pods": 0, "standby_count": 0},
                                   headers=api.h(ADMIN))
    assert changed.status_code == 200, changed.text
    await api.post("/v1/reconcile", ADMIN)
    assert (await api.get(f"/v1/leases/{lease['id']}")).json()["reason"] == "max_pods 0 reached"
    events = (await api.get("/v1/events", ADMIN, object=lease["id"])).json()["events"]  # a bare id
    assert [e["message"] for e in events if e["reason"] == "Waiting"][:2] == ["max_pods 0 reached", "paused"]
    await api.http.patch("/v1/policy", json={"max_pods": 10}, headers=api.h(ADMIN))
    ready = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
    assert ready["state"] == "ready" and ready["reason"] is None  # the reason is the current one


async def test_warm_grants_and_releases_are_events(make_controller):
    server = await make_controller(idle_ttl_s=60.0)
    api = Api(server.url)
    try:
        await until(lambda: standby_parked(api))
        first = (await api.lease("s1")).json()
        await api.get(f"/v1/leases/{first['id']}", wait=20)
        await api.http.delete(f"/v1/leases/{first['id']}", headers=api.h())
        warm = (await api.lease("s2")).json()
        assert warm["path"] == "warm"
        await api.http.delete(f"/v1/leases/{warm['id']}", headers=api.h())
        await api.http.delete(f"/v1/leases/{warm['id']}", headers=api.h())  # a repeat is no new event
        events = (await api.get("/v1/events", ADMIN, object=warm["id"])).json()["events"]
        assert [e["reason"] for e in events] == ["Released", "Ready"]
        assert events[1]["message"].startswith(f"warm: pod {warm['pod_id']}")
        assert events == (await api.get("/v1/events", ADMIN, object=f"lease/{warm['id']}")).json()["events"]
    finally:
        await api.aclose()


async def test_a_replay_never_presents_an_ended_lease_as_live(stack):
    server, api, emu = stack
    await until(lambda: standby_parked(api))
    first = (await api.lease("session-a")).json()
    ready = (await api.get(f"/v1/leases/{first['id']}", wait=20)).json()
    assert ready["state"] == "ready"
    await api.http.delete(f"/v1/leases/{first['id']}", headers=api.h())
    # The default key (the session id): the same session comes back and gets a new lease, not the old body.
    again = await api.lease("session-a")
    assert again.status_code == 201 and again.json()["id"] != first["id"]
    assert (await api.lease("session-a")).json()["id"] == again.json()["id"]  # and replays of it work
    # An explicit key reused after its lease ended: 409 lease_ended, never the released lease's token.
    keyed = (await api.lease("session-b", key="order-1")).json()
    await api.http.delete(f"/v1/leases/{keyed['id']}", headers=api.h())
    reused = await api.lease("session-b", key="order-1")
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "lease_ended"
    assert keyed["id"] in reused.json()["error"]["message"] and "token" not in reused.text
    old = (await api.get(f"/v1/leases/{first['id']}")).json()
    assert old["state"] == "released" and old["session_id"] == "session-a"


async def test_long_polling_keeps_a_pending_lease_alive_and_ended_means_ended(make_controller):
    server = await make_controller(lease_ttl_s=2.0, standby_count=0)  # no pod a warm grant could land on
    api = Api(server.url)
    try:
        await api.http.patch("/v1/policy", json={"paused": True}, headers=api.h(ADMIN))
        lease = (await api.lease("poller")).json()
        for _ in range(3):  # 4.5 s of long polls and no heartbeat: more than twice the TTL
            polled = (await api.get(f"/v1/leases/{lease['id']}", wait=1.5)).json()
        assert polled["state"] == "pending"
        await asyncio.sleep(2.5)  # now nobody asks: it expires
        beat = await api.post(f"/v1/leases/{lease['id']}/heartbeat")
        assert beat.status_code == 409 and beat.json()["error"]["code"] == "lease_ended"
        message = beat.json()["error"]["message"]
        assert "has ended" in message and ("expired" in message) and "pending" not in message
    finally:
        await api.aclose()


async def test_tokens_live_about_a_heartbeat_and_name_the_slot(make_controller):
    from gpu_server.auth import verify_token

    server = await make_controller(lease_ttl_s=120.0)
    api = Api(server.url)
    await until(lambda: standby_parked(api))
    lease = (await api.lease("tok")).json()
    ready = (await api.get(f"/v1/leases/{lease['id']}", wait=20)).json()
    secret = (await server.controller.store.get_pod(ready["pod_id"])).secret
    now = server.controller.clock()
    first = verify_token(secret, ready["token"], now=now, pod_id=ready["pod_id"])
    assert first.expires_at <= now + 31 and first.slot == 0 and first.generation > 0  # not the lease's 120 s
    await asyncio.sleep(1.1)
    renewed = (await api.post(f"/v1/leases/{lease['id']}/heartbeat")).json()
    second = verify_token(secret, renewed["token"], now=server.controller.clock(), pod_id=ready["pod_id"])
    assert second.expires_at > first.expires_at and second.generation == first.generation
    await api.aclose()
