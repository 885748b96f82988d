"""The controller's ``/v1/leases`` API as the companion library calls it, and its errors.

Errors: ``ControllerError`` (the controller answered with an error; ``.status``, ``.code``),
``ControllerUnavailable`` (it could not be reached), ``LeaseFailed`` (the lease ended without a pod).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


class ControllerError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class ControllerUnavailable(Exception):
    pass


class LeaseFailed(Exception):
    pass


@dataclass
class Lease:
    id: str
    state: str
    path: str | None
    endpoints: dict[str, str] | None
    token: str | None
    pod_id: str | None
    queue_position: int | None
    reason: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Lease:
        return cls(
            id=body["id"], state=body["state"], path=body.get("path"), endpoints=body.get("endpoints"),
            token=body.get("token"), pod_id=body.get("pod_id"), queue_position=body.get("queue_position"),
            reason=body.get("reason"), raw=body,
        )


class LeaseApi:
    """Thin async client of the controller's ``/v1/leases`` endpoints."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _req(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, url, **kw)
        except httpx.TransportError as e:
            raise ControllerUnavailable(f"controller unreachable: {type(e).__name__}") from e
        if response.status_code >= 500 and response.status_code != 503:
            raise ControllerUnavailable(f"controller answered {response.status_code}")
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ControllerError(response.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ControllerError(response.status_code, "http_error", response.text[:200]) from None
        return response.json()

    async def create(self, session_id: str, *, voice_id: str | None = None, language: str | None = None,
                     idempotency_key: str | None = None) -> Lease:
        body = {"session_id": session_id} | ({"voice_id": voice_id} if voice_id else {}) | (
            {"language": language} if language else {})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Lease.parse(await self._req("POST", "/v1/leases", json=body, headers=headers))

    async def get(self, lease_id: str, wait_s: float = 0.0) -> Lease:
        timeout = httpx.Timeout(wait_s + 10.0)
        return Lease.parse(await self._req("GET", f"/v1/leases/{lease_id}", params={"wait": wait_s}, timeout=timeout))

    async def heartbeat(self, lease_id: str) -> Lease:
        return Lease.parse(await self._req("POST", f"/v1/leases/{lease_id}/heartbeat"))

    async def release(self, lease_id: str, *, pod_failed: bool = False) -> Lease:
        params = {"pod_failed": "true"} if pod_failed else {}
        return Lease.parse(await self._req("DELETE", f"/v1/leases/{lease_id}", params=params))

    async def wait_ready(
        self, lease: Lease, timeout_s: float, heartbeat_every_s: float = 20.0,
        on_wait: Callable[[Lease, float], None] | None = None,
    ) -> Lease:
        """Long-poll until the lease leaves ``pending`` (heartbeating so it does not expire meanwhile);
        ``on_wait(lease, seconds)`` is called after each poll that found it still pending."""
        started = time.monotonic()
        deadline = started + timeout_s
        last_beat = started
        while lease.state == "pending":
            if on_wait is not None:
                on_wait(lease, time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"lease {lease.id} still pending after {timeout_s:.0f}s")
            if time.monotonic() - last_beat >= heartbeat_every_s:
                lease, last_beat = await self.heartbeat(lease.id), time.monotonic()
                continue
            lease = await self.get(lease.id, wait_s=min(remaining, heartbeat_every_s, 30.0))
        if lease.state != "ready":
            raise LeaseFailed(f"lease {lease.id} ended {lease.state}: {lease.reason or 'no reason given'}")
        return lease
