"""``Provider`` on RunPod's REST API v2 (``/v2``), with ``httpx.AsyncClient``: no worker threads.

REST v2 is the API that outlives GraphQL (retired early 2027) and tells what GraphQL never did: real lifecycle
states (``ERROR``), the actions a pod allows, live GPU stock, pod logs and billed amounts. Answers map to the
error tree in ``errors`` (``classify``):

    400  capacity text -> HostGpuBusy (resume) / OutOfStock (create); balance text -> BalanceTooLow;
         anything else -> Rejected (a cross-field rule)
    401 AuthFailed · 402 BalanceTooLow · 403 GpuTypeDenied on create, else AuthFailed · 404 NotFound
    409 Conflict (the action does not fit the pod's status: the pod is read again, and a pod already where the
        action would take it counts as done) · 422 Rejected, never retried
    429 RateLimited with ``Retry-After`` · 5xx, non-JSON gateway pages, timeouts -> Transient

Every answer's ``RateLimit``/``RateLimit-Policy`` headers feed ``self.budget``; a call is not even sent while a
window is spent (it fails as ``RateLimited`` at once, costing nothing). Reads retry on Transient and on short
RateLimited waits; a create is never retried blindly: after a Transient failure it is looked up by its
deterministic name first, since RunPod can create a pod while answering 5xx. The API key travels only in the
``Authorization`` header; no message, log line or repr carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from ..domain import GPU_SERVER_PORT
from .base import BilledPod, GpuOffer, Observer, PodSpec, ProviderPod, no_observer
from .errors import (
    AuthFailed,
    BalanceTooLow,
    Conflict,
    GpuTypeDenied,
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

DEFAULT_URL = "https://api.runpod.io"
# REST ``status`` -> what the controller's planning reads as RunPod's desired status.
_DESIRED = {"PROVISIONING": "RUNNING", "STARTING": "RUNNING", "RUNNING": "RUNNING", "EXITED": "EXITED",
            "ERROR": "ERROR", "TERMINATED": "TERMINATED"}
# Where an action leaves a pod: a 409 on a pod already there means the action is done, not refused.
_DONE = {"start": {"PROVISIONING", "STARTING", "RUNNING"}, "stop": {"EXITED"}, "terminate": {"TERMINATED"}}


def parse_pod(raw: dict[str, Any]) -> ProviderPod:
    status = str(raw.get("status") or "")
    host = port = None
    if status == "RUNNING":  # only a running pod's ports are real
        for mapping in (raw.get("runtime") or {}).get("ports") or []:
            if mapping.get("private") == GPU_SERVER_PORT and mapping.get("type") == "tcp" and mapping.get("public"):
                host, port = mapping.get("ip"), mapping.get("public")
    return ProviderPod(
        id=raw["id"], name=raw.get("name") or "", desired_status=_DESIRED.get(status, status),
        cost_per_hr=float(raw.get("cost") or 0.0), gpu_display_name=(raw.get("gpu") or {}).get("id") or "",
        endpoint_host=host, endpoint_port=port, status=status,
    )


def _detail(response: httpx.Response) -> str:
    """RunPod's words for a failed answer: problem+json ``detail`` (and ``errors``), or a short note when the
    body is not JSON (a gateway's HTML page)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code} with a non-JSON body ({response.headers.get('content-type', '?')})"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    text = str(body.get("detail") or body.get("message") or body.get("error") or body.get("title") or "")
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        text = f"{text}: {'; '.join(str(e) for e in errors[:5])}" if text else "; ".join(str(e) for e in errors[:5])
    return text or f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def classify(response: httpx.Response, op: str) -> ProviderError:
    status, detail = response.status_code, _detail(response)
    if status == 429:
        return RateLimited(f"RunPod rate limit: {detail}", op, _retry_after(response))
    if status == 401:
        return AuthFailed("RunPod refused the API key (401): check HARPER_RUNPOD_API_KEY", op)
    if status == 402 or is_balance_text(detail):
        return BalanceTooLow(detail, op)
    if status == 403:
        return GpuTypeDenied(detail, op) if op == "create_pod" else AuthFailed(f"RunPod: forbidden: {detail}", op)
    if status == 404:
        return NotFound(detail, op)
    if status == 409:
        return Conflict(detail, op)
    if status == 422:
        return Rejected(detail, op)
    # Capacity is a 400 on v2 (REST v1 sent it as a 500): classified by RunPod's words wherever it comes.
    create_400 = status == 400 and op == "create_pod"
    if status in (400, 500) and (is_capacity_text(detail) or (create_400 and _speaks_of_capacity(detail))):
        return capacity_error(detail, op)
    if status >= 500:
        return Transient(f"RunPod answered {op} with {status}: {detail}"[:300], op)
    return Rejected(detail, op)


def _speaks_of_capacity(detail: str) -> bool:
    lowered = detail.lower()
    return any(word in lowered for word in ("availab", "instances", "capacity", "stock"))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RestProvider:
    api = "rest"

    def __init__(
        self, api_key: str, api_url: str | None = None, *, call_timeout_s: float = 30.0, retries: int = 3,
        backoff_s: float = 0.25, max_wait_s: float = 5.0, observe: Observer | None = None,
        budget: RateBudget | None = None, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise AuthFailed("no RunPod API key configured", "init")
        self.base_url = (api_url or DEFAULT_URL).rstrip("/").removesuffix("/graphql").removesuffix("/v2")
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/v2", headers={"Authorization": f"Bearer {api_key}"}, timeout=call_timeout_s,
            transport=transport, limits=httpx.Limits(max_connections=32),
        )
        self._retries = retries
        self._backoff = backoff_s
        self._max_wait = max_wait_s
        self._observe = observe or no_observer
        self.budget = budget or RateBudget()

    def __repr__(self) -> str:  # never show the key
        return f"RestProvider(url={self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def close(self) -> None:
        """For symmetry with the SDK provider; the client is closed by ``aclose``."""

    # -- transport
    async def _send(self, op: str, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> httpx.Response:
        wait = self.budget.wait_s()
        if wait > 0:
            self._observe(self.api, op, "Throttled", 0.0)
            raise RateLimited(f"RunPod's rate-limit quota is spent for {wait:.0f}s more: {op} not sent", op, wait)
        self.budget.spend()
        started = time.perf_counter()
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TimeoutException as e:
            self._observe(self.api, op, "Transient", time.perf_counter() - started)
            raise Transient(f"RunPod did not answer {op} in time", op) from e
        except httpx.HTTPError as e:
            self._observe(self.api, op, "Transient", time.perf_counter() - started)
            raise Transient(f"RunPod could not be reached for {op}: {type(e).__name__}", op) from e
        self.budget.update(response.headers)
        if response.status_code in ok:
            self._observe(self.api, op, "ok", time.perf_counter() - started)
            return response
        err = classify(response, op)
        if isinstance(err, RateLimited):
            self.budget.retry_after(err.retry_after_s if err.retry_after_s is not None else 1.0)
        self._observe(self.api, op, type(err).__name__, time.perf_counter() - started)
        raise err

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]], retry_on: tuple[type[ProviderError], ...]) -> T:
        attempt = 0
        while True:
            try:
                return await fn()
            except ProviderError as err:
                attempt += 1
                if not isinstance(err, retry_on) or attempt >= self._retries:
                    raise
                if isinstance(err, RateLimited):
                    delay = err.retry_after_s if err.retry_after_s is not None else self._backoff * 2 ** (attempt - 1)
                    if delay > self._max_wait:
                        raise  # the loop waits for the reset itself; a pass must not sit here
                else:
                    delay = self._backoff * 2 ** (attempt - 1)
                log.info("runpod %s failed (%s), retry %d in %.2fs", op, type(err).__name__, attempt, delay)
                await asyncio.sleep(delay)

    async def _json(self, op: str, method: str, path: str, retry_on: tuple[type[ProviderError], ...],
                    ok: tuple[int, ...] = (200,), **kw: Any) -> Any:
        async def once() -> Any:
            response = await self._send(op, method, path, ok, **kw)
            if response.status_code == 204:
                return None
            try:
                return response.json()
            except ValueError as e:
                raise Transient(f"RunPod answered {op} with a body that is not JSON", op) from e

        return await self._call(op, once, retry_on)

    # -- reads: retried on RateLimited (short waits) and Transient
    async def list_pods(self, prefix: str = "") -> list[ProviderPod]:
        body = await self._json("list_pods", "GET", "/pods", (RateLimited, Transient))
        return [parse_pod(p) for p in (body or {}).get("pods") or []
                if (p.get("name") or "").startswith(prefix) and p.get("status") != "TERMINATED"]

    async def get_pod(self, pod_id: str) -> ProviderPod | None:
        try:
            raw = await self._json("get_pod", "GET", f"/pods/{pod_id}", (RateLimited, Transient))
        except NotFound:
            return None
        pod = parse_pod(raw)
        return None if pod.status == "TERMINATED" else pod

    async def find_by_name(self, name: str) -> ProviderPod | None:
        for pod in await self.list_pods(name):
            if pod.name == name:
                return pod
        return None

    async def gpu_catalog(self, gpu_types: list[str], cloud_type: str = "SECURE") -> dict[str, GpuOffer]:
        """Price on our cloud and current pod stock of each wanted type the catalog lists."""
        cloud = "COMMUNITY" if cloud_type == "COMMUNITY" else "SECURE"
        params = {"include": "AVAILABILITY", "product": "POD", "cloud": cloud}
        body = await self._json("gpu_catalog", "GET", "/catalog/gpus", (RateLimited, Transient), params=params)
        wanted = set(gpu_types)
        offers = {}
        for gpu in (body or {}).get("gpus") or []:
            if gpu.get("id") not in wanted:
                continue
            price = (gpu.get("price") or {}).get(cloud.lower())
            if price is None or not gpu.get(cloud.lower(), True):
                continue  # not offered on our cloud
            offers[gpu["id"]] = GpuOffer(gpu["id"], float(price), gpu.get("availability"))
        return offers

    async def pod_logs(self, pod_id: str, tail: int = 20, idle_s: float = 1.0, total_s: float = 5.0) -> list[str]:
        """The last ``tail`` lines of the pod's log, RunPod's own (host) lines marked ``[system] ``. The endpoint is
        a Server-Sent Events stream that backfills ``tail`` lines and then follows live, so reading stops at
        ``tail`` lines or when it falls quiet."""
        lines: list[str] = []

        async def read() -> None:
            response = await self._send_stream("pod_logs", f"/pods/{pod_id}/logs", {"tail": tail})
            try:
                iterator = response.aiter_lines()
                while len(lines) < tail:
                    try:
                        raw = await asyncio.wait_for(anext(iterator), idle_s)
                    except (TimeoutError, StopAsyncIteration):
                        return
                    if raw.startswith("data:"):
                        with contextlib.suppress(ValueError, AttributeError):
                            event = json.loads(raw[5:].strip())
                            prefix = "[system] " if event.get("source") == "system" else ""
                            lines.append(prefix + str(event.get("line", "")))
            finally:
                await response.aclose()

        try:
            async with asyncio.timeout(total_s):
                await read()
        except TimeoutError:
            pass
        return lines[-tail:]

    async def _send_stream(self, op: str, path: str, params: dict[str, Any]) -> httpx.Response:
        wait = self.budget.wait_s()
        if wait > 0:
            raise RateLimited(f"RunPod's rate-limit quota is spent for {wait:.0f}s more: {op} not sent", op, wait)
        self.budget.spend()
        started = time.perf_counter()
        try:
            response = await self._http.send(self._http.build_request("GET", path, params=params), stream=True)
        except httpx.HTTPError as e:
            self._observe(self.api, op, "Transient", time.perf_counter() - started)
            raise Transient(f"RunPod could not be reached for {op}: {type(e).__name__}", op) from e
        self.budget.update(response.headers)
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            err = classify(response, op)
            self._observe(self.api, op, type(err).__name__, time.perf_counter() - started)
            raise err
        self._observe(self.api, op, "ok", time.perf_counter() - started)
        return response

    async def billing(self, since: float) -> list[BilledPod]:
        """What RunPod billed each pod from ``since`` (snapped to its month) until now."""
        params = {"bucketSize": "month", "startTime": iso(since)}
        body = await self._json("billing", "GET", "/billing/pods", (RateLimited, Transient), params=params)
        totals: dict[str, list[float]] = {}
        for record in (body or {}).get("records") or []:
            amounts = totals.setdefault(record["podId"], [0.0, 0.0])
            amounts[0] += float(record.get("gpuAmount") or 0.0) + float(record.get("cpuAmount") or 0.0)
            amounts[1] += float(record.get("diskAmount") or 0.0)
        return [BilledPod(pod_id, gpu, storage) for pod_id, (gpu, storage) in totals.items()]

    # -- writes
    async def create_pod(self, spec: PodSpec) -> ProviderPod:
        body = {
            "name": spec.name, "image": spec.image, "gpu": {"id": spec.gpu_type, "count": 1},
            "cloud": spec.cloud_type, "ports": [p.strip() for p in spec.ports.split(",") if p.strip()],
            "env": dict(spec.env), "disk": spec.container_disk_gb,
            "mounts": {"persistent": {"size": spec.volume_gb, "path": "/workspace"}},
        }
        try:
            raw = await self._json("create_pod", "POST", "/pods", (RateLimited,), ok=(200, 201), json=body)
        except Transient:
            # The create may have happened anyway (RunPod answers 5xx for pods it made): look before retrying.
            found = await self.find_by_name(spec.name)
            if found is not None:
                log.warning("create of %s reported an error but the pod exists: adopting %s", spec.name, found.id)
                return found
            raise
        return parse_pod(raw)

    async def _action(self, op: str, pod_id: str, action: str, retry_on: tuple[type[ProviderError], ...]) -> None:
        try:
            await self._json(op, "POST", f"/pods/{pod_id}/action", retry_on, ok=(200, 204), json={"action": action})
        except Conflict as e:
            pod = await self.get_pod(pod_id)  # observe again, then decide
            status = "TERMINATED" if pod is None else pod.status
            if status in _DONE[action]:
                log.info("runpod %s on %s: the pod is already %s", action, pod_id, status)
                return
            raise Conflict(f"RunPod refused {action}: the pod is {status} ({e})", op) from e

    async def resume_pod(self, pod_id: str) -> None:
        await self._action("resume_pod", pod_id, "start", (RateLimited,))

    async def stop_pod(self, pod_id: str) -> None:
        await self._action("stop_pod", pod_id, "stop", (RateLimited, Transient))

    async def terminate_pod(self, pod_id: str) -> None:
        await self._json("terminate_pod", "DELETE", f"/pods/{pod_id}", (RateLimited, Transient), ok=(200, 204))
