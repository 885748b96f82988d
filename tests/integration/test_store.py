"""The store on a real, migrated SQLite file and PostgreSQL database: its live view (pods, active leases, counts, policy, GPU types
held in memory) must always equal what a fresh ``open()`` of the same file reads back, including after
many writes racing each other the way the API and the reconcile loop do."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import create_engine, text

from reconciler.domain import ClaimPath, IllegalTransition, LeaseState, PodPhase, Policy
from reconciler.store import DuplicateKey, SlotTaken, Store, migrate, sync_url
from reconciler.tables import LeaseRow, PodRow

PHASES = list(PodPhase)


@pytest.fixture
def database_url(any_database):
    return any_database


async def opened(url: str) -> Store:
    await asyncio.to_thread(migrate, url)
    return await Store(url).open()


def stored(url: str, sql: str) -> list[tuple]:
    """Rows read straight from the database, past the store (a separate, synchronous connection)."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def pod(pod_id: str, phase: PodPhase = PodPhase.READY, now: float = 100.0) -> PodRow:
    return PodRow(id=pod_id, role="serving", phase=phase.value, gpu_type="NVIDIA L4", secret="s" * 8,
                  created_at=now, phase_since=now)


def lease(lease_id: str, now: float = 100.0, **values) -> LeaseRow:
    values = {"state": "pending"} | values
    return LeaseRow(id=lease_id, session_id=f"s-{lease_id}", idempotency_key=f"k-{lease_id}", request_hash="h",
                    created_at=now, expires_at=now + 60, **values)


async def view(store: Store) -> dict:
    """Everything the live view answers, in a comparable form (values compare by ==: SQLite may hand back
    100 for a REAL 100.0)."""
    pods, leases = await store.planning_state()
    return {
        "pods": {p.id: p for p in pods},
        "leases": {x.id: x for x in leases},
        "rows": {x.id: x.model_dump() for x in await store.active_leases()},
        "pod_rows": {p.id: p.model_dump() for p in await store.live_pods()},
        "counts": await store.lease_counts(),
        "queue": await store.queue_length(),
        "policy": (await store.get_policy(Policy())).model_dump(),
        "gpu_types": {g.gpu_type: g.model_dump() for g in await store.gpu_types()},
    }


async def assert_view_matches_the_database(store: Store) -> None:
    await store.flush()  # heartbeats reach the database in the background
    fresh = await Store(store.url).open()
    try:
        assert await view(store) == await view(fresh)
    finally:
        await fresh.close()


async def test_every_write_keeps_the_view_equal_to_the_database(database_url):
    store = await opened(database_url)
    try:
        await store.get_policy(Policy(standby_count=2))
        await store.add_pod(pod("p1", PodPhase.CREATING))
        await store.insert_lease(lease("l1"))
        await store.add_pod(pod("p2", PodPhase.CREATING), lease_id="l1", now=101)
        await store.update_pod("p2", [("phase", PodPhase.READY), ("endpoint_host", "10.0.0.1"), ("endpoint_port", 1)])
        assert await store.grant_lease("l1", 102)
        assert await store.insert_lease(lease("l2", pod_id="p2", slot=1, path="warm", state="ready"),
                                        require_ready_pod=True)
        await store.heartbeat("l2", 500.0, 103)
        assert (await store.get_lease("l2")).expires_at == 500.0  # at once in the view...
        await store.flush()
        # ...and in the database after the group commit
        assert stored(database_url, "SELECT expires_at FROM leases WHERE id = 'l2'") == [(500.0,)]
        assert not await store.begin_stop("p2", 104, make_standby=True)  # leased: refused in the statement
        await store.insert_lease(lease("l3"))
        await store.update_pod("p1", [("phase", PodPhase.STOPPED)])
        assert await store.begin_resume("p1", "l3", 105)
        assert await store.requeue_lease("l3", "resume failed")
        await store.mark_unhealthy("p2", 106)
        assert await store.end_lease("l1", LeaseState.RELEASED, "released by the client", 107)
        await store.set_gpu_type("NVIDIA L4", price_per_hr=0.44)
        await store.set_policy(Policy(standby_count=0))
        await store.update_pod("p1", [("phase", PodPhase.TERMINATED)])
        await assert_view_matches_the_database(store)

        assert [p.id for p in await store.live_pods()] == ["p2"]  # terminated pods leave the view...
        assert (await store.get_pod("p1")).phase == "terminated"  # ...and are still read on request
        assert (await store.get_lease("l1")).state == "released"
        assert await store.lease_counts() == {"released": 1, "ready": 1, "pending": 1}
        assert await store.queue_length() == 1
        assert (await store.lease_with_pod("l2"))[1].unhealthy_since == 106
    finally:
        await store.close()


