"""Stock levels from the machines' free GPUs: REST's catalog ``availability`` and GraphQL's ``stockStatus``.

RunPod publishes coarse levels, not counts. Here a GPU type's level for pods of ``count`` GPUs is NONE when
no machine of that type has ``count`` GPUs free (or the cloud does not offer the type), else HIGH when at
least half of all its GPUs are free, MEDIUM from a fifth, LOW below that. The thresholds are the emulator's
own; only the four names are RunPod's. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from runpod_emulator.fleet import Machine


class StockLevel(StrEnum):
    NONE = "NONE"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"

    @property
    def graphql(self) -> str | None:
        """GraphQL's ``lowestPrice.stockStatus`` spelling: High, Medium, Low, or null for none."""
        return None if self is StockLevel.NONE else self.value.capitalize()


def stock_level(machines: Sequence[Machine], count: int = 1, *, offered: bool = True) -> StockLevel:
    total = sum(m.gpus for m in machines)
    if not offered or not total or not any(m.free >= count for m in machines):
        return StockLevel.NONE
    ratio = sum(m.free for m in machines) / total
    return StockLevel.HIGH if ratio >= 0.5 else StockLevel.MEDIUM if ratio >= 0.2 else StockLevel.LOW
