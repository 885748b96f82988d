"""Query parameters of REST v2's catalog, billing and logs calls, checked as RunPod documents them.

A value of the wrong shape is a 422 listing each bad parameter; a combination the docs forbid is a 400 (for
example ``include=AVAILABILITY`` without ``product``, or ``lastN`` with ``startTime``). The ``errors`` entries
name the parameter (``query.bucketSize: ...``); RunPod's wording for parameters is not recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request

from runpod_emulator.billing import BucketSize, Window, resolve_window
from runpod_emulator.catalogue import CloudType
from runpod_emulator.podlogs import Cursor, LogSource, parse_iso
from runpod_emulator.problems import Problem, validation_problem
from runpod_emulator.rest_views import AvailabilityQuery

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CUDA_EXACT = re.compile(r"^\d+\.\d+$")
_CUDA_FLOOR = re.compile(r"^\d+(\.\d+)?$")
MAX_TAIL = 5000


def _csv(request: Request, name: str) -> list[str] | None:
    raw = request.query_params.get(name)
    return None if raw is None else [v.strip() for v in raw.split(",") if v.strip()]


def _enum(name: str, value: str, allowed: list[str], errors: list[str]) -> None:
    if value not in allowed:
        errors.append(f"query.{name}: value must be one of " + ", ".join(f"'{a}'" for a in allowed))


def _int(request: Request, name: str, minimum: int, maximum: int | None, errors: list[str]) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"-?\d+", raw.strip()):
        errors.append(f"query.{name}: expected integer, but got {raw!r}")
        return None
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        errors.append(f"query.{name}: must be {bound} but found {value}")
        return None
    return value


def _time(request: Request, name: str, errors: list[str]) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        errors.append(f"query.{name}: '{raw}' is not a valid RFC 3339 date-time")
        return None


def availability_query(request: Request) -> AvailabilityQuery | None:
    """The catalog's availability request, or None when availability was not asked for."""
    errors: list[str] = []
    include = _csv(request, "include")
    products = _csv(request, "product")
    for value in include or []:
        _enum("include", value, ["AVAILABILITY"], errors)
    for value in products or []:
        _enum("product", value, ["POD", "CLUSTER", "SERVERLESS"], errors)
    cloud = request.query_params.get("cloud")
    if cloud is not None:
        _enum("cloud", cloud, ["SECURE", "COMMUNITY"], errors)
    count = _int(request, "count", 1, None, errors)
    countries = _csv(request, "countryCodes")
    cudas = _csv(request, "cudaVersions")
    floor = request.query_params.get("minCudaVersion")
    errors += [f"query.countryCodes: '{c}' does not match pattern '^[A-Z]{{2}}$'" for c in countries or []
               if not _COUNTRY.match(c)]
    errors += [f"query.cudaVersions: '{c}' does not match pattern '^\\d+\\.\\d+$'" for c in cudas or []
               if not _CUDA_EXACT.match(c)]
    if floor is not None and not _CUDA_FLOOR.match(floor):
        errors.append(f"query.minCudaVersion: '{floor}' does not match pattern '^\\d+(\\.\\d+)?$'")
    if errors:
        raise validation_problem(errors)
    wants = bool(include)
    if wants and not products:
        raise Problem(400, "include=AVAILABILITY requires product (POD, CLUSTER or SERVERLESS).")
    filters = [n for n in ("product", "count", "cloud", "countryCodes", "cudaVersions", "minCudaVersion")
               if n in request.query_params]
    if not wants and filters:
        raise Problem(400, f"{', '.join(filters)} is valid only with include=AVAILABILITY.")
    if cudas and floor is not None:
        raise Problem(400, "cudaVersions and minCudaVersion are mutually exclusive.")
    if not wants:
        return None
    return AvailabilityQuery(
        cloud=CloudType(cloud or "SECURE"),
        count=count or 1,
        country_codes=tuple(countries or ()),
        cuda_versions=tuple(cudas or ()),
        min_cuda_version=None if floor is None else (floor if "." in floor else f"{floor}.0"),
    )


def billing_query(request: Request, now: float) -> tuple[Window, str | None]:
    errors: list[str] = []
    size = request.query_params.get("bucketSize", BucketSize.DAY.value)
    _enum("bucketSize", size, [b.value for b in BucketSize], errors)
    start, end = _time(request, "startTime", errors), _time(request, "endTime", errors)
    last_n = _int(request, "lastN", 1, None, errors)
    if errors:
        raise validation_problem(errors)
    if last_n is not None and (start is not None or end is not None):
        raise Problem(400, "lastN and startTime/endTime are mutually exclusive: give one or the other.")
    if start is not None and end is not None and start >= end:
        raise Problem(400, "startTime must be before endTime.")
    window = resolve_window(now, BucketSize(size), start, end, last_n)
    return window, request.query_params.get("podId")


@dataclass(frozen=True, slots=True)
class LogsQuery:
    source: LogSource | None
    tail: int
    cursor: Cursor | None


def logs_query(request: Request) -> LogsQuery:
    errors: list[str] = []
    source = request.query_params.get("source")
    if source is not None:
        _enum("source", source, [s.value for s in LogSource], errors)
    tail = _int(request, "tail", 0, MAX_TAIL, errors)
    since = _time(request, "since", errors)
    cursor = None
    if last_event := request.headers.get("last-event-id"):
        try:
            cursor = Cursor.from_event_id(last_event)
        except ValueError:
            errors.append(f"header.Last-Event-ID: '{last_event}' is not an event id this endpoint sent")
    elif since is not None:
        cursor = Cursor(since=since)
    if errors:
        raise validation_problem(errors)
    return LogsQuery(None if source is None else LogSource(source), 100 if tail is None else tail, cursor)
