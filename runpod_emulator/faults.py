"""Fault injection: armed rules that make upcoming GraphQL calls fail the way RunPod fails.

A rule names a root field (``op``, or ``*`` for any) and a ``kind``. It fires for the next ``count``
matching calls, or with probability ``rate`` per matching call (drawn from the emulator's seeded RNG), or
both (each call with probability ``rate``, at most ``count`` times). With neither it fires once.
What each kind does to the response is decided in ``graphql_api.py``; this module only decides *whether*
a call is hit. Pure apart from the injected RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The root fields the emulator serves; a rule for anything else could never fire, so it is refused.
ROOT_FIELDS = frozenset(
    {"podFindAndDeployOnDemand", "podResume", "podStop", "podTerminate", "myself", "pod", "gpuTypes"}
)
DEFAULT_TIMEOUT_DELAY_S = 35.0  # longer than the SDK's 30 s request timeout


class FaultKind(StrEnum):
    HOST_GPU_BUSY = "host_gpu_busy"  # 200 + the resume error text; nothing happens
    OUT_OF_STOCK = "out_of_stock"  # 200 + the create error text; nothing happens
    INTERNAL = "internal"  # 500 + "Something went wrong..."; applied first if ``applied``
    RATE_LIMIT = "rate_limit"  # 429 + Retry-After: 1; nothing happens
    TIMEOUT = "timeout"  # the call is applied, then the answer is held back ``delay_s``
    AUTH = "auth"  # 401; nothing happens


class FaultRule(BaseModel):
    """The body of ``POST /_admin/faults``."""

    model_config = ConfigDict(extra="forbid")

    op: str = Field(description="a GraphQL root field such as podResume, or * for every call")
    kind: FaultKind
    count: int | None = Field(None, ge=1, description="fire for the next N matching calls")
    rate: float | None = Field(None, gt=0, le=1, description="fire with this probability per matching call")
    delay_s: float | None = Field(None, ge=0, description="timeout only: how long to hold the answer")
    applied: bool | None = Field(None, description="internal: carry the operation out before answering with the error")

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if self.op != "*" and self.op not in ROOT_FIELDS:
            raise ValueError(f"op must be * or one of {sorted(ROOT_FIELDS)}, not {self.op!r}")
        if self.delay_s is not None and self.kind is not FaultKind.TIMEOUT:
            raise ValueError("delay_s only applies to kind timeout")
        if self.applied is not None and self.kind is not FaultKind.INTERNAL:
            raise ValueError("applied only applies to kind internal (timeout is always applied)")
        return self

    @property
    def delay(self) -> float:
        return DEFAULT_TIMEOUT_DELAY_S if self.delay_s is None else self.delay_s

    @property
    def applies_operation(self) -> bool:
        return self.kind is FaultKind.TIMEOUT or (self.kind is FaultKind.INTERNAL and bool(self.applied))


@dataclass(frozen=True, slots=True)
class Hit:
    rule: FaultRule
    field: str  # the root field the fault is reported on


@dataclass(slots=True)
class _Armed:
    rule: FaultRule
    remaining: int | None
    fired: int = 0


class FaultBook:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._armed: list[_Armed] = []

    def add(self, rule: FaultRule) -> None:
        remaining = rule.count if (rule.count is not None or rule.rate is not None) else 1
        self._armed.append(_Armed(rule, remaining))

    def clear(self) -> None:
        self._armed.clear()

    def draw(self, fields: Sequence[str]) -> Hit | None:
        """Decide whether a call touching ``fields`` is hit, consuming the rule's count if so."""
        for armed in self._armed:
            rule = armed.rule
            field = next((f for f in fields if rule.op in ("*", f)), None)
            if field is None:
                continue
            if rule.rate is not None and self._rng.random() >= rule.rate:
                continue
            armed.fired += 1
            if armed.remaining is not None:
                armed.remaining -= 1
            self._armed = [a for a in self._armed if a.remaining != 0]
            return Hit(rule, field)
        return None

    def as_json(self) -> list[dict[str, object]]:
        return [{**a.rule.model_dump(mode="json"), "remaining": a.remaining, "fired": a.fired} for a in self._armed]
