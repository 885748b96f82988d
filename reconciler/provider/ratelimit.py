"""RunPod's rate-limit quota as the API reports it, and how much of it the controller may spend now.

REST v2 sends ``RateLimit-Policy`` (per window: quota ``q`` over ``w`` seconds) and ``RateLimit`` (per window:
remaining ``r``, seconds to reset ``t``) on every authenticated answer; the documented example is 60 a minute,
3000 an hour, 50000 a day. A controller that lists every few seconds and then creates, stops and probes on top
must stay under that without being told 429 first, so ``RateBudget`` keeps the last reported state, counts the
calls it sends before their answers arrive, and tells the loop:

- ``allowance()``: how many calls may go out now, keeping ``reserve`` for the next observation;
- ``pace_s()``: the spacing that spreads what is left evenly until each window resets (passes run no closer);
- ``wait_s()``: how long nothing at all may be sent (a spent window, or a 429's ``Retry-After``).

An API that reports no quota (GraphQL) leaves the budget empty: no allowance limit, no pacing. Time is passed
in through ``clock`` (monotonic seconds).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_MEMBER = re.compile(r'\s*"?([A-Za-z0-9_-]+)"?((?:\s*;\s*[A-Za-z]+\s*=\s*[0-9.]+)*)\s*')
_PARAM = re.compile(r";\s*([A-Za-z]+)\s*=\s*([0-9.]+)")


def parse_structured_list(value: str) -> dict[str, dict[str, float]]:
    """``"minute";q=60;w=60, "hour";q=3000;w=3600`` -> ``{"minute": {"q": 60, "w": 60}, ...}``.
    Members that do not parse are skipped: a header we cannot read must not break a call."""
    out: dict[str, dict[str, float]] = {}
    for member in value.split(","):
        match = _MEMBER.fullmatch(member)
        if match is None:
            continue
        out[match[1]] = {k: float(v) for k, v in _PARAM.findall(match[2])}
    return out


@dataclass(slots=True)
class Window:
    name: str
    quota: int
    length_s: float
    remaining: int
    reset_at: float  # clock time when ``remaining`` goes back to ``quota``

    def roll(self, now: float) -> None:
        if now >= self.reset_at:
            periods = int((now - self.reset_at) // self.length_s) + 1
            self.reset_at += periods * self.length_s
            self.remaining = self.quota


class RateBudget:
    def __init__(self, reserve: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        self.reserve = reserve
        self.clock = clock
        self.windows: dict[str, Window] = {}
        self.blocked_until = 0.0  # from a 429's Retry-After

    @property
    def known(self) -> bool:
        return bool(self.windows)

    def update(self, headers: Mapping[str, str]) -> None:
        """Take the quota state from an answer's headers (case-insensitive mapping, e.g. httpx.Headers)."""
        policy = parse_structured_list(headers.get("ratelimit-policy", ""))
        state = parse_structured_list(headers.get("ratelimit", ""))
        now = self.clock()
        for name, params in state.items():
            window = self.windows.get(name)
            quota = policy.get(name, {}).get("q") or (window.quota if window else None)
            length = policy.get(name, {}).get("w") or (window.length_s if window else None)
            if quota is None or length is None or "r" not in params:
                continue
            reset_at = now + params.get("t", length)
            if window is None:
                self.windows[name] = Window(name, int(quota), float(length), int(params["r"]), reset_at)
            else:
                # Answers can arrive out of order: within one window the lowest count seen is the truest.
                window.roll(now)
                same_window = abs(window.reset_at - reset_at) < 2.0
                window.quota, window.length_s = int(quota), float(length)
                window.remaining = min(window.remaining, int(params["r"])) if same_window else int(params["r"])
                window.reset_at = reset_at

    def spend(self) -> None:
        """A call is about to go out: count it before its answer reports it."""
        now = self.clock()
        for window in self.windows.values():
            window.roll(now)
            window.remaining -= 1

    def retry_after(self, seconds: float) -> None:
        self.blocked_until = max(self.blocked_until, self.clock() + max(0.0, seconds))

    def wait_s(self) -> float:
        """Seconds until any call may be sent (0: now)."""
        now = self.clock()
        wait = max(0.0, self.blocked_until - now)
        for window in self.windows.values():
            window.roll(now)
            if window.remaining <= 0:
                wait = max(wait, window.reset_at - now)
        return wait

    def allowance(self) -> int | None:
        """Calls that may go out now beyond ``reserve``; None when the API reports no quota."""
        if not self.windows:
            return None if self.wait_s() <= 0 else 0
        if self.wait_s() > 0:
            return 0
        return max(0, min(w.remaining for w in self.windows.values()) - self.reserve)

    def pace_s(self) -> float:
        """The spacing between calls that lasts every window until it resets."""
        now = self.clock()
        pace = 0.0
        for window in self.windows.values():
            window.roll(now)
            pace = max(pace, (window.reset_at - now) / max(window.remaining, 1))
        return max(pace, self.wait_s())

    def as_dict(self) -> dict[str, dict[str, float]]:
        now = self.clock()
        return {w.name: {"quota": w.quota, "remaining": w.remaining, "reset_s": round(max(0.0, w.reset_at - now), 1)}
                for w in self.windows.values()}
