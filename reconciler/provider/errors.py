"""What a RunPod call can end in, whichever API carried it (``graphql.classify``, ``rest.classify``)::

    ProviderError
    ├── AuthFailed          401 / no key: nothing will work until the key is fixed
    ├── NotFound            the pod does not exist (any more)
    ├── CapacityError       no GPU for this request now; another type or a later try may work
    │   ├── HostGpuBusy     start/resume: "There are not enough free GPUs on the host machine to start this pod."
    │   ├── OutOfStock      create: no instance of the GPU type (or no compatible host) is free
    │   └── GpuTypeDenied   create: 403, the account may not use that GPU pool: skip the type
    ├── BalanceTooLow       402 / RunPod's low-balance text: no create or resume will succeed until topped up
    ├── Conflict            409: the action does not fit the pod's status; observe again, then decide
    ├── RateLimited         429 (or our own budget spent): not carried out; ``retry_after_s`` says when to try
    ├── Transient           5xx, gateway pages, network errors, timeouts: outcome unknown
    └── Rejected            any other refusal (bad input, 422): retrying will not help

Messages carry RunPod's text, never the API key.
"""

from __future__ import annotations


class ProviderError(Exception):
    """RunPod refused or failed a call. ``op`` names the operation."""

    def __init__(self, message: str, op: str = "") -> None:
        super().__init__(message)
        self.op = op


class AuthFailed(ProviderError):
    pass


class NotFound(ProviderError):
    pass


class CapacityError(ProviderError):
    pass


class HostGpuBusy(CapacityError):
    pass


class OutOfStock(CapacityError):
    pass


class GpuTypeDenied(CapacityError):
    pass


class BalanceTooLow(ProviderError):
    pass


class Conflict(ProviderError):
    pass


class RateLimited(ProviderError):
    def __init__(self, message: str, op: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message, op)
        self.retry_after_s = retry_after_s


class Transient(ProviderError):
    pass


class Rejected(ProviderError):
    pass


# Recorded RunPod texts that mean "no capacity" (reference: runpod-api.md, runpod-rest-v2.md). A create that
# meets one skips its GPU type for a while; a resume that meets one backs the standby off.
CAPACITY_TEXTS = (
    "not enough free gpus on the host machine",
    "no longer any instances available",
    "no instances currently available",
    "does not have the resources to deploy",  # "... this pod" (console) / "... your pod" (REST)
    "no compatible cuda host",
)
BALANCE_TEXTS = ("balance", "insufficient funds")


def is_capacity_text(message: str) -> bool:
    lowered = message.lower()
    return any(t in lowered for t in CAPACITY_TEXTS)


def is_balance_text(message: str) -> bool:
    lowered = message.lower()
    return any(t in lowered for t in BALANCE_TEXTS)


def capacity_error(message: str, op: str) -> CapacityError:
    """A capacity refusal as the operation meets it: a busy host on a resume, missing stock on a create."""
    return HostGpuBusy(message, op) if op == "resume_pod" else OutOfStock(message, op)
