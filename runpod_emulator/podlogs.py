"""Pod logs as REST's ``GET /v2/pods/{id}/logs`` serves them: ``container`` and ``system`` lines with times.

``container`` lines are what the pod's process wrote (the process runner's log file, the simulated runner's
messages, an admin crash's last words), collected by the emulator whenever it looks and stamped with the
emulator's clock at that moment; ``system`` lines are the emulator's own lifecycle notes (created, container
started, stopped, exited with code N). Each line gets a sequence number, so the SSE event id
``<ts>/<seq:012d>`` (the shape of RunPod's example) orders lines written in the same second and lets a
client resume with ``Last-Event-ID``. At most ``MAX_LINES`` per pod are kept. Pure: time is passed in.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

MAX_LINES = 5000  # RunPod's maximum ``tail``


class LogSource(StrEnum):
    CONTAINER = "container"
    SYSTEM = "system"


def iso(ts: float) -> str:
    """RFC 3339 in UTC, whole seconds when the time has no fraction, milliseconds otherwise."""
    when = datetime.fromtimestamp(ts, UTC)
    if when.microsecond == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """An RFC 3339 time (``Z`` or an offset) as epoch seconds; ValueError if it is not one."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class LogLine:
    ts: float
    seq: int
    source: LogSource
    line: str

    @property
    def event_id(self) -> str:
        return f"{iso(self.ts)}/{self.seq:012d}"

    def sse(self) -> str:
        data = json.dumps({"ts": iso(self.ts), "source": self.source.value, "line": self.line})
        return f"id: {self.event_id}\ndata: {data}\n\n"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a client resumes: after a sequence number (from an event id), or from a time."""

    after_seq: int | None = None
    since: float | None = None

    @classmethod
    def from_event_id(cls, text: str) -> Cursor:
        stamp, _, seq = text.partition("/")
        if seq.isdigit():
            return cls(after_seq=int(seq))
        return cls(since=parse_iso(stamp))


class PodLogs:
    def __init__(self) -> None:
        self._lines: dict[str, deque[LogLine]] = {}
        self._seq = 0

    def append(self, pod_id: str, source: LogSource, line: str, now: float) -> None:
        self._seq += 1
        lines = self._lines.setdefault(pod_id, deque(maxlen=MAX_LINES))
        lines.append(LogLine(now, self._seq, source, line.rstrip("\r\n")))

    def select(
        self, pod_id: str, *, source: LogSource | None = None, tail: int = 100, cursor: Cursor | None = None
    ) -> list[LogLine]:
        """The backfill a request asks for: lines after the cursor, or else the last ``tail`` lines."""
        lines = [x for x in self._lines.get(pod_id, ()) if source is None or x.source is source]
        if cursor is not None and cursor.after_seq is not None:
            return [x for x in lines if x.seq > cursor.after_seq]
        if cursor is not None and cursor.since is not None:
            return [x for x in lines if x.ts >= cursor.since]
        return lines[-tail:] if tail else []

    def after(self, pod_id: str, seq: int, source: LogSource | None = None) -> list[LogLine]:
        """Lines written after ``seq``: what a live stream sends next."""
        return [x for x in self._lines.get(pod_id, ()) if x.seq > seq and (source is None or x.source is source)]

    def forget(self, pod_id: str) -> None:
        self._lines.pop(pod_id, None)

    def last_seq(self) -> int:
        return self._seq

    def clear(self) -> None:
        self._lines.clear()
