"""``Provider`` on RunPod's GraphQL API through the official ``runpod`` SDK (synchronous: worker threads).

Kept selectable (``HARPER_RUNPOD_API=graphql``) until RunPod switches GraphQL off in early 2027; REST v2
(``rest.py``) is the default. The SDK sends every request to ``$RUNPOD_API_BASE_URL/graphql`` (read per call, so
the provider sets it once); the API key is passed per call and never logged or put into an error. Every SDK
failure becomes one of the ``errors`` tree (``classify``). GraphQL cannot tell a crashed container (no
``ERROR`` state), reports no stock level, no logs, no billing and no rate-limit quota: those answers are empty.

Retries (with backoff) only where safe: reads and idempotent stop/terminate on RateLimited and Transient,
everything on RateLimited. A create is never retried blindly: after a Transient failure the pod is looked
up by its (deterministic) name, because RunPod can create a pod while reporting an error. A recorded GraphQL
429 has a bare ``{"message"}`` body on which the SDK raises ``KeyError('data')``: that is Transient here (the
call was not carried out, so the lookup by name finds nothing and the create fails for this pass).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import requests
import runpod
import runpod.error
from runpod.api.graphql import run_graphql_query
from runpod.api.mutations import pods as pod_mutations

from ..domain import GPU_SERVER_PORT
from .base import BilledPod, GpuOffer, Observer, PodSpec, ProviderPod, no_observer
from .errors import (
    AuthFailed,
    BalanceTooLow,
    NotFound,
    ProviderError,
    RateLimited,
    Rejected,
    Transient,
    capacity_error,
    is_balance_text,
    is_capacity_text,
)
from .ratelimit import RateBudget

log = logging.getLogger(__name__)
T = TypeVar("T")


def classify(exc: BaseException, op: str) -> ProviderError:
    """Map an SDK/transport exception to our error tree. Messages carry RunPod's text, never the key."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, runpod.error.AuthenticationError):
        return AuthFailed("RunPod refused the API key (401): check HARPER_RUNPOD_API_KEY", op)
    if isinstance(exc, runpod.error.QueryError):
        message = str(exc)
        lowered = message.lower()
        if is_capacity_text(message):
            return capacity_error(message, op)
        if is_balance_text(message):
            return BalanceTooLow(message, op)
        if "rate limit" in lowered or "too many requests" in lowered:
            return RateLimited(message, op)
        if "something went wrong" in lowered or "internal server error" in lowered:
            return Transient(message, op)
        # RunPod's text for an unknown pod id on a mutation is not recorded (a query answers ``pod: null``,
        # which callers read as gone): this matches the likely words, and anything else stays Rejected.
        if "not found" in lowered or "does not exist" in lowered:
            return NotFound(message, op)
        if "unauthorized" in lowered:
            return AuthFailed(message, op)
        return Rejected(message, op)
    if isinstance(exc, TimeoutError | requests.exceptions.Timeout):
        return Transient(f"RunPod did not answer {op} in time", op)
    if isinstance(exc, requests.exceptions.JSONDecodeError | KeyError):
        # A body without JSON or without data: a proxy error page, or a 429 without a GraphQL body.
        return Transient(f"RunPod answered {op} with an unexpected body", op)
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        return Transient(f"RunPod could not be reached for {op}: {type(exc).__name__}", op)
    return Rejected(f"{op} failed: {type(exc).__name__}: {exc}", op)


def parse_pod(raw: dict[str, Any]) -> ProviderPod:
    host = port = None
    runtime = raw.get("runtime") or {}
    for mapping in runtime.get("ports") or []:
        if mapping.get("privatePort") == GPU_SERVER_PORT and mapping.get("type") == "tcp":
            host, port = mapping.get("ip"), mapping.get("publicPort")
    return ProviderPod(
        id=raw["id"],
        name=raw.get("name") or "",
        desired_status=raw.get("desiredStatus") or "",
        cost_per_hr=float(raw.get("costPerHr") or 0.0),
        machine_id=raw.get("machineId") or "",
        gpu_display_name=(raw.get("machine") or {}).get("gpuDisplayName") or "",
        # Only a running pod's ports are real: an EXITED pod can report stale ones.
        endpoint_host=host if raw.get("desiredStatus") == "RUNNING" else None,
        endpoint_port=port if raw.get("desiredStatus") == "RUNNING" else None,
        status=raw.get("desiredStatus") or "",
    )


