"""Warm-capacity schedules: validation, which windows are open when (time zones, DST, past midnight), the next
edge, the command line's short form, and the policy field that carries them."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from reconciler.domain import Policy
from reconciler.schedule import (
    WarmSchedule,
    WarmWindow,
    describe,
    next_change,
    parse_schedule,
    warm_target,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(year, month, day, hour, minute=0, tz=UTC) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


@pytest.mark.parametrize(("window", "complaint"), [
    (dict(start="9:00", end="17:00", pods=1), "HH:MM"),
    (dict(start="09:60", end="17:00", pods=1), "not a time of day"),
    (dict(start="24:00", end="17:00", pods=1), "before 24:00"),
    (dict(start="09:00", end="24:01", pods=1), "not a time of day"),
    (dict(start="09:00", end="09:00", pods=1), "empty"),
    (dict(start="09:00", end="17:00", pods=0), "greater than or equal to 1"),
    (dict(start="09:00", end="17:00", pods=101), "less than or equal to 100"),
    (dict(start="09:00", end="17:00", pods=1, days=[]), "at least one day"),
    (dict(start="09:00", end="17:00", pods=1, days=["mon", "mon"]), "repeat"),
    (dict(start="09:00", end="17:00", pods=1, days=["monday"]), "unknown day"),
])
def test_bad_windows_are_refused(window, complaint) -> None:
    with pytest.raises(ValidationError, match=complaint):
        WarmWindow(**window)


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        WarmSchedule(timezone="Europe/Atlantis")
    with pytest.raises(ValidationError, match="unknown time zone"):
        WarmSchedule(timezone="../../etc/passwd")
    with pytest.raises(ValidationError, match="at most 50"):
        WarmSchedule(windows=[WarmWindow(start="09:00", end="10:00", pods=1)] * 51)


def test_a_window_is_open_from_its_start_until_before_its_end_on_its_days() -> None:
    s = WarmSchedule(timezone="UTC", windows=[WarmWindow(start="09:00", end="17:00", pods=2, days=["mon", "tue"])])
    assert warm_target(s, at(2026, 1, 5, 8, 59)) == 0  # Monday
    assert warm_target(s, at(2026, 1, 5, 9, 0)) == 2
    assert warm_target(s, at(2026, 1, 5, 16, 59)) == 2
    assert warm_target(s, at(2026, 1, 5, 17, 0)) == 0
    assert warm_target(s, at(2026, 1, 6, 12)) == 2  # Tuesday
    assert warm_target(s, at(2026, 1, 7, 12)) == 0  # Wednesday


def test_overlapping_windows_count_once_the_largest_wins() -> None:
    s = parse_schedule("08:00-18:00=1,12:00-14:00=3")
    assert [warm_target(s, at(2026, 1, 5, h)) for h in (7, 8, 12, 13, 14, 18)] == [0, 1, 3, 3, 1, 0]


def test_a_window_past_midnight_belongs_to_the_day_it_opens() -> None:
    s = parse_schedule("fri/22:00-02:00=1")
    assert warm_target(s, at(2026, 1, 9, 22, 30)) == 1  # Friday night
    assert warm_target(s, at(2026, 1, 10, 1, 59)) == 1  # early Saturday: still Friday's window
    assert warm_target(s, at(2026, 1, 10, 2, 0)) == 0
    assert warm_target(s, at(2026, 1, 9, 1, 0)) == 0  # early Friday: Thursday had no window
    assert warm_target(s, at(2026, 1, 10, 22, 30)) == 0  # Saturday night


def test_all_day_windows_and_a_window_to_midnight() -> None:
    s = parse_schedule("00:00-24:00=1,20:00-24:00=2")
    assert warm_target(s, at(2026, 1, 5, 0)) == 1
    assert warm_target(s, at(2026, 1, 5, 23, 59)) == 2
    assert warm_target(s, at(2026, 1, 6, 0)) == 1


def test_windows_follow_local_time_across_daylight_saving_changes() -> None:
    s = parse_schedule("09:00-17:00=1", "Europe/Berlin")
    # Saturday 28 March 2026 (CET, UTC+1) and Monday 30 March (CEST, UTC+2): 09:00 local both days
    assert warm_target(s, at(2026, 3, 28, 7, 59)) == 0 and warm_target(s, at(2026, 3, 28, 8, 0)) == 1
    assert warm_target(s, at(2026, 3, 30, 6, 59)) == 0 and warm_target(s, at(2026, 3, 30, 7, 0)) == 1
    assert next_change(s, at(2026, 3, 28, 20)) == at(2026, 3, 29, 9, tz=BERLIN)  # the day the clocks change
    assert next_change(s, at(2026, 3, 29, 9, tz=BERLIN)) == at(2026, 3, 29, 17, tz=BERLIN)


def test_next_change_is_the_next_edge_of_any_window() -> None:
    s = parse_schedule("mon-fri/09:00-17:00=2")
    assert next_change(s, at(2026, 1, 5, 8)) == at(2026, 1, 5, 9)
    assert next_change(s, at(2026, 1, 5, 9)) == at(2026, 1, 5, 17)  # strictly after
    assert next_change(s, at(2026, 1, 5, 12)) == at(2026, 1, 5, 17)
    # a weekday window's edges are listed for every day; the target changes only on its days
    assert warm_target(s, at(2026, 1, 10, 9)) == 0
    assert next_change(WarmSchedule(), at(2026, 1, 5, 8)) is None


def test_the_short_form_reads_and_writes_the_same_schedule() -> None:
    s = parse_schedule("mon-fri/08:30-18:00=2, sat+sun/10:00-14:00=1", "Europe/Berlin")
    assert s.timezone == "Europe/Berlin"
    assert [(w.start, w.end, w.pods, w.days) for w in s.windows] == [
        ("08:30", "18:00", 2, ("mon", "tue", "wed", "thu", "fri")),
        ("10:00", "14:00", 1, ("sat", "sun")),
    ]
    assert describe(s) == "mon-fri/08:30-18:00=2,sat+sun/10:00-14:00=1 Europe/Berlin"
    assert parse_schedule("none").windows == () and describe(WarmSchedule()) == "none"
    assert parse_schedule("fri-mon/09:00-10:00=1").windows[0].days == ("mon", "fri", "sat", "sun")
    for bad in ("09:00-17:00", "09:00=1", "someday/09:00-10:00=1", "09:00-17:00=x"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_the_policy_carries_a_schedule_and_reads_policies_stored_before_it() -> None:
    assert Policy().warm_schedule == WarmSchedule()
    policy = Policy(warm_schedule={"timezone": "Europe/Berlin",
                                   "windows": [{"start": "08:30", "end": "18:00", "pods": 2}]})
    again = Policy.model_validate_json(policy.model_dump_json())
    assert again == policy and warm_target(again.warm_schedule, at(2026, 1, 5, 8, 30, tz=BERLIN)) == 2
    stored_before = '{"standby_count": 2, "idle_ttl_s": 60.0}'  # a policy row written before the field existed
    assert Policy.model_validate_json(stored_before).warm_schedule == WarmSchedule()
