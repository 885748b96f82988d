"""The model gate caps concurrent calls, serves finals first, and holds a slot until its thread ends."""

import asyncio
import threading
import time

import pytest

from gpu_server.gate import BACKGROUND, URGENT, ModelGate


async def test_capacity_and_priority_order():
    gate = ModelGate(1)
    release = threading.Event()
    order: list[str] = []
    inside = 0
    peak = 0

    def work(name: str) -> str:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        if name == "first":
            release.wait(5)
        order.append(name)
        inside -= 1
        return name

    first = asyncio.create_task(gate.run(work, "first"))
    await asyncio.sleep(0.05)
    partial = asyncio.create_task(gate.run(work, "partial", priority=BACKGROUND))
    await asyncio.sleep(0.01)
    final = asyncio.create_task(gate.run(work, "final", priority=URGENT))
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(first, partial, final) == ["first", "partial", "final"]
    assert order == ["first", "final", "partial"]
    assert peak == 1


async def test_cancelled_caller_keeps_the_slot_until_the_thread_finishes():
    gate = ModelGate(1)
    running = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        running.set()
        time.sleep(0.3)
        finished.set()

    task = asyncio.create_task(gate.run(slow))
    await asyncio.to_thread(running.wait, 5)
    task.cancel()
    started_next = time.monotonic()
    await gate.run(lambda: None)
    assert finished.is_set()  # the next call waited for the abandoned thread
    assert time.monotonic() - started_next > 0.1


async def test_deadlines_are_served_earliest_first():
    """TTS asks with the time its listener runs dry: the nearest gap goes first, whatever the arrival order."""
    gate = ModelGate(1)
    release = threading.Event()
    order: list[float] = []

    def work(deadline: float) -> None:
        if deadline == 0:
            release.wait(5)
        order.append(deadline)

    blocker = asyncio.create_task(gate.run(work, 0.0, priority=0.0))
    await asyncio.sleep(0.05)
    waiting = []
    for deadline in (1012.5, 1000.25, 1003.0):
        waiting.append(asyncio.create_task(gate.run(work, deadline, priority=deadline)))
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(blocker, *waiting)
    assert order == [0.0, 1000.25, 1003.0, 1012.5]


async def test_the_gate_learns_how_long_a_unit_of_work_takes():
    """TTS orders pieces by their expected synthesis time: measured per character as the model is shared now,
    not a constant from another machine."""
    gate = ModelGate(1)
    assert gate.expected_s(100, 0.007) == pytest.approx(0.7)  # nothing seen yet: the caller's default
    for _ in range(12):
        await gate.run(time.sleep, 0.05, work=10)  # 5 ms per unit
    await gate.run(time.sleep, 0.05)  # no work given: not learned from
    assert 0.45 <= gate.expected_s(100, 0.007) <= 0.6


async def test_idle_waits_for_the_thread_of_an_abandoned_call():
    """When the last stream closes, the server gives freed memory back once more after abandoned synthesis
    has finished: ``idle`` is when no call holds a slot, cancelled callers' threads included."""
    gate = ModelGate(2)
    assert not gate.busy
    await asyncio.wait_for(gate.idle(), 1)
    running = threading.Event()

    def slow() -> None:
        running.set()
        time.sleep(0.3)

    task = asyncio.create_task(gate.run(slow))
    await asyncio.to_thread(running.wait, 5)
    task.cancel()  # the caller went away; its thread goes on
    assert gate.busy
    started = time.monotonic()
    await asyncio.wait_for(gate.idle(), 5)
    assert time.monotonic() - started > 0.1 and not gate.busy
