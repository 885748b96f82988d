"""The operations both APIs share, and the count of calls received per API and operation.

One vocabulary for a pod operation whichever API carries it, so a fault rule or a request count names
``stop_pod`` and means the GraphQL ``podStop`` mutation and REST ``POST /v2/pods/{id}/action {"action":
"stop"}`` alike. GraphQL root-field names (``podResume``...) and a few short aliases (``start``, ``catalog``)
are accepted wherever an operation is named. Pure: no I/O.
"""

from __future__ import annotations

import threading
from collections import Counter
from enum import StrEnum


class Api(StrEnum):
    GRAPHQL = "graphql"
    REST = "rest"


class Op(StrEnum):
    CREATE_POD = "create_pod"  # podFindAndDeployOnDemand · POST /v2/pods
    RESUME_POD = "resume_pod"  # podResume · action start
    STOP_POD = "stop_pod"  # podStop · action stop
    RESTART_POD = "restart_pod"  # action restart (REST only)
    TERMINATE_POD = "terminate_pod"  # podTerminate · DELETE /v2/pods/{id} · action terminate
    UPDATE_POD = "update_pod"  # PATCH /v2/pods/{id} (REST only)
    LIST_PODS = "list_pods"  # myself · GET /v2/pods
    GET_POD = "get_pod"  # pod · GET /v2/pods/{id}
    GPU_TYPES = "gpu_types"  # gpuTypes · GET /v2/catalog/gpus[/{id}]
    BILLING = "billing"  # GET /v2/billing/pods (REST only)
    LOGS = "logs"  # GET /v2/pods/{id}/logs (REST only)


GRAPHQL_FIELDS: dict[str, Op] = {
    "podFindAndDeployOnDemand": Op.CREATE_POD,
    "podResume": Op.RESUME_POD,
    "podStop": Op.STOP_POD,
    "podTerminate": Op.TERMINATE_POD,
    "myself": Op.LIST_PODS,
    "pod": Op.GET_POD,
    "gpuTypes": Op.GPU_TYPES,
}
ALIASES: dict[str, Op] = {
    "start": Op.RESUME_POD,
    "stop": Op.STOP_POD,
    "restart": Op.RESTART_POD,
    "terminate": Op.TERMINATE_POD,
    "catalog": Op.GPU_TYPES,
}
# The REST action body's value -> the operation it performs.
ACTIONS: dict[str, Op] = {
    "start": Op.RESUME_POD,
    "stop": Op.STOP_POD,
    "restart": Op.RESTART_POD,
    "terminate": Op.TERMINATE_POD,
}
# Operations that (re)start a container, the only ones a ``no_runtime`` fault can act on.
STARTS_A_CONTAINER = frozenset({Op.CREATE_POD, Op.RESUME_POD, Op.RESTART_POD})
# Requests that name no operation (unparseable GraphQL, an action body without a valid action) are counted here.
INVALID = "invalid"


def op_named(name: str) -> Op | None:
    """The operation a name stands for: an ``Op`` value, an alias or a GraphQL root field; None if unknown."""
    if name in Op.__members__.values():
        return Op(name)
    return ALIASES.get(name) or GRAPHQL_FIELDS.get(name)


def valid_names() -> list[str]:
    return sorted({*(o.value for o in Op), *ALIASES, *GRAPHQL_FIELDS})


class RequestCounter:
    """Calls received so far, by API and operation. Thread-safe: read by admin routes while APIs count."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, api: Api, ops: list[str]) -> None:
        with self._lock:
            for op in dict.fromkeys(ops or [INVALID]):  # one call touching an op twice counts once
                self._counts[(api.value, op)] += 1

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()

    def as_json(self) -> dict[str, object]:
        with self._lock:
            counts = dict(self._counts)
        by_api: dict[str, dict[str, int]] = {api.value: {} for api in Api}
        for (api, op), n in sorted(counts.items()):
            by_api[api][op] = n
        return {
            "total": sum(counts.values()),
            "by_api": {api: {"total": sum(ops.values()), "ops": ops} for api, ops in by_api.items()},
        }
