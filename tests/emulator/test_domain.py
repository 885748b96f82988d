"""The pure core without HTTP: fleet rules and transitions, the ledger, and which calls a fault hits."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runpod_emulator.faults import FaultBook, FaultKind, FaultRule
from runpod_emulator.fleet import (
    HOLDS_GPU,
    TRANSITIONS,
    Fleet,
    FleetError,
    IllegalTransition,
    InvalidRequest,
    NoInstancesAvailable,
    NotEnoughFreeGpus,
    PodEvent,
    PodSpec,
    PodState,
    parse_ports,
)
from runpod_emulator.ledger import Ledger

A40 = "NVIDIA A40"


def fleet(**kwargs: int) -> Fleet:
    return Fleet(random.Random(1), **{"machines_per_type": 2, "gpus_per_machine": 2, **kwargs})


def spec(**kwargs: object) -> PodSpec:
    return PodSpec(**{"name": "p", "image_name": "img", "gpu_type_id": A40, **kwargs})


def test_every_state_event_pair_is_either_in_the_table_or_illegal():
    f = fleet()
    pod = f.create(spec(), now=0)
    f.stop(pod.id, now=1)
    for event in (PodEvent.BOOT, PodEvent.STOP):
        assert (PodState.EXITED, event) not in TRANSITIONS
    with pytest.raises(IllegalTransition):
        pod.apply(PodEvent.BOOT)
    for state, event in itertools.product(PodState, PodEvent):  # every pair: the table's move, or refused
        pod.state = state
        if (state, event) in TRANSITIONS:
            pod.apply(event)
            assert pod.state == TRANSITIONS[(state, event)]
        else:
            with pytest.raises(IllegalTransition):
                pod.apply(event)
            assert pod.state == state
    assert TRANSITIONS[(PodState.EXITED, PodEvent.RESUME)] == PodState.STARTING  # the table itself, spot-checked
    assert not any(state == PodState.TERMINATED for state, _ in TRANSITIONS)  # terminated is final


def test_placement_fills_a_type_then_refuses():
    f = fleet()
    pods = [f.create(spec(), now=0) for _ in range(4)]
    assert len({p.machine_id for p in pods}) == 2
    with pytest.raises(NoInstancesAvailable):
        f.create(spec(), now=0)
    with pytest.raises(NoInstancesAvailable):
        f.create(spec(gpu_count=3), now=0)  # more than one machine holds


def test_stopped_pod_loses_its_gpu_to_other_tenants():
    f = fleet()
    pod = f.create(spec(gpu_count=2), now=0)
    f.stop(pod.id, now=10)
    f.fill(pod.machine_id)
    with pytest.raises(NotEnoughFreeGpus):
        f.resume(pod.id, 2, now=20)
    f.release_tenants(pod.machine_id)
    assert f.resume(pod.id, 0, now=30).gpu_count == 2  # gpuCount 0 keeps the old count


def test_boot_happens_after_the_delay_only():
    f = fleet(boot_seconds=30)
    pod = f.create(spec(ports="8000/tcp"), now=100)
    assert f.due_for_boot(129) == []
    assert f.due_for_boot(130) == [pod]
    f.boot(pod.id, {8000: 40000}, now=130)
    assert pod.state is PodState.RUNNING and pod.public_ports == {8000: 40000}
    f.stop(pod.id, now=200)
    assert pod.public_ports == {} and pod.past_public_ports == {40000}


def test_bad_requests():
    f = fleet()
    with pytest.raises(InvalidRequest):
        f.create(spec(image_name=""), now=0)
    with pytest.raises(InvalidRequest):
        f.create(spec(ports="8000/udp"), now=0)
    assert parse_ports("8000/http, 22/tcp") == parse_ports("8000/http,22/tcp")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["create", "stop", "resume", "terminate", "fill", "free"]),
            st.integers(0, 7),
            st.integers(1, 2),
        ),
        max_size=40,
    )
)
def test_gpu_accounting_stays_consistent(ops: list[tuple[str, int, int]]):
    f = fleet()
    now = 0.0
    for op, index, count in ops:
        now += 1
        pods = list(f.pods.values())
        pod = pods[index % len(pods)] if pods else None
        machine = list(f.machines)[index % len(f.machines)]
        try:
            if op == "create":
                f.create(spec(gpu_count=count), now)
            elif op == "fill":
                f.fill(machine)
            elif op == "free":
                f.release_tenants(machine)
            elif pod is not None:
                getattr(f, op)(*((pod.id, count, now) if op == "resume" else (pod.id, now)))
        except FleetError:
            pass
        for m in f.machines.values():
            assert m.free >= 0
            holding = {p.id: p.gpu_count for p in f.pods.values() if p.machine_id == m.id and p.state in HOLDS_GPU}
            assert m.pod_gpus == holding


def test_ledger_integrates_rates_between_changes():
    ledger = Ledger()
    ledger.set_rates("a", now=0, gpu_usd_per_h=2.0, storage_usd_per_h=0.5)
    ledger.set_rates("a", now=1800, gpu_usd_per_h=0.0, storage_usd_per_h=1.0)
    bill = ledger.bill(now=5400)
    assert bill.by_pod["a"].gpu_usd == pytest.approx(1.0)
    assert bill.by_pod["a"].storage_usd == pytest.approx(0.25 + 1.0)


def test_fault_counts_and_wildcards():
    book = FaultBook(random.Random(0))
    book.add(FaultRule(op="podResume", kind=FaultKind.HOST_GPU_BUSY, count=2))
    book.add(FaultRule(op="*", kind=FaultKind.AUTH))
    assert book.draw(["podResume"]).rule.kind is FaultKind.HOST_GPU_BUSY
    hit = book.draw(["myself"])
    assert hit is not None and (hit.rule.kind, hit.field) == (FaultKind.AUTH, "myself")
    assert book.draw(["myself"]) is None  # the wildcard rule fired its one time
    assert book.draw(["podResume"]) is not None
    assert book.draw(["podResume"]) is None
