"""RunPod's published REST v2 contract, as a check on every answer the emulator sends in these tests.

``ContractChecker`` finds the operation a response answers (method and path template of the vendored
OpenAPI document, ``tests/contracts/runpod-rest-v2.openapi.json``), picks the declared response for its status
(or ``default``), and checks the content type, the body against the JSON Schema (draft 2020-12, which
OpenAPI 3.1 uses, with ``date-time`` formats checked) and the rate-limit headers. ``rest_client`` installs it
as an httpx response hook, so a test that talks REST cannot see an answer that breaks the contract. A 502 whose
body is HTML is a gateway's page, outside the API's contract, and is only checked for its status.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[1] / "contracts" / "runpod-rest-v2.openapi.json"
URI = "urn:runpod:rest-v2"
_RATE_ITEM = re.compile(r'^"[\w]+";[qrwt]=\d+;[qrwt]=\d+$')


@cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


@cache
def _registry() -> Registry:
    return Registry().with_resource(URI, Resource.from_contents(spec(), default_specification=DRAFT202012))


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for a schema fragment of the document (its ``#/...`` references resolve in the document)."""
    if "$ref" in schema and schema["$ref"].startswith("#"):
        schema = {"$ref": URI + schema["$ref"]}
    return Draft202012Validator(schema, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def component(name: str) -> Draft202012Validator:
    return validator({"$ref": f"#/components/schemas/{name}"})


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """(path template, operation object) of the documented call; AssertionError for an undocumented one."""
    for template, item in spec()["paths"].items():
        pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    raise AssertionError(f"{method} {path} is not an operation of RunPod's REST v2 contract")


@dataclass
class ContractChecker:
    rate_limited: bool = True  # the emulator's policy is on: every authenticated answer carries the headers
    seen: set[tuple[str, str, int]] = field(default_factory=set)  # (method, template, status) checked

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        template, operation = operation_for(request.method, request.url.path)
        status = response.status_code
        declared = operation["responses"].get(str(status)) or operation["responses"].get("default")
        assert declared is not None, f"{request.method} {template}: status {status} is not declared"
        declared = _deref(declared)
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        self.seen.add((request.method, template, status))
        if status == 502 and content_type == "text/html":
            return
        self._check_headers(response, declared)
        content = declared.get("content")
        if not content:
            response.read()
            assert response.content == b"", f"{request.method} {template} {status} must have no body"
            return
        assert content_type in content, f"{request.method} {template} {status}: {content_type!r} not in {list(content)}"
        if content_type == "text/event-stream":
            return  # a live stream: its events are checked by the tests that read them
        response.read()
        body = response.json()
        errors = sorted(validator(content[content_type]["schema"]).iter_errors(body), key=str)
        assert not errors, f"{request.method} {template} {status} breaks the contract:\n" + "\n".join(
            f"  {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )

    def _check_headers(self, response: httpx.Response, declared: dict[str, Any]) -> None:
        headers = declared.get("headers", {})
        if "Retry-After" in headers:
            assert response.headers.get("retry-after", "").isdigit(), "a 429 needs Retry-After in whole seconds"
        if self.rate_limited and response.status_code != 401:
            for name in ("RateLimit", "RateLimit-Policy"):
                value = response.headers.get(name)
                assert value, f"{name} is missing on a {response.status_code} answer"
                assert all(_RATE_ITEM.match(item.strip()) for item in value.split(",")), f"{name}: {value!r}"


def rest_client(base_url: str, key: str | None, checker: ContractChecker, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=base_url, headers=headers, timeout=kwargs.pop("timeout", 10), event_hooks={"response": [checker]},
        **kwargs,
    )