async def test_a_heartbeat_on_an_ended_or_expired_lease_changes_nothing(database_url):
    store = await opened(database_url)
    try:
        await store.insert_lease(lease("l1"))
        await store.end_lease("l1", LeaseState.RELEASED, "released by the client", 101)
        row, _ = await store.heartbeat("l1", 900.0, 102)
        assert (row.state, row.expires_at) == ("released", 160.0)
        await store.insert_lease(lease("l2"))
        row, _ = await store.heartbeat("l2", 900.0, 170.0)  # past its expiry (160)
        assert row.expires_at == 160.0
        assert await store.heartbeat("nope", 900.0, 102) == (None, None)
        await assert_view_matches_the_database(store)
    finally:
        await store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_racing_writes_keep_the_view_equal_to_the_database(database_url, seed):
    """Random batches of writes run concurrently (as API requests and a pass do); after each batch the view
    must equal a fresh read of the file, and no slot may be held twice."""
    rng = random.Random(seed)
    store = await opened(database_url)
    pods, leases = [f"p{i}" for i in range(3)], [f"l{i}" for i in range(8)]  # few ids: writes collide
    created: set[str] = set()
    now = 100.0

    async def op() -> None:
        nonlocal now
        now += rng.uniform(0.0, 2.0)
        lease_id, pod_id = rng.choice(leases[-8:]), rng.choice(pods)
        match rng.randrange(11):
            case 0:
                lease_id = f"l{len(leases)}"
                leases.append(lease_id)
                created.add(lease_id)
                await store.insert_lease(lease(lease_id, now))
            case 1:
                lease_id = f"l{len(leases)}"
                leases.append(lease_id)
                await store.insert_lease(
                    lease(lease_id, now, pod_id=pod_id, slot=rng.randrange(2), path="warm", state="ready",
                          ready_at=now),
                    require_ready_pod=True,
                )
            case 2:
                await store.assign_lease(lease_id, pod_id, rng.randrange(2), ClaimPath.COLD_CREATE,
                                         rng.random() < 0.5, now)
            case 3:
                await store.grant_lease(lease_id, now)
            case 4:
                await store.requeue_lease(lease_id, "requeued")
            case 5:
                await store.end_lease(lease_id, rng.choice([LeaseState.RELEASED, LeaseState.EXPIRED]), "ended", now)
            case 6:
                await store.heartbeat(lease_id, now + 60, now)
            case 7:
                await store.update_pod(pod_id, [("phase", rng.choice(PHASES)), ("phase_since", now)])
            case 8:
                await store.begin_stop(pod_id, now, make_standby=rng.random() < 0.5, force=rng.random() < 0.2)
            case 9:
                await store.begin_resume(pod_id, lease_id if rng.random() < 0.5 else None, now)
            case 10:
                await store.mark_unhealthy(pod_id, now)

    try:
        for pod_id in pods:
            await store.add_pod(pod(pod_id))
        for _ in range(40):
            results = await asyncio.gather(*(op() for _ in range(16)), return_exceptions=True)
            for result in results:  # the refusals these writes may meet; anything else is a bug
                if isinstance(result, BaseException):
                    assert isinstance(result, SlotTaken | DuplicateKey | IllegalTransition), repr(result)
            await assert_view_matches_the_database(store)
            held = [(x.pod_id, x.slot) for x in await store.active_leases() if x.pod_id is not None]
            assert len(held) == len(set(held))
        [(total,)] = stored(database_url, "SELECT COUNT(*) FROM leases")
        assert total >= len(created) and sum((await store.lease_counts()).values()) == total
    finally:
        await store.close()


async def test_close_stores_the_heartbeats_still_in_flight(database_url):
    store = await opened(database_url)
    await store.insert_lease(lease("l1"))
    for i in range(50):
        await store.heartbeat("l1", 200.0 + i, 101)
    await store.close()  # no flush() first: close() must write what the view already promised
    reopened = await Store(store.url).open()
    try:
        assert (await reopened.get_lease("l1")).expires_at == 249.0
    finally:
        await reopened.close()


async def test_a_write_that_reads_a_lease_back_keeps_a_heartbeat_not_yet_written(database_url):
    store = await opened(database_url)
    try:
        await store.add_pod(pod("p1"))
        await store.insert_lease(lease("l1"))
        assert await store.assign_lease("l1", "p1", 0, ClaimPath.COLD_CREATE, False, 101)
        await store.heartbeat("l1", 500.0, 102)  # taken, its group commit not run yet
        assert await store.grant_lease("l1", 103)  # RETURNING hands back the row as the database has it
        assert (await store.get_lease("l1")).expires_at == 500.0
        pods, leases = await store.planning_state()
        assert leases[0].expires_at == 500.0 and leases[0].state == LeaseState.READY
        await assert_view_matches_the_database(store)
    finally:
        await store.close()


async def test_an_event_quoting_a_nul_byte_is_stored(database_url):
    store = await opened(database_url)  # a pod's log tail may hold anything; PostgreSQL stores no NUL
    try:
        await store.add_events([(100.0, "pod/p1", "PodError", "boot failed: \x00\x01 garbage")])
        assert [e.message for e in await store.events()] == ["boot failed: \ufffd\x01 garbage"]
    finally:
        await store.close()