class GraphQLProvider:
    """``Provider`` on the official SDK. One per process (the SDK's base URL is process-wide)."""

    api = "graphql"

    def __init__(
        self,
        api_key: str,
        api_url: str | None = None,
        *,
        call_timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        observe: Observer | None = None,
        max_threads: int = 32,
    ) -> None:
        if not api_key:
            raise AuthFailed("no RunPod API key configured", "init")
        self._key = api_key
        if api_url:
            os.environ["RUNPOD_API_BASE_URL"] = api_url.rstrip("/").removesuffix("/graphql")
        self._timeout = call_timeout_s
        self._retries = retries
        self._backoff = backoff_s
        self._observe = observe or no_observer
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="runpod-sdk")
        self.budget = RateBudget()  # GraphQL reports no quota: stays empty

    def __repr__(self) -> str:  # never show the key
        return f"GraphQLProvider(url={os.environ.get('RUNPOD_API_BASE_URL', 'https://api.runpod.io')!r})"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        self.close()

    async def _call(self, op: str, fn: Callable[[], T], retry_on: tuple[type[ProviderError], ...]) -> T:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = await asyncio.wait_for(loop.run_in_executor(self._pool, fn), self._timeout)
            except Exception as e:
                err = classify(e, op)
                self._observe(self.api, op, type(err).__name__, time.perf_counter() - started)
                attempt += 1
                if isinstance(err, retry_on) and attempt < self._retries:
                    delay = self._backoff * 2 ** (attempt - 1)
                    log.info("runpod %s failed (%s), retry %d in %.2fs", op, type(err).__name__, attempt, delay)
                    await asyncio.sleep(delay)
                    continue
                raise err from e
            self._observe(self.api, op, "ok", time.perf_counter() - started)
            return result

    def _query(self, query: str) -> dict[str, Any]:
        return run_graphql_query(query, api_key=self._key)["data"]

    # -- reads: retried on RateLimited and Transient
    async def list_pods(self, prefix: str = "") -> list[ProviderPod]:
        raw = await self._call("list_pods", lambda: runpod.get_pods(api_key=self._key), (RateLimited, Transient))
        return [parse_pod(p) for p in raw or [] if (p.get("name") or "").startswith(prefix)]

    async def get_pod(self, pod_id: str) -> ProviderPod | None:
        raw = await self._call("get_pod", lambda: runpod.get_pod(pod_id, api_key=self._key), (RateLimited, Transient))
        return parse_pod(raw) if raw else None

    async def find_by_name(self, name: str) -> ProviderPod | None:
        for pod in await self.list_pods(name):
            if pod.name == name:
                return pod
        return None

    async def gpu_price(self, gpu_type: str, cloud_type: str = "SECURE") -> float:
        raw = await self._call(
            "gpu_types", lambda: runpod.get_gpu(gpu_type, api_key=self._key), (RateLimited, Transient)
        )
        field = "communityPrice" if cloud_type == "COMMUNITY" else "securePrice"
        price = raw.get(field) or (raw.get("lowestPrice") or {}).get("uninterruptablePrice") or 0.0
        return float(price)

    async def gpu_catalog(self, gpu_types: list[str], cloud_type: str = "SECURE") -> dict[str, GpuOffer]:
        """Prices of the wanted types, one SDK call each; GraphQL reports no stock level (``stock=None``)."""
        offers = {}
        for gpu_type in gpu_types:
            try:
                offers[gpu_type] = GpuOffer(gpu_type, await self.gpu_price(gpu_type, cloud_type))
            except Rejected as e:  # the SDK raises ValueError for a type RunPod does not list
                log.warning("no price for %s: %s", gpu_type, e)
        return offers

    async def pod_logs(self, pod_id: str, tail: int = 20) -> list[str]:
        return []  # GraphQL has no pod logs

    async def billing(self, since: float) -> list[BilledPod] | None:
        return None  # GraphQL has no billing records

    # -- writes
    async def create_pod(self, spec: PodSpec) -> ProviderPod:
        _check_literal(spec)
        mutation = pod_mutations.generate_pod_deployment_mutation(
            name=spec.name, image_name=spec.image, gpu_type_id=spec.gpu_type, cloud_type=spec.cloud_type,
            support_public_ip=True, start_ssh=False, gpu_count=1, volume_in_gb=spec.volume_gb,
            min_vcpu_count=1, min_memory_in_gb=1, docker_args="",
            container_disk_in_gb=spec.container_disk_gb, ports=spec.ports, volume_mount_path="/workspace",
            env=spec.env,
        )
        try:
            raw = await self._call(
                "create_pod", lambda: self._query(mutation)["podFindAndDeployOnDemand"], (RateLimited,)
            )
        except Transient:
            # The create may have happened anyway: look before anyone tries again.
            found = await self.find_by_name(spec.name)
            if found is not None:
                log.warning("create of %s reported an error but the pod exists: adopting %s", spec.name, found.id)
                return found
            raise
        return ProviderPod(
            id=raw["id"], name=spec.name, desired_status="RUNNING", machine_id=raw.get("machineId") or ""
        )

    async def resume_pod(self, pod_id: str) -> None:
        mutation = pod_mutations.generate_pod_resume_mutation(pod_id, 1)
        await self._call("resume_pod", lambda: self._query(mutation), (RateLimited,))

    async def stop_pod(self, pod_id: str) -> None:
        mutation = pod_mutations.generate_pod_stop_mutation(pod_id)
        await self._call("stop_pod", lambda: self._query(mutation), (RateLimited, Transient))

    async def terminate_pod(self, pod_id: str) -> None:
        mutation = pod_mutations.generate_pod_terminate_mutation(pod_id)
        await self._call("terminate_pod", lambda: self._query(mutation), (RateLimited, Transient))


def _check_literal(spec: PodSpec) -> None:
    """The SDK inlines values into the query unescaped: refuse anything that would break or inject."""
    values = [spec.name, spec.gpu_type, spec.image, spec.ports, *spec.env.keys(), *spec.env.values()]
    if any('"' in v or "\\" in v or "\n" in v for v in values):
        raise Rejected("pod spec values must not contain quotes, backslashes or newlines", "create_pod")
