"""``python -m reconciler cost``: the controller's cost report from the admin API (``GET /v1/cost``).

Shows the spend rate now, what was spent (the controller's estimate and, where the controller reports them,
RunPod's billed figures), the same by pod, and a projection for a 30-day month. Periods the controller
reports (``today``, ``month_to_date``) are shown when present; older controllers report only the total
since their database started. ``--json`` prints the controller's answer with the projection added.
"""

from __future__ import annotations

import argparse
import calendar
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx

KINDS = ("gpu", "storage")
PERIODS = (("today", "today"), ("month_to_date", "month to date"), ("spent_usd", "since the database started"))
MONTH_HOURS = 30 * 24.0


class CostUnavailable(Exception):
    """The controller could not be asked, or refused."""


def fetch(url: str, token: str, timeout: float = 10.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``GET /v1/cost`` and ``GET /v1/pods?all=true`` (for the pods' GPU type and state)."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
            cost = http.get("/v1/cost")
            if cost.status_code in (401, 403):
                raise CostUnavailable(f"the controller refused the token ({cost.status_code}): "
                                      "the cost report needs the admin token (HARPER_ADMIN_TOKEN)")
            cost.raise_for_status()
            pods = http.get("/v1/pods", params={"all": "true"})
            pods.raise_for_status()
            return cost.json(), pods.json().get("pods", [])
    except httpx.HTTPStatusError as e:
        raise CostUnavailable(f"the controller answered {e.response.status_code}: {e.response.text[:200]}") from e
    except httpx.HTTPError as e:
        raise CostUnavailable(f"no controller is reachable at {url} ({type(e).__name__})") from e


def projection(cost: dict[str, Any], now: float) -> dict[str, Any]:
    """A 30-day month at the current rate; and, where the controller reports month to date, this calendar
    month's end: spent so far plus the current rate for the hours left."""
    rate = float(cost.get("usd_per_hour", {}).get("total", 0.0))
    out: dict[str, Any] = {"month_at_current_rate_usd": round(rate * MONTH_HOURS, 2)}
    mtd = cost.get("month_to_date")
    if isinstance(mtd, dict) and "total" in mtd:
        today = datetime.fromtimestamp(now, UTC)
        days = calendar.monthrange(today.year, today.month)[1]
        month_end = datetime(today.year, today.month, days, tzinfo=UTC).timestamp() + 86400
        left_h = max(0.0, month_end - now) / 3600
        out["calendar_month_end_usd"] = round(float(mtd["total"]) + rate * left_h, 2)
    return out


def render(url: str, cost: dict[str, Any], pods: list[dict[str, Any]], now: float) -> str:
    billed = cost.get("billed_usd") if isinstance(cost.get("billed_usd"), dict) else None
    lines = [f"cost at {url}"]
    if billed is None:
        lines.append("  billed: not reported (RunPod's billing records come with the REST API; GraphQL has none)")
    elif billed.get("as_of"):
        lines.append(f"  billed: RunPod's billing records as of {billed['as_of']}")
    lines += ["", f"{'':34}{'estimated':>12}{'billed':>12}"]
    rate = cost.get("usd_per_hour", {})
    lines.append("now (USD per hour)")
    for kind in (*KINDS, "total"):
        lines.append(f"  {kind:32}{_num(rate.get(kind), 4):>12}")
    for key, label in PERIODS:
        period = cost.get(key)
        if not isinstance(period, dict):
            lines.append(f"{label} (USD): not reported by this controller")
            continue
        lines.append(f"{label} (USD)")
        period_billed = (period.get("billed") or (billed if key == "spent_usd" else None)) or {}
        for kind in (*KINDS, "total"):
            lines.append(f"  {kind:32}{_num(period.get(kind), 4):>12}{_num(period_billed.get(kind), 4):>12}")
    proj = projection(cost, now)
    lines += ["", "projection (USD)",
              f"  {'30-day month at the current rate':32}{proj['month_at_current_rate_usd']:>12.2f}"]
    if "calendar_month_end_usd" in proj:
        lines.append(f"  {'this month, at its end':32}{proj['calendar_month_end_usd']:>12.2f}")
    lines += ["", _by_pod(cost.get("by_pod", {}), pods)]
    return "\n".join(lines)


def _by_pod(by_pod: dict[str, dict[str, Any]], pods: list[dict[str, Any]]) -> str:
    info = {p["id"]: p for p in pods}
    head = (f"{'by pod':14} {'gpu type':24} {'state':11} {'gpu est':>10} {'storage est':>12} "
            f"{'gpu billed':>11} {'storage billed':>15}")
    rows = []
    for pod_id, amounts in sorted(by_pod.items(), key=lambda kv: -sum(kv[1].get(k, 0.0) for k in KINDS)):
        pod = info.get(pod_id, {})
        billed = amounts.get("billed") or {}
        rows.append(f"  {pod_id:12} {str(pod.get('gpu_type', '?'))[:24]:24} {pod.get('state', '?'):11} "
                    f"{_num(amounts.get('gpu'), 4):>10} {_num(amounts.get('storage'), 4):>12} "
                    f"{_num(billed.get('gpu'), 4):>11} {_num(billed.get('storage'), 4):>15}")
    return "\n".join([head, *rows] if rows else [head, "  (no spend recorded yet)"])


def _num(value: Any, places: int) -> str:
    return "-" if value is None else f"{float(value):.{places}f}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="the controller's cost report (now, spent, projection; by kind and pod)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="controller URL (default from HARPER_PUBLIC_URL or HARPER_HOST/HARPER_PORT)")
    p.add_argument("--token", help="admin token (default HARPER_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="the controller's answer with the projection, as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from .settings import Settings

    settings = Settings()
    url = args.url or settings.public_url or f"http://{settings.host}:{settings.port}"
    token = args.token or settings.admin_token.get_secret_value()
    if not token:
        print("cost: no admin token: pass --token or set HARPER_ADMIN_TOKEN (the controller prints it on start)",
              file=sys.stderr)
        return 2
    try:
        cost, pods = fetch(url, token)
    except CostUnavailable as e:
        print(f"cost: {e}", file=sys.stderr)
        return 3
    now = time.time()
    if args.json:
        print(json.dumps({"url": url, **cost, "projection": projection(cost, now)}, indent=2))
    else:
        print(render(url, cost, pods, now))
    return 0
