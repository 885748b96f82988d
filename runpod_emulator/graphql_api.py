"""``POST /graphql``: auth, parsing, fault injection and RunPod's error conventions around the schema.

Status codes, as RunPod answers them (reference sections 1.3 and 2.9):
    401  missing or wrong API key (the SDK raises ``AuthenticationError``)
    400  a query that does not parse or validate, or variables of the wrong type, with ``errors``
    200  everything else, business failures included: ``{"errors": [{"message", "path",
         "extensions": {"code": "RUNPOD"}}], "data": {"<field>": null}}`` (capacity, balance, not found)
    500  the ``internal`` fault: "Something went wrong..." with code INTERNAL_SERVER_ERROR
    502  the ``gateway`` fault: Cloudflare's HTML page, not JSON
    429  the ``rate_limit`` fault (an ``errors`` body) or ``rate_limit_recorded`` (the bare ``{"message"}``
         body RunPod was seen sending), with ``Retry-After: 1``

Every call is counted in ``emulator.requests`` under the operations of its root fields (``operations.py``),
before the key is checked, so ``/_admin/requests`` shows what a client tried, refused or not.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    execute,
    parse,
    validate,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runpod_emulator.auth import UNAUTHORIZED_BODY, graphql_key_ok
from runpod_emulator.emulator import Emulator
from runpod_emulator.errors import FleetError
from runpod_emulator.faults import FaultKind, Hit
from runpod_emulator.messages import (
    GATEWAY_HTML,
    INTERNAL_ERROR,
    LOW_BALANCE,
    NO_CUDA_HOST,
    NO_INSTANCES,
    NO_RESOURCES,
    NOT_ENOUGH_FREE_GPUS,
    RATE_LIMITED,
    RATE_LIMITED_BARE,
)
from runpod_emulator.operations import GRAPHQL_FIELDS, Api
from runpod_emulator.schema import GraphQLContext

log = logging.getLogger("runpod_emulator")

__all__ = ["INTERNAL_ERROR", "RATE_LIMITED", "GraphQLEndpoint", "prepare"]

# Faults answered as a business error (HTTP 200 + errors, code RUNPOD) with RunPod's sentence.
_BUSINESS_FAULTS = {
    FaultKind.HOST_GPU_BUSY: NOT_ENOUGH_FREE_GPUS,
    FaultKind.OUT_OF_STOCK: NO_INSTANCES,
    FaultKind.NO_RESOURCES: NO_RESOURCES,
    FaultKind.NO_CUDA_HOST: NO_CUDA_HOST,
    FaultKind.LOW_BALANCE: LOW_BALANCE,
}


def _error(message: str, code: str, path: list[str | int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if path is not None:
        body["path"] = path
    body["extensions"] = {"code": code}
    return body


# graphql-core words two common validation errors differently from RunPod's graphql-js server; clients
# (and the reference) match on RunPod's wording, so it is restored here.
_UNKNOWN_INPUT_FIELD = re.compile(r"Expected value of type '(\w+)!?' not to include unknown field '(\w+)'")
_UNKNOWN_FIELD = re.compile(r"^Cannot query field '(\w+)' on type '(\w+)'\.")


def _runpod_wording(message: str) -> str:
    if match := _UNKNOWN_INPUT_FIELD.search(message):
        return f'Field "{match[2]}" is not defined by type "{match[1]}".'
    if match := _UNKNOWN_FIELD.search(message):
        return f'Cannot query field "{match[1]}" on type "{match[2]}".' + message[match.end() :]
    return message


def _bad_request(errors: list[GraphQLError], code: str) -> JSONResponse:
    formatted = [{**e.formatted, "message": _runpod_wording(e.message), "extensions": {"code": code}} for e in errors]
    return JSONResponse({"errors": formatted}, status_code=400)


def _root_fields(document: DocumentNode, operation_name: str | None) -> list[str]:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name is not None and o.name.value == operation_name]
    if not operations:
        return []
    return [
        s.name.value
        for s in operations[0].selection_set.selections
        if isinstance(s, FieldNode) and not s.name.value.startswith("__")
    ]


def _format_result(result: ExecutionResult) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if result.errors:
        errors = []
        for err in result.errors:
            if isinstance(err.original_error, FleetError):
                errors.append(_error(err.message, "RUNPOD", list(err.path or [])))
            else:
                log.error("resolver failed: %s", err, exc_info=err.original_error)
                errors.append(_error(INTERNAL_ERROR, "INTERNAL_SERVER_ERROR", list(err.path or [])))
        body["errors"] = errors
    body["data"] = result.data
    return body


def _fault_response(hit: Hit) -> Response:
    """The answer for a fault that stops the call before anything happens (or after, for ``applied``)."""
    kind, field = hit.rule.kind, hit.field
    if kind is FaultKind.AUTH:
        return JSONResponse(UNAUTHORIZED_BODY, status_code=401)
    if kind is FaultKind.RATE_LIMIT:
        return JSONResponse(
            {"errors": [_error(RATE_LIMITED, "RATE_LIMITED")]}, status_code=429, headers={"Retry-After": "1"}
        )
    if kind is FaultKind.RATE_LIMIT_RECORDED:
        return JSONResponse({"message": RATE_LIMITED_BARE}, status_code=429, headers={"Retry-After": "1"})
    if kind is FaultKind.INTERNAL:
        return JSONResponse(
            {"errors": [_error(INTERNAL_ERROR, "INTERNAL_SERVER_ERROR", [field])], "data": {field: None}},
            status_code=500,
        )
    if kind is FaultKind.GATEWAY:
        return Response(GATEWAY_HTML, status_code=502, media_type="text/html")
    message = _BUSINESS_FAULTS[kind]
    return JSONResponse({"errors": [_error(message, "RUNPOD", [field])], "data": {field: None}})


def _operations(body: object, endpoint: GraphQLEndpoint) -> list[str]:
    """The operations a request body touches, for counting; [] when it names none (counted as invalid)."""
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return []
    document, _, _ = endpoint.prepare(body["query"])
    if document is None:
        return []
    fields = _root_fields(document, body.get("operationName"))
    return [GRAPHQL_FIELDS[f].value for f in fields if f in GRAPHQL_FIELDS]


def prepare(schema: GraphQLSchema, query: str) -> tuple[DocumentNode | None, list[GraphQLError], str]:
    """Parse and validate a query: the document, or the errors and their code."""
    try:
        document = parse(query)
    except GraphQLError as e:
        return None, [e], "GRAPHQL_PARSE_FAILED"
    if errors := validate(schema, document):
        return None, errors, "GRAPHQL_VALIDATION_FAILED"
    return document, [], ""


class GraphQLEndpoint:
    """The ``POST /graphql`` handler for one schema."""

    def __init__(self, schema: GraphQLSchema) -> None:
        self.schema = schema
        # $variables clients send the same text every time; parsing and validating it once saves most of the
        # cost of a request. Documents are immutable, so sharing them is safe.
        self.prepare = functools.lru_cache(maxsize=256)(functools.partial(prepare, schema))

    async def __call__(self, request: Request) -> Response:
        emulator: Emulator = request.app.state.emulator
        try:
            body = await request.json()
        except ValueError:
            body = None
        emulator.requests.count(Api.GRAPHQL, _operations(body, self))
        if not graphql_key_ok(request, emulator.settings):
            return JSONResponse(UNAUTHORIZED_BODY, status_code=401)
        try:
            if not isinstance(body, dict):
                raise TypeError
            query, variables = body["query"], body.get("variables")
            operation_name = body.get("operationName")
            if not isinstance(query, str) or not isinstance(variables, dict | None):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            message = 'The body must be JSON: {"query": string, "variables"?: object, "operationName"?: string}.'
            return JSONResponse({"errors": [_error(message, "BAD_REQUEST")]}, status_code=400)

        document, errors, code = self.prepare(query)
        if document is None:
            return _bad_request(errors, code)

        await emulator.tick()
        hit = emulator.faults.draw(_root_fields(document, operation_name))
        if hit is not None:
            log.warning(
                "fault injected: %s on %s%s",
                hit.rule.kind,
                hit.field,
                " (operation applied)" if hit.rule.applies_operation else "",
            )
            if not hit.rule.applies_operation:
                return _fault_response(hit)

        never_boot = hit is not None and hit.rule.kind is FaultKind.NO_RUNTIME
        context = GraphQLContext(emulator, never_boot)
        result = execute(
            self.schema, document, context_value=context, variable_values=variables, operation_name=operation_name
        )
        if inspect.isawaitable(result):
            result = await result
        if result.data is None and result.errors:  # variable coercion failed: nothing ran
            return _bad_request(list(result.errors), "BAD_USER_INPUT")

        if hit is not None and hit.rule.kind in (FaultKind.INTERNAL, FaultKind.GATEWAY):
            return _fault_response(hit)  # RunPod can fail a call that did happen
        if hit is not None and hit.rule.kind is FaultKind.TIMEOUT:
            await asyncio.sleep(hit.rule.delay)  # a client that gives up first never learns it succeeded
        return JSONResponse(_format_result(result))
