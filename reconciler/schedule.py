"""Scheduled warm capacity: time-of-day windows during which pods are kept running and Ready ahead of demand.

Part of the policy (``Policy.warm_schedule``), so it lives in the database, is changed through
``PATCH /v1/policy`` and applies on the next pass. ``planning`` asks ``warm_target(schedule, now)`` how many
idle Ready pods the schedule wants at ``now``; the simulator also asks ``next_change`` when that may change.

A window names local wall-clock times in the schedule's IANA time zone (``Europe/Berlin``), so it follows
daylight saving time. ``pods`` is the number of pods kept Ready *with no lease* while the window is open: the
next sessions start on them at once (the ``warm`` path), and when one is taken another is started to take its
place. Windows that overlap count once: the largest ``pods`` among the open windows wins. A window whose end
is earlier than its start runs past midnight; ``days`` names the day it opens on.

Pure: the clock is passed in. ``zoneinfo`` needs the system time-zone database or the ``tzdata`` package
(a dependency, because slim images have no ``/usr/share/zoneinfo``).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_DAY_RANGE = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)(?:-(mon|tue|wed|thu|fri|sat|sun))?$")
_CLOCK = re.compile(r"^(\d{2}):(\d{2})$")
MAX_WINDOWS = 50


def clock_seconds(text: str) -> int:
    """Seconds after local midnight of ``HH:MM`` (``24:00`` is the end of the day)."""
    match = _CLOCK.match(text)
    if not match:
        raise ValueError(f"time {text!r} must be HH:MM (24-hour clock)")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"time {text!r} is not a time of day (00:00 to 24:00)")
    return hours * 3600 + minutes * 60


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The named time zone; ``ValueError`` (which pydantic reports as a 422) if there is none by that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')") from e


class WarmWindow(BaseModel):
    """Keep ``pods`` idle Ready pods from ``start`` to ``end`` (local time) on ``days``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(description="HH:MM, local time in the schedule's time zone")
    end: str = Field(description="HH:MM (24:00 = midnight); earlier than start: the window runs past midnight")
    pods: int = Field(ge=1, le=100, description="idle Ready pods kept while the window is open")
    days: tuple[str, ...] = Field(DAYS, description="days the window opens on: mon..sun")

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        if clock_seconds(value) >= 86400:
            raise ValueError("start must be before 24:00")
        return value

    @field_validator("end")
    @classmethod
    def _end(cls, value: str) -> str:
        clock_seconds(value)
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        days = tuple(d.strip().lower() for d in value)
        if not days:
            raise ValueError("days must name at least one day")
        unknown = [d for d in days if d not in DAYS]
        if unknown:
            raise ValueError(f"unknown day {unknown[0]!r}: use {', '.join(DAYS)}")
        if len(set(days)) != len(days):
            raise ValueError("days must not repeat a day")
        return tuple(d for d in DAYS if d in days)  # in week order, so equal windows compare equal

    @model_validator(mode="after")
    def _not_empty(self) -> WarmWindow:
        if clock_seconds(self.start) == clock_seconds(self.end):
            raise ValueError(f"window {self.start}-{self.end} is empty: start and end must differ")
        return self

    def is_open(self, weekday: int, second: float) -> bool:
        """Open at ``second`` after local midnight on ``weekday`` (0 = Monday)?"""
        start, end = clock_seconds(self.start), clock_seconds(self.end)
        if start < end:
            return DAYS[weekday] in self.days and start <= second < end
        # past midnight: the evening part on an opening day, the morning part on the day after one
        return (DAYS[weekday] in self.days and second >= start) or (
            DAYS[(weekday - 1) % 7] in self.days and second < end
        )


class WarmSchedule(BaseModel):
    """Windows of warm capacity in one named time zone. No windows: no scheduled capacity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field("UTC", description="IANA time zone the windows' times are in")
    windows: tuple[WarmWindow, ...] = Field((), max_length=MAX_WINDOWS)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        value = value.strip()
        zone(value)
        return value


def warm_target(schedule: WarmSchedule, now: float) -> int:
    """Idle Ready pods the schedule wants at ``now`` (Unix seconds): the largest ``pods`` of the open windows."""
    if not schedule.windows:
        return 0
    local = datetime.fromtimestamp(now, zone(schedule.timezone))
    second = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    weekday = local.weekday()
    return max((w.pods for w in schedule.windows if w.is_open(weekday, second)), default=0)


def next_change(schedule: WarmSchedule, now: float) -> float | None:
    """The first window boundary after ``now`` (the target may change there), or None without windows."""
    if not schedule.windows:
        return None
    tz = zone(schedule.timezone)
    today = datetime.fromtimestamp(now, tz).date()
    best: float | None = None
    for offset in range(-1, 9):  # a week ahead, and yesterday for windows that ran past midnight
        day = today + timedelta(days=offset)
        for window in schedule.windows:
            for text in (window.start, window.end):
                at = _local_instant(day, clock_seconds(text), tz)
                if at > now and (best is None or at < best):
                    best = at
        if best is not None and offset >= 1:
            return best  # boundaries of later days come later still
    return best


def _local_instant(day: date, second: int, tz: ZoneInfo) -> float:
    """Unix time of ``second`` after local midnight on ``day`` (a wall-clock time, across DST changes)."""
    day = day + timedelta(days=second // 86400)
    second %= 86400
    return datetime(day.year, day.month, day.day, second // 3600, second % 3600 // 60, tzinfo=tz).timestamp()


def parse_schedule(text: str, timezone: str = "UTC") -> WarmSchedule:
    """A schedule from the command line's short form: comma-separated ``[DAYS/]HH:MM-HH:MM=PODS``, where
    DAYS is ``mon-fri``, ``sat`` or ``mon+wed+fri``. ``""`` or ``none``: no windows. Raises ``ValueError``."""
    windows = []
    for part in (p.strip() for p in text.split(",")):
        if not part or part.lower() == "none":
            continue
        days: tuple[str, ...] = DAYS
        if "/" in part:
            day_text, _, part = part.partition("/")
            days = _parse_days(day_text)
        span, eq, pods = part.partition("=")
        start, dash, end = span.partition("-")
        if not (eq and dash and pods.strip().isdigit()):
            raise ValueError(f"schedule window {part!r} must look like [mon-fri/]09:00-17:00=2")
        windows.append(WarmWindow(start=start.strip(), end=end.strip(), pods=int(pods), days=days))
    return WarmSchedule(timezone=timezone, windows=tuple(windows))


def _parse_days(text: str) -> tuple[str, ...]:
    days: list[str] = []
    for piece in text.lower().split("+"):
        match = _DAY_RANGE.match(piece.strip())
        if not match:
            raise ValueError(f"days {text!r} must look like mon-fri, sat or mon+wed+fri")
        first = DAYS.index(match[1])
        last = DAYS.index(match[2]) if match[2] else first
        span = range(first, last + 1) if first <= last else [*range(first, 7), *range(0, last + 1)]
        days.extend(DAYS[i] for i in span)
    return tuple(dict.fromkeys(days))


def describe(schedule: WarmSchedule) -> str:
    """The short form ``parse_schedule`` reads (for tables and reports)."""
    if not schedule.windows:
        return "none"
    parts = []
    for w in schedule.windows:
        days = "" if w.days == DAYS else ("mon-fri/" if w.days == DAYS[:5] else "+".join(w.days) + "/")
        parts.append(f"{days}{w.start}-{w.end}={w.pods}")
    return ",".join(parts) + ("" if schedule.timezone == "UTC" else f" {schedule.timezone}")
