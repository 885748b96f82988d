"""The billing ledger: what the emulated account has been charged, per pod, per second.

RunPod bills a pod's GPUs from the moment it is rented (boot included) until it stops, and its storage per
second at rates that depend on whether the pod is running (see ``catalogue.storage_usd_per_hour``). The
ledger does not know those rules: after every pod transition ``emulator.py`` tells it the pod's new hourly
rates, and the ledger integrates the old rates over the time that passed. Pure: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Account:
    since: float
    gpu_rate: float = 0.0  # $/h
    storage_rate: float = 0.0  # $/h
    gpu_usd: float = 0.0
    storage_usd: float = 0.0

    def accrue(self, now: float) -> None:
        hours = max(0.0, now - self.since) / 3600.0
        self.gpu_usd += self.gpu_rate * hours
        self.storage_usd += self.storage_rate * hours
        self.since = max(self.since, now)


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
        self._accounts: dict[str, _Account] = {}

    def set_rates(self, pod_id: str, now: float, gpu_usd_per_h: float, storage_usd_per_h: float) -> None:
        """Charge the old rates up to ``now``, then bill at the new ones from ``now`` on."""
        account = self._accounts.setdefault(pod_id, _Account(since=now))
        account.accrue(now)
        account.gpu_rate = gpu_usd_per_h
        account.storage_rate = storage_usd_per_h

    def bill(self, now: float) -> Bill:
        charges = {}
        for pod_id, account in self._accounts.items():
            account.accrue(now)
            charges[pod_id] = PodCharge(account.gpu_usd, account.storage_usd)
        return Bill(charges)

    def clear(self) -> None:
        self._accounts.clear()
