"""Request-body checks for REST v2, answered the way RunPod's v2 API words them (HTTP 422, ``errors``).

RunPod validates bodies against its published JSON Schema and lists each violation as ``<where>: <what>``,
e.g. ``$: additional properties 'bogus' not allowed`` (the one recorded example; the other messages follow
the same validator's wording). The shapes below are the emulator's own reading of the request bodies it
accepts (create, update, action), written from the published schema but not copied from it: only the
fields a client can send, with their types and bounds. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Prop:
    kind: str  # string, integer, number, boolean, object, array, map (an object of strings)
    nullable: bool = False
    minimum: int | None = None
    min_length: int | None = None
    max_items: int | None = None
    enum: tuple[str, ...] = ()
    pattern: str | None = None
    shape: Shape | None = None  # object: its properties
    items: Prop | None = None  # array: each item


@dataclass(frozen=True, slots=True)
class Shape:
    props: Mapping[str, Prop]
    required: frozenset[str] = field(default_factory=frozenset)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fits(kind: str, value: Any) -> bool:
    got = _type_name(value)
    if kind == "map":
        return got == "object"
    return got == kind or (kind == "number" and got == "integer")


def check(value: Any, shape: Shape, where: str = "$") -> list[str]:
    """Every violation of ``shape`` in ``value``, RunPod-style; empty when the body is fine."""
    if not isinstance(value, dict):
        return [f"{where}: expected object, but got {_type_name(value)}"]
    errors = []
    missing = sorted(shape.required - value.keys())
    if missing:
        errors.append(f"{where}: missing properties: " + ", ".join(f"'{m}'" for m in missing))
    unknown = sorted(value.keys() - shape.props.keys())
    if unknown:
        errors.append(f"{where}: additional properties " + ", ".join(f"'{u}'" for u in unknown) + " not allowed")
    for name, prop in shape.props.items():
        if name in value:
            errors.extend(_check_prop(value[name], prop, f"{where}.{name}"))
    return errors


def _check_prop(value: Any, prop: Prop, where: str) -> list[str]:
    if value is None and prop.nullable:
        return []
    if not _fits(prop.kind, value):
        want = "object" if prop.kind == "map" else prop.kind
        return [f"{where}: expected {want}, but got {_type_name(value)}"]
    if prop.kind == "object" and prop.shape is not None:
        return check(value, prop.shape, where)
    if prop.kind == "map":
        wrong = [(k, v) for k, v in value.items() if not isinstance(v, str)]
        return [f"{where}.{k}: expected string, but got {_type_name(v)}" for k, v in wrong]
    if prop.kind == "array":
        errors = []
        if prop.max_items is not None and len(value) > prop.max_items:
            errors.append(f"{where}: maxItems: got {len(value)}, want {prop.max_items}")
        if prop.items is not None:
            for i, item in enumerate(value):
                errors.extend(_check_prop(item, prop.items, f"{where}[{i}]"))
        return errors
    if prop.enum and value not in prop.enum:
        return [f"{where}: value must be one of " + ", ".join(f"'{e}'" for e in prop.enum)]
    if prop.minimum is not None and value < prop.minimum:
        return [f"{where}: must be >= {prop.minimum} but found {value}"]
    if prop.min_length is not None and len(value) < prop.min_length:
        return [f"{where}: length must be >= {prop.min_length}, but got {len(value)}"]
    if prop.pattern is not None and not re.search(prop.pattern, value):
        return [f"{where}: '{value}' does not match pattern '{prop.pattern}'"]
    return []


_STRING = Prop("string")
_CUDA = Prop("string", pattern=r"^\d+\.\d+$")
_PERSISTENT = Shape({"size": Prop("integer", minimum=10), "path": _STRING}, frozenset({"size", "path"}))
_NETWORK = Shape({"volumeId": _STRING, "path": _STRING}, frozenset({"volumeId", "path"}))
_MOUNTS = Prop(
    "object",
    shape=Shape(
        {
            "persistent": Prop("object", shape=_PERSISTENT),
            "network": Prop("array", max_items=1, items=Prop("object", shape=_NETWORK)),
        }
    ),
)
_CONTAINER: dict[str, Prop] = {
    "image": _STRING,
    "args": _STRING,
    "disk": Prop("integer", minimum=1),
    "ports": Prop("array", items=_STRING),
    "env": Prop("map"),
    "registry": Prop("string", nullable=True),
}

CREATE_POD = Shape(
    {
        **_CONTAINER,
        "name": Prop("string", min_length=1),
        "cloud": Prop("string", enum=("SECURE", "COMMUNITY")),
        "gpu": Prop(
            "object",
            shape=Shape(
                {
                    "id": _STRING,
                    "count": Prop("integer", minimum=1),
                    "allowedCudaVersions": Prop("array", items=_CUDA),
                    "minCudaVersion": _CUDA,
                },
                frozenset({"id"}),
            ),
        ),
        "cpu": Prop(
            "object",
            shape=Shape(
                {"id": Prop("string", min_length=1), "vcpuCount": Prop("integer", minimum=2)},
                frozenset({"id", "vcpuCount"}),
            ),
        ),
        "dataCenterIds": Prop("array", items=_STRING),
        "globalNetworking": Prop("boolean"),
        "mounts": _MOUNTS,
        "startJupyter": Prop("boolean"),
        "startSsh": Prop("boolean"),
        "templateId": Prop("string", min_length=1),
    },
    frozenset({"name"}),
)

UPDATE_POD = Shape(
    {
        **_CONTAINER,
        "name": Prop("string", min_length=1),
        "globalNetworking": Prop("boolean"),
        "locked": Prop("boolean"),
        "mounts": _MOUNTS,
        "templateId": _STRING,
    }
)

POD_ACTION = Shape(
    {"action": Prop("string", enum=("start", "stop", "restart", "terminate"))}, frozenset({"action"})
)
