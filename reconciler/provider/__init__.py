"""The RunPod seam. ``make_provider`` picks the API (``HARPER_RUNPOD_API``: ``rest`` by default, ``graphql``
until RunPod retires it); the records, the protocol and the error tree are the same for both."""

from __future__ import annotations

from .base import BilledPod, GpuOffer, Observer, PodSpec, Provider, ProviderPod
from .errors import (
    AuthFailed,
    BalanceTooLow,
    CapacityError,
    Conflict,
    GpuTypeDenied,
    HostGpuBusy,
    NotFound,
    OutOfStock,
    ProviderError,
    RateLimited,
    Rejected,
    Transient,
)
from .graphql import GraphQLProvider
from .ratelimit import RateBudget
from .rest import RestProvider

RunPodProvider = GraphQLProvider  # the name the SDK provider had before REST v2

APIS = ("rest", "graphql")


def make_provider(
    api: str, api_key: str, api_url: str | None, *, call_timeout_s: float, observe: Observer | None
) -> Provider:
    if api == "rest":
        return RestProvider(api_key, api_url, call_timeout_s=call_timeout_s, observe=observe)
    if api == "graphql":
        return GraphQLProvider(api_key, api_url, call_timeout_s=call_timeout_s, observe=observe)
    raise ValueError(f"HARPER_RUNPOD_API must be one of {', '.join(APIS)}, not {api!r}")


__all__ = [
    "APIS", "AuthFailed", "BalanceTooLow", "BilledPod", "CapacityError", "Conflict", "GpuOffer", "GpuTypeDenied",
    "GraphQLProvider", "HostGpuBusy", "NotFound", "Observer", "OutOfStock", "PodSpec", "Provider", "ProviderError",
    "ProviderPod", "RateBudget", "RateLimited", "Rejected", "RestProvider", "RunPodProvider", "Transient",
    "make_provider",
]
