"""The pure parts behind REST v2, without HTTP: billing buckets, the ledger's rate history, pod logs, body
validation, operation names, stock levels and tenant churn."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runpod_emulator.billing import BucketSize, bucket_start, next_bucket, records, resolve_window
from runpod_emulator.catalogue import BY_ID
from runpod_emulator.fleet import Fleet, Machine, PodSpec
from runpod_emulator.ledger import Ledger
from runpod_emulator.operations import Api, Op, RequestCounter, op_named
from runpod_emulator.podlogs import Cursor, LogSource, PodLogs, iso, parse_iso
from runpod_emulator.rest_validation import CREATE_POD, check
from runpod_emulator.stock import StockLevel, stock_level
from runpod_emulator.tenants import churn

A40 = BY_ID["NVIDIA A40"]


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("size", "at", "start", "after"),
    [
        (BucketSize.HOUR, "2026-03-04 05:06:07", "2026-03-04 05:00:00", "2026-03-04 06:00:00"),
        (BucketSize.DAY, "2026-03-04 05:06:07", "2026-03-04 00:00:00", "2026-03-05 00:00:00"),
        (BucketSize.WEEK, "2026-03-04 05:06:07", "2026-03-02 00:00:00", "2026-03-09 00:00:00"),  # Monday
        (BucketSize.MONTH, "2026-12-31 23:59:59", "2026-12-01 00:00:00", "2027-01-01 00:00:00"),
        (BucketSize.YEAR, "2028-02-29 12:00:00", "2028-01-01 00:00:00", "2029-01-01 00:00:00"),
    ],
)
def test_buckets_align_in_utc(size, at, start, after):
    assert bucket_start(ts(at), size) == ts(start)
    assert next_bucket(ts(start), size) == ts(after)


def test_windows_snap_outward_and_last_n_ends_with_the_current_bucket():
    now = ts("2026-03-04 05:06:07")
    window = resolve_window(now, BucketSize.DAY, ts("2026-03-01 12:00:00"), ts("2026-03-03 00:00:00"))
    assert (window.start, window.end) == (ts("2026-03-01 00:00:00"), ts("2026-03-03 00:00:00"))  # on a boundary
    last = resolve_window(now, BucketSize.MONTH, last_n=3)
    assert (last.start, last.end) == (ts("2026-01-01 00:00:00"), ts("2026-04-01 00:00:00"))
    assert len(last.buckets()) == 3
    default = resolve_window(now, BucketSize.DAY)
    assert default.start == ts("2026-02-02 00:00:00") and default.end == ts("2026-03-05 00:00:00")


def test_ledger_charges_any_range_from_the_rate_history():
    ledger = Ledger()
    ledger.set_rates("a", 0, 3.6, 0.36)  # $/h: 0.001 $/s and 0.0001 $/s
    ledger.set_rates("a", 100, 0.0, 0.72)
    ledger.set_rates("a", 200, 0.0, 0.0)
    assert ledger.charge("a", 0, 100).gpu_usd == pytest.approx(0.1)
    assert ledger.charge("a", 50, 150).gpu_usd == pytest.approx(0.05)
    assert ledger.charge("a", 50, 150).storage_usd == pytest.approx(0.005 + 0.01)
    assert ledger.charge("a", 300, 10_000).total_usd == 0
    assert ledger.bill(10_000).by_pod["a"].total_usd == pytest.approx(0.1 + 0.01 + 0.02)
    ledger.set_rates("b", 500, 1.0, 0.0)
    ledger.set_rates("b", 500, 2.0, 0.0)  # two changes at one instant: the last one holds
    assert ledger.charge("b", 500, 4100).gpu_usd == pytest.approx(2.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5000), st.floats(0, 10), st.floats(0, 1)), min_size=1, max_size=12),
       st.floats(0, 20_000))
def test_bucket_records_add_up_to_the_whole_bill(changes, now):
    ledger = Ledger()
    for at, gpu, storage in sorted(changes):
        ledger.set_rates("p", at, gpu, storage)
    window = resolve_window(now, BucketSize.HOUR, start=0.0, end=now + 1)
    found = records(ledger, window, now)
    assert sum(r.total_usd for r in found) == pytest.approx(ledger.bill(now).total_usd, rel=1e-9, abs=1e-12)


def test_pod_logs_select_tail_source_and_cursor():
    logs = PodLogs()
    for i in range(6):
        logs.append("p", LogSource.CONTAINER if i % 2 else LogSource.SYSTEM, f"line {i}\n", now=100.0 + i)
    logs.append("q", LogSource.SYSTEM, "other pod", now=200.0)
    assert [x.line for x in logs.select("p", tail=2)] == ["line 4", "line 5"]
    assert [x.line for x in logs.select("p", source=LogSource.CONTAINER)] == ["line 1", "line 3", "line 5"]
    assert logs.select("p", tail=0) == []
    third = logs.select("p")[2]
    assert third.event_id == "1970-01-01T00:01:42Z/000000000003"
    assert [x.line for x in logs.select("p", cursor=Cursor.from_event_id(third.event_id))] == ["line 3", "line 4",
                                                                                               "line 5"]
    assert [x.line for x in logs.select("p", cursor=Cursor.from_event_id("1970-01-01T00:01:44Z"))] == [
        "line 4", "line 5"]
    assert logs.after("p", 5) == [logs.select("p")[-1]]
    assert '"line": "line 0"' in logs.select("p")[0].sse() and logs.select("p")[0].sse().endswith("\n\n")
    with pytest.raises(ValueError):
        Cursor.from_event_id("not a time")


def test_times_round_trip():
    assert iso(1_767_225_600.0) == "2026-01-01T00:00:00Z"
    assert iso(1_767_225_600.25) == "2026-01-01T00:00:00.250Z"
    assert parse_iso("2026-01-01T01:00:00+01:00") == 1_767_225_600.0
    with pytest.raises(ValueError):
        parse_iso("2026-01-01T00:00:00")  # no zone


def test_validation_lists_every_violation_in_runpods_words():
    assert check({"name": "n", "image": "i", "gpu": {"id": "g"}}, CREATE_POD) == []
    assert check([], CREATE_POD) == ["$: expected object, but got array"]
    errors = check({"bogus": 1, "gpu": {"id": 3, "count": True}, "ports": [8000], "disk": 2.5}, CREATE_POD)
    assert errors == [
        "$: missing properties: 'name'",
        "$: additional properties 'bogus' not allowed",
        "$.disk: expected integer, but got number",
        "$.ports[0]: expected string, but got integer",
        "$.gpu.id: expected string, but got integer",
        "$.gpu.count: expected integer, but got boolean",
    ]
    assert check({"name": "n", "image": "i", "disk": 20.0, "gpu": {"id": "g"}}, CREATE_POD) == []  # 20.0 is 20


def test_operation_names():
    assert op_named("podFindAndDeployOnDemand") is Op.CREATE_POD
    assert op_named("start") is op_named("podResume") is Op.RESUME_POD
    assert op_named("catalog") is op_named("gpuTypes") is Op.GPU_TYPES
    assert op_named("myself") is Op.LIST_PODS and op_named("billing") is Op.BILLING
    assert op_named("podRestart") is None
    counter = RequestCounter()
    counter.count(Api.GRAPHQL, ["list_pods", "list_pods", "get_pod"])
    counter.count(Api.REST, [])
    assert counter.as_json()["by_api"] == {
        "graphql": {"total": 2, "ops": {"get_pod": 1, "list_pods": 1}},
        "rest": {"total": 1, "ops": {"invalid": 1}},
    }


def test_stock_levels():
    fleet = Fleet(random.Random(1), machines_per_type=2, gpus_per_machine=5)
    machines = fleet.machines_of("NVIDIA A40")
    assert stock_level(machines) is StockLevel.HIGH and StockLevel.HIGH.graphql == "High"
    for _ in range(6):
        fleet.create(PodSpec(name="p", image_name="i", gpu_type_id="NVIDIA A40"), now=0)
    assert stock_level(machines) is StockLevel.MEDIUM  # 4 of 10 free
    assert stock_level(machines, count=5) is StockLevel.NONE
    fleet.create(PodSpec(name="p", image_name="i", gpu_type_id="NVIDIA A40", gpu_count=3), now=0)
    assert stock_level(machines) is StockLevel.LOW and stock_level(machines, offered=False) is StockLevel.NONE
    assert StockLevel.NONE.graphql is None


def test_churn_is_seeded_and_moves_gpus_both_ways():
    def run(seed: int) -> list[int]:
        machines = [Machine(f"m{i}", A40, 8) for i in range(3)]
        rng = random.Random(seed)
        held = []
        for _ in range(20):
            churn(machines, rng, 600, take_per_hour=3, release_per_hour=3)
            held.append(sum(m.tenant_gpus for m in machines))
            assert all(0 <= m.tenant_gpus <= m.gpus for m in machines)
        return held

    first = run(1)
    assert first == run(1) and first != run(2)
    assert max(first) > 0 and any(b < a for a, b in itertools.pairwise(first))  # taken and given back
    assert churn([Machine("m", A40, 8)], random.Random(0), 3600, take_per_hour=0, release_per_hour=0) == []
