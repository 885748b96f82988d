"""Other tenants coming and going by themselves: the churn that makes a stopped pod's resume fail now and then.

On RunPod a GPU given back by a stopped pod is soon rented by someone else when stock is low, so a resume
that worked a minute ago fails with "There are not enough free GPUs on the host machine to start this pod."
without anyone arranging it. ``churn`` plays those tenants: over ``dt_s`` seconds each free GPU is taken
with probability ``1 - exp(-take_per_hour * dt_s / 3600)`` and each GPU a tenant holds is given back with the
matching release probability, all drawn from the RNG passed in (seeded by the emulator, so a run repeats).
Off while both rates are 0 (the default). Pure apart from the RNG.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from runpod_emulator.fleet import Machine


@dataclass(frozen=True, slots=True)
class Churn:
    machine_id: str
    taken: int
    released: int


def _probability(per_hour: float, dt_s: float) -> float:
    return 1.0 - math.exp(-per_hour * dt_s / 3600.0) if per_hour > 0 and dt_s > 0 else 0.0


def churn(
    machines: Iterable[Machine], rng: random.Random, dt_s: float, *, take_per_hour: float, release_per_hour: float
) -> list[Churn]:
    """Move GPUs between the free pool and other tenants on every machine; returns what changed."""
    p_take, p_release = _probability(take_per_hour, dt_s), _probability(release_per_hour, dt_s)
    if p_take == 0 and p_release == 0:
        return []
    changes = []
    for machine in machines:
        released = sum(rng.random() < p_release for _ in range(machine.tenant_gpus)) if p_release else 0
        taken = sum(rng.random() < p_take for _ in range(machine.free)) if p_take else 0
        machine.tenant_gpus += taken - released
        if taken or released:
            changes.append(Churn(machine.id, taken, released))
    return changes
