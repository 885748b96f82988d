"""Fault injection: armed rules that make upcoming calls fail the way RunPod fails, on either API.

A rule names an operation (``op``: an ``operations.Op`` such as ``stop_pod``, an alias such as ``start``, a
GraphQL root field such as ``podStop``, or ``*`` for any) and a ``kind``; ``api`` narrows it to ``graphql`` or
``rest`` (default: both). It fires for the next ``count`` matching calls, or with probability ``rate`` per
matching call (drawn from the emulator's seeded RNG), or both (each call with probability ``rate``, at most
``count`` times). With neither it fires once. How each kind answers on each API is decided in
``graphql_api.py`` and ``rest_api.py``:

    kind                 GraphQL                                   REST v2
    host_gpu_busy        200 + errors: not enough free GPUs...     400 problem, same sentence
    out_of_stock         200 + errors: no longer any instances...  400 problem, same sentence
    no_resources         200 + errors: This machine does not...    400 problem, same sentence
    no_cuda_host         200 + errors: No compatible CUDA host...  400 problem, same sentence
    low_balance          200 + errors: balance is too low...       402 problem, same sentence
    internal             500 + errors: Something went wrong...     500 problem, same sentence
    gateway              502 + Cloudflare's HTML page (not JSON)   502 + the same HTML page
    rate_limit           429 + errors body, Retry-After: 1         429 problem, Retry-After: 1
    rate_limit_recorded  429 + bare {"message": ...}, Retry-After  as rate_limit
    auth                 401                                       401 problem
    timeout              the call is carried out, then the answer is held back ``delay_s`` (default 35 s)
    no_runtime           create/resume/restart succeed, but the pod never gets a runtime (stays starting)

``internal`` and ``gateway`` with ``applied: true`` carry the operation out before answering with the
error, as RunPod sometimes does. Pure apart from the injected RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runpod_emulator.operations import GRAPHQL_FIELDS, STARTS_A_CONTAINER, Api, Op, op_named, valid_names

# Kept for callers that listed the GraphQL fields a rule may name.
ROOT_FIELDS = frozenset(GRAPHQL_FIELDS)
DEFAULT_TIMEOUT_DELAY_S = 35.0  # longer than the SDK's 30 s request timeout


class FaultKind(StrEnum):
    HOST_GPU_BUSY = "host_gpu_busy"
    OUT_OF_STOCK = "out_of_stock"
    NO_RESOURCES = "no_resources"
    NO_CUDA_HOST = "no_cuda_host"
    LOW_BALANCE = "low_balance"
    INTERNAL = "internal"
    GATEWAY = "gateway"
    RATE_LIMIT = "rate_limit"
    RATE_LIMIT_RECORDED = "rate_limit_recorded"
    TIMEOUT = "timeout"
    AUTH = "auth"
    NO_RUNTIME = "no_runtime"


# Kinds that carry the operation out (always, or with ``applied``) rather than stopping it.
_MAY_APPLY = frozenset({FaultKind.INTERNAL, FaultKind.GATEWAY})


class FaultRule(BaseModel):
    """The body of ``POST /_admin/faults``."""

    model_config = ConfigDict(extra="forbid")

    op: str = Field(description="an operation (stop_pod), an alias (start), a GraphQL root field (podStop), or *")
    kind: FaultKind
    api: Api | None = Field(None, description="only calls through this API (graphql or rest); default both")
    count: int | None = Field(None, ge=1, description="fire for the next N matching calls")
    rate: float | None = Field(None, gt=0, le=1, description="fire with this probability per matching call")
    delay_s: float | None = Field(None, ge=0, description="timeout only: how long to hold the answer")
    applied: bool | None = Field(
        None, description="internal and gateway: carry the operation out before answering with the error"
    )

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if self.op != "*" and op_named(self.op) is None:
            raise ValueError(f"op must be * or one of {valid_names()}, not {self.op!r}")
        if self.delay_s is not None and self.kind is not FaultKind.TIMEOUT:
            raise ValueError("delay_s only applies to kind timeout")
        if self.applied is not None and self.kind not in _MAY_APPLY:
            raise ValueError("applied only applies to kinds internal and gateway (timeout is always applied)")
        if self.kind is FaultKind.NO_RUNTIME and self.operation not in (None, *STARTS_A_CONTAINER):
            raise ValueError(f"no_runtime only applies to {sorted(STARTS_A_CONTAINER)} (or *)")
        return self

    @property
    def operation(self) -> Op | None:
        """The operation the rule names; None for ``*``."""
        return None if self.op == "*" else op_named(self.op)

    @property
    def delay(self) -> float:
        return DEFAULT_TIMEOUT_DELAY_S if self.delay_s is None else self.delay_s

    @property
    def applies_operation(self) -> bool:
        return self.kind in (FaultKind.TIMEOUT, FaultKind.NO_RUNTIME) or (
            self.kind in _MAY_APPLY and bool(self.applied)
        )

    def matches(self, api: Api, op: Op) -> bool:
        if self.api is not None and self.api is not api:
            return False
        if self.kind is FaultKind.NO_RUNTIME and op not in STARTS_A_CONTAINER:
            return False
        return self.operation in (None, op)


@dataclass(frozen=True, slots=True)
class Hit:
    rule: FaultRule
    field: str  # the name the call was drawn under (a GraphQL root field, or an operation for REST)


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

    def draw(self, names: Sequence[str], api: Api = Api.GRAPHQL) -> Hit | None:
        """Decide whether a call touching ``names`` (operations or GraphQL root fields) is hit, consuming the
        rule's count if so."""
        ops = [(name, op) for name in names if (op := op_named(name)) is not None]
        for armed in self._armed:
            rule = armed.rule
            name = next((name for name, op in ops if rule.matches(api, op)), None)
            if name is None:
                continue
            if rule.rate is not None and self._rng.random() >= rule.rate:
                continue
            armed.fired += 1
            if armed.remaining is not None:
                armed.remaining -= 1
            self._armed = [a for a in self._armed if a.remaining != 0]
            return Hit(rule, name)
        return None

    def as_json(self) -> list[dict[str, object]]:
        return [
            {
                **a.rule.model_dump(mode="json"),
                "operation": None if a.rule.operation is None else a.rule.operation.value,
                "remaining": a.remaining,
                "fired": a.fired,
            }
            for a in self._armed
        ]
