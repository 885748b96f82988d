"""REST v2 errors: RFC 9457 problem documents (``application/problem+json``), and the faults as REST sees them.

A handler raises ``Problem``; the app's exception handler renders it with the rate-limit headers the request
was admitted with (every authenticated answer carries them; a 401 does not). Status codes follow RunPod's
v2 table: 400 a broken cross-field rule or no capacity (only ``detail`` tells which), 401 bad key, 402 balance
too low, 404 no such pod, 409 action not valid now, 422 body or parameters off the schema (``errors`` lists
each), 429 rate limited (``Retry-After``), 5xx upstream trouble. ``GatewayProblem`` is the exception to the
shape: a 502 whose body is Cloudflare's HTML page, as a gateway in front of the API sends it.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runpod_emulator.errors import FleetError, PodNotFound
from runpod_emulator.faults import FaultKind, Hit
from runpod_emulator.messages import (
    GATEWAY_HTML,
    INTERNAL_ERROR,
    LOW_BALANCE,
    NO_CUDA_HOST,
    NO_INSTANCES,
    NO_RESOURCES,
    NOT_ENOUGH_FREE_GPUS,
)

PROBLEM_JSON = "application/problem+json"
# Texts of our own where RunPod's are not recorded: clients must go by the status code.
UNAUTHORIZED = "The API key is missing or invalid."
VALIDATION_FAILED = "The request does not match the API's schema."


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[str] | None = None,
        headers: dict[str, str] | None = None,
        rate_headers: bool = True,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.rate_headers = rate_headers  # False for a 401: the caller was not identified

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"title": HTTPStatus(self.status).phrase, "status": self.status}
        body["detail"] = self.detail
        if self.errors is not None:
            body["errors"] = self.errors
        return body

    def response(self, headers: dict[str, str]) -> Response:
        return JSONResponse(self.body(), status_code=self.status, headers=headers, media_type=PROBLEM_JSON)


class GatewayProblem(Problem):
    def __init__(self) -> None:
        super().__init__(502, "Bad Gateway")

    def response(self, headers: dict[str, str]) -> Response:
        return Response(GATEWAY_HTML, status_code=502, headers=headers, media_type="text/html")


async def problem_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    headers = dict(getattr(request.state, "rate_headers", {})) if exc.rate_headers else {}
    return exc.response({**headers, **exc.headers})


def validation_problem(errors: list[str]) -> Problem:
    return Problem(422, VALIDATION_FAILED, errors=errors)


def fleet_problem(error: FleetError) -> Problem:
    """404 for an unknown pod; 400 for the rest: a capacity error (RunPod's sentence) or a bad request."""
    return Problem(404 if isinstance(error, PodNotFound) else 400, str(error))


_FAULT_TEXTS: dict[FaultKind, tuple[int, str]] = {
    FaultKind.HOST_GPU_BUSY: (400, NOT_ENOUGH_FREE_GPUS),
    FaultKind.OUT_OF_STOCK: (400, NO_INSTANCES),
    FaultKind.NO_RESOURCES: (400, NO_RESOURCES),
    FaultKind.NO_CUDA_HOST: (400, NO_CUDA_HOST),
    FaultKind.LOW_BALANCE: (402, LOW_BALANCE),
    FaultKind.INTERNAL: (500, INTERNAL_ERROR),
}


def fault_problem(hit: Hit) -> Problem:
    """The REST answer for an injected fault that fails the call."""
    kind = hit.rule.kind
    if kind is FaultKind.GATEWAY:
        return GatewayProblem()
    if kind is FaultKind.AUTH:
        return Problem(401, UNAUTHORIZED, rate_headers=False)
    if kind in (FaultKind.RATE_LIMIT, FaultKind.RATE_LIMIT_RECORDED):
        return Problem(429, "Rate limit exceeded: retry after 1 seconds.", headers={"Retry-After": "1"})
    status, text = _FAULT_TEXTS[kind]
    return Problem(status, text)
