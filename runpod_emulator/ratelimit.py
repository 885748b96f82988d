"""REST v2 rate limiting: a per-account quota in several windows, told to the client in IETF headers.

Every authenticated REST answer carries ``RateLimit-Policy`` (each window's quota ``q`` and length ``w``)
and ``RateLimit`` (what is left, ``r``, and the seconds until the window resets, ``t``), e.g.

    RateLimit-Policy: "minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400
    RateLimit:        "minute";r=59;t=60, "hour";r=2999;t=3600, "day";r=49999;t=86400

and a request arriving when any window is spent is refused with 429 and ``Retry-After`` (whole seconds until
the longest-spent window resets). Refused requests do not use quota. Each window is fixed: it opens at the
first request after the previous one closed and lasts ``w`` seconds. GraphQL has no documented limits and is
not limited here.

A policy is written ``QUOTA/WINDOW[,QUOTA/WINDOW...]`` with ``WINDOW`` one of ``second``, ``minute``,
``hour``, ``day`` or a number of seconds (``5/10`` or ``5/10s``: five per ten seconds, named ``"10s"``);
``off`` means no limit and no headers (RunPod omits them for rate-limit-exempt callers). Pure: time is
passed in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

DOCUMENTED_EXAMPLE = "60/minute,3000/hour,50000/day"
NAMED_WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_ITEM = re.compile(r"^(\d+)/(\w+)$")


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    name: str
    quota: int
    seconds: int


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    windows: tuple[WindowPolicy, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RateLimitPolicy:
        text = text.strip().lower()
        if text in ("off", "none", ""):
            return cls()
        windows = []
        for item in text.replace(" ", "").split(","):
            match = _ITEM.match(item)
            if match is None:
                raise ValueError(f"rate limit {item!r}: write QUOTA/WINDOW, e.g. 60/minute or 5/10s")
            quota, window = int(match[1]), match[2]
            if window in NAMED_WINDOWS:
                name, seconds = window, NAMED_WINDOWS[window]
            elif window.rstrip("s").isdigit():
                seconds = int(window.rstrip("s"))
                name = f"{seconds}s"
            else:
                raise ValueError(f"rate limit {item!r}: the window is second, minute, hour, day or N seconds")
            if quota < 1 or seconds < 1:
                raise ValueError(f"rate limit {item!r}: quota and window must be at least 1")
            windows.append(WindowPolicy(name, quota, seconds))
        if len({w.name for w in windows}) != len(windows):
            raise ValueError(f"rate limit {text!r} names a window twice")
        return cls(tuple(windows))

    @property
    def off(self) -> bool:
        return not self.windows

    def __str__(self) -> str:
        if self.off:
            return "off"
        return ",".join(f"{w.quota}/{w.name if w.name in NAMED_WINDOWS else w.seconds}" for w in self.windows)

    def header(self) -> str:
        return ", ".join(f'"{w.name}";q={w.quota};w={w.seconds}' for w in self.windows)


@dataclass(slots=True)
class _Window:
    policy: WindowPolicy
    opened: float | None = None
    used: int = 0

    def roll(self, now: float) -> None:
        if self.opened is None or now >= self.opened + self.policy.seconds:
            self.opened, self.used = now, 0

    def reset_in(self, now: float) -> int:
        opened = now if self.opened is None else self.opened
        return max(1, math.ceil(opened + self.policy.seconds - now))


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)  # empty when the policy is off
    retry_after: int | None = None  # seconds, on a refusal


class RateLimiter:
    def __init__(self, policy: RateLimitPolicy) -> None:
        self.policy = policy
        self._windows = [_Window(w) for w in policy.windows]

    def admit(self, now: float) -> Admission:
        """Count one request at ``now``, or refuse it if a window is spent."""
        if self.policy.off:
            return Admission(True)
        for window in self._windows:
            window.roll(now)
        spent = [w for w in self._windows if w.used >= w.policy.quota]
        if not spent:
            for window in self._windows:
                window.used += 1
        headers = {"RateLimit-Policy": self.policy.header(), "RateLimit": self._state(now)}
        if spent:
            retry_after = max(w.reset_in(now) for w in spent)
            return Admission(False, {**headers, "Retry-After": str(retry_after)}, retry_after)
        return Admission(True, headers)

    def _state(self, now: float) -> str:
        return ", ".join(
            f'"{w.policy.name}";r={max(0, w.policy.quota - w.used)};t={w.reset_in(now)}' for w in self._windows
        )

    def as_json(self, now: float) -> dict[str, object]:
        for window in self._windows:
            window.roll(now)
        return {
            "policy": str(self.policy),
            "windows": [
                {
                    "name": w.policy.name,
                    "quota": w.policy.quota,
                    "seconds": w.policy.seconds,
                    "remaining": w.policy.quota - w.used,
                    "reset_s": w.reset_in(now),
                }
                for w in self._windows
            ],
        }
