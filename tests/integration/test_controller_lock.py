"""One controller per database, on a SQLite file and on PostgreSQL: a second store or controller refuses,
naming the holder; the claim is free again after a clean close, when it goes stale, or at once when its
holder's process is gone; a holder that lost its claim stops writing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import httpx
import pytest

from reconciler.app import create_app
from reconciler.claim import Claimant, process_key
from reconciler.domain import Policy
from reconciler.store import Store, StoreLocked, migrate
from runpod_emulator.runner import allocate_port

from .harness import COMPANION, EMULATOR_KEY, controller_settings, until


@pytest.fixture
def database_url(any_database):
    return any_database


class FakeClock:
    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


A = Claimant(host="host-a", pid=111, process="", api_url="http://10.0.0.1:8080")
B = Claimant(host="host-b", pid=222, process="")


async def store_on(url: str) -> Store:
    await asyncio.to_thread(migrate, url)
    return Store(url)


async def test_a_second_store_is_refused_naming_the_holder_until_the_first_closes(database_url):
    first, second = await store_on(database_url), await store_on(database_url)
    try:
        await first.claim(A)
        with pytest.raises(StoreLocked) as refused:
            await second.claim(B)
        assert str(refused.value).startswith(
            "another controller holds this database: host host-a pid 111 (API http://10.0.0.1:8080) since ")
        assert str(refused.value).endswith("; stop it or wait 30 s after it died")
        assert refused.value.holder.host == "host-a"
        await first.open()
        await first.set_policy(Policy(standby_count=3))  # the holder writes as before
        await first.close()  # a clean close releases the claim
        await second.claim(B)
        await second.open()
        assert second.policy.standby_count == 3
    finally:
        await first.close()
        await second.close()


async def test_a_stale_claim_is_taken_over_and_its_old_holder_stops_writing(database_url):
    clock = FakeClock()
    old, new, third = [await store_on(database_url) for _ in range(3)]
    try:
        await old.claim(A, clock=clock, renew_s=10.0)
        await old.open()
        clock.now += 25.0
        await old.renew_claim()  # renewed: fresh again
        clock.now += 25.0
        with pytest.raises(StoreLocked, match="last renewed 25 s ago"):
            await new.claim(B, clock=clock, renew_s=10.0)
        clock.now += 6.0  # 31 s without a renewal: stale (3 x 10 s)
        with pytest.raises(StoreLocked, match="last renewed 31 s ago; not writing"):
            await old.set_policy(Policy())  # overdue: the old holder fences itself before anyone takes over
        await new.claim(B, clock=clock, renew_s=10.0)
        with pytest.raises(StoreLocked, match="lost the database to another controller \\(host host-b pid 222"):
            await old.renew_claim()
        with pytest.raises(StoreLocked, match="lost the database"):
            await old.set_policy(Policy())
        assert old.claim_lost is not None
        await old.close()  # releases nothing: the row is the new holder's
        with pytest.raises(StoreLocked, match="host host-b pid 222"):
            await third.claim(A, clock=clock)
    finally:
        for store in (old, new, third):
            await store.close()


async def test_a_claim_whose_process_is_gone_is_taken_over_at_once(database_url):
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import sys; sys.stdin.read()",
                                                 stdin=asyncio.subprocess.PIPE)
    dead = Claimant(host=socket.gethostname(), pid=child.pid, process=process_key(child.pid))
    alive = Claimant(host=socket.gethostname(), pid=os.getpid(), process=process_key(os.getpid()))
    assert dead.process and alive.process
    first, second, third = [await store_on(database_url) for _ in range(3)]
    try:
        await first.claim(dead)
        with pytest.raises(StoreLocked, match=f"pid {child.pid} "):  # its process still runs
            await second.claim(alive)
        await child.communicate(b"")  # it ends (as a SIGKILLed controller would), and is reaped
        await second.claim(alive)  # no 30 s wait: this machine can see that the holder is gone
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()} "):  # a live holder is never taken over
            await third.claim(dead)
    finally:
        for store in (first, second, third):
            await store.close()


async def test_a_second_controller_refuses_to_start_naming_the_first(make_controller, emulator, database_url):
    first = await make_controller()
    second = create_app(controller_settings(emulator.url, database_url, public_url="http://second:1"))
    with pytest.raises(StoreLocked, match=f"another controller holds this database: host {socket.gethostname()} "
                                          f"pid {os.getpid()} \\(API http://127.0.0.1:8080\\)"):
        async with second.router.lifespan_context(second):
            pass
    async with httpx.AsyncClient(base_url=first.url) as http:
        assert (await http.get("/healthz")).status_code == 200  # the first runs on, undisturbed
    assert first.controller.store.claim_lost is None
    await first.stop()
    replacement = await make_controller()  # once the first has stopped, a new one starts
    async with httpx.AsyncClient(base_url=replacement.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_a_second_daemon_exits_naming_the_first_and_the_database_is_free_once_it_is_killed(emulator, tmp_path):
    """Real processes (``python -m reconciler run``, SQLite: the other tests cover PostgreSQL in process): the
    second stops at once, naming the first's pid; once the first is SIGKILLed the database can be claimed at
    once, without waiting for its claim to go stale."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'harper.db'}"
    daemons: list[asyncio.subprocess.Process] = []

    async def daemon() -> tuple[asyncio.subprocess.Process, int]:
        port = allocate_port("127.0.0.1")
        env = dict(os.environ) | {
            "HARPER_RUNPOD_API_KEY": EMULATOR_KEY, "HARPER_RUNPOD_API_URL": emulator.url,
            "HARPER_DATABASE_URL": url, "HARPER_API_TOKEN": COMPANION, "HARPER_ADMIN_TOKEN": "admin",
            "HARPER_PORT": str(port), "HARPER_GPU_TYPES": "NVIDIA L4", "HARPER_STANDBY_COUNT": "0",
        }
        with open(tmp_path / f"daemon-{len(daemons)}.log", "w") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "reconciler", "run", env=env, stdout=log, stderr=log)
        daemons.append(proc)
        return proc, port

    async def healthy() -> bool:
        assert first.returncode is None, "the first daemon exited"
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"http://127.0.0.1:{port}/healthz", timeout=1)).status_code == 200
        except httpx.TransportError:
            return False

    store = Store(url)
    try:
        first, port = await daemon()
        await until(healthy, timeout=60)
        second, _ = await daemon()
        await asyncio.wait_for(second.wait(), 60)  # it stops by itself
        output = (tmp_path / "daemon-1.log").read_text()
        assert f"another controller holds this database: host {socket.gethostname()} pid {first.pid} " in output
        assert second.returncode == 2 and "Traceback" not in output  # one line, before anything started
        assert output.strip().splitlines()[-1].startswith("reconciler: another controller holds this database")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        await store.claim(Claimant.here())  # no 30 s wait: this machine sees that the holder is gone
    finally:
        await store.close()
        for proc in daemons:
            if proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
