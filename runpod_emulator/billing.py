"""Pod billing records in time buckets, as REST's ``GET /v2/billing/pods`` reports them, from the ledger.

The query window is resolved as RunPod documents it: ``startTime`` (default 30 days ago) snapped down to the
start of its bucket, ``endTime`` (default now) snapped up to the end of its bucket unless already on a
boundary, or ``lastN`` buckets ending with the current, in-progress one. Buckets are aligned in UTC: hours,
midnights, weeks from Monday 00:00 (ISO weeks; RunPod does not say which day a week starts), the 1st of a
month, January 1st. One record per pod per bucket in which the pod was charged anything; amounts are not
rounded (RunPod's rounding is not recorded). Pure: the ledger and ``now`` are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from runpod_emulator.ledger import Ledger

DEFAULT_LOOKBACK_S = 30 * 86400.0


class BucketSize(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def bucket_start(ts: float, size: BucketSize) -> float:
    when = _dt(ts)
    if size is BucketSize.HOUR:
        start = when.replace(minute=0, second=0, microsecond=0)
    elif size is BucketSize.DAY:
        start = when.replace(hour=0, minute=0, second=0, microsecond=0)
    elif size is BucketSize.WEEK:
        start = when.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=when.weekday())
    elif size is BucketSize.MONTH:
        start = when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        start = when.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp()


def next_bucket(start: float, size: BucketSize) -> float:
    """The start of the bucket after the one beginning at ``start``."""
    when = _dt(start)
    if size is BucketSize.HOUR:
        return (when + timedelta(hours=1)).timestamp()
    if size is BucketSize.DAY:
        return (when + timedelta(days=1)).timestamp()
    if size is BucketSize.WEEK:
        return (when + timedelta(weeks=1)).timestamp()
    if size is BucketSize.MONTH:
        year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
        return when.replace(year=year, month=month).timestamp()
    return when.replace(year=when.year + 1).timestamp()


def previous_bucket(start: float, size: BucketSize) -> float:
    return bucket_start(start - 1e-3, size)


def snap_end(ts: float, size: BucketSize) -> float:
    start = bucket_start(ts, size)
    return ts if start == ts else next_bucket(start, size)


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float
    size: BucketSize

    def buckets(self) -> list[tuple[float, float]]:
        edges, at = [], self.start
        while at < self.end:
            after = next_bucket(at, self.size)
            edges.append((at, after))
            at = after
        return edges


def resolve_window(
    now: float, size: BucketSize, start: float | None = None, end: float | None = None, last_n: int | None = None
) -> Window:
    """The aligned query window; ``last_n`` excludes ``start``/``end`` (the caller refuses both at once)."""
    if last_n is not None:
        current = bucket_start(now, size)
        first = current
        for _ in range(last_n - 1):
            first = previous_bucket(first, size)
        return Window(first, next_bucket(current, size), size)
    start = bucket_start(now - DEFAULT_LOOKBACK_S if start is None else start, size)
    return Window(start, snap_end(now if end is None else end, size), size)


@dataclass(frozen=True, slots=True)
class Record:
    start: float
    end: float
    pod_id: str
    gpu_usd: float
    disk_usd: float

    @property
    def total_usd(self) -> float:
        return self.gpu_usd + self.disk_usd


def records(ledger: Ledger, window: Window, now: float, pod_id: str | None = None) -> list[Record]:
    """One record per pod per bucket with a charge; time after ``now`` has not been billed yet."""
    pods = [pod_id] if pod_id is not None else ledger.pod_ids()
    found = []
    for start, end in window.buckets():
        if start >= now:
            break
        for pid in pods:
            charge = ledger.charge(pid, start, min(end, now))
            if charge.total_usd > 0:
                found.append(Record(start, end, pid, charge.gpu_usd, charge.storage_usd))
    return found
