"""The billing ledger: what the emulated account has been charged, per pod, per second.

RunPod bills a pod's GPUs from the moment it is rented (boot included) until it stops, and its storage per
second at rates that depend on whether the pod is running (see ``catalogue.storage_usd_per_hour``). The
ledger does not know those rules: after every pod transition ``emulator.py`` tells it the pod's new hourly
rates, and the ledger keeps each pod's rate history, so the charge of any time range (the whole life for
``/_admin/bill``, one hour or day for REST's ``/v2/billing/pods``) is the integral of those rates over it.
Pure: time is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateSegment:
    """Rates in force from ``start`` until the next segment's start (or forever, for the last one)."""

    start: float
    gpu_rate: float  # $/h
    storage_rate: float  # $/h


@dataclass(frozen=True, slots=True)
class PodCharge:
    gpu_usd: float
    storage_usd: float

    @property
    def total_usd(self) -> float:
        return self.gpu_usd + self.storage_usd


@dataclass(frozen=True, slots=True)
class Bill:
    by_pod: dict[str, PodCharge]

    @property
    def gpu_usd(self) -> float:
        return sum(c.gpu_usd for c in self.by_pod.values())

    @property
    def storage_usd(self) -> float:
        return sum(c.storage_usd for c in self.by_pod.values())

    @property
    def total_usd(self) -> float:
        return self.gpu_usd + self.storage_usd

    def as_json(self) -> dict[str, object]:
        return {
            "total_usd": self.total_usd,
            "gpu_usd": self.gpu_usd,
            "storage_usd": self.storage_usd,
            "by_pod": {
                pod_id: {"gpu_usd": c.gpu_usd, "storage_usd": c.storage_usd, "total_usd": c.total_usd}
                for pod_id, c in self.by_pod.items()
            },
        }


class Ledger:
    def __init__(self) -> None:
        self._history: dict[str, list[RateSegment]] = {}

    def set_rates(self, pod_id: str, now: float, gpu_usd_per_h: float, storage_usd_per_h: float) -> None:
        """Bill at the new rates from ``now`` on; what came before keeps the rates it had."""
        history = self._history.setdefault(pod_id, [])
        segment = RateSegment(now, gpu_usd_per_h, storage_usd_per_h)
        if history and history[-1].start >= now:
            history[-1] = RateSegment(history[-1].start, gpu_usd_per_h, storage_usd_per_h)  # same instant
        elif not history or (history[-1].gpu_rate, history[-1].storage_rate) != (gpu_usd_per_h, storage_usd_per_h):
            history.append(segment)

    def pod_ids(self) -> list[str]:
        return list(self._history)

    def charge(self, pod_id: str, start: float, end: float) -> PodCharge:
        """What the pod was charged in ``[start, end)``."""
        gpu = storage = 0.0
        history = self._history.get(pod_id, [])
        for i, segment in enumerate(history):
            until = history[i + 1].start if i + 1 < len(history) else math.inf
            hours = max(0.0, min(until, end) - max(segment.start, start)) / 3600.0
            gpu += segment.gpu_rate * hours
            storage += segment.storage_rate * hours
        return PodCharge(gpu, storage)

    def bill(self, now: float) -> Bill:
        return Bill({pod_id: self.charge(pod_id, -math.inf, now) for pod_id in self._history})

    def clear(self) -> None:
        self._history.clear()
