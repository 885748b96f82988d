"""``python -m reconciler cost`` against a live controller: the report, --json, and what it says when it
cannot get one."""

from __future__ import annotations

import asyncio
import json

from reconciler.cli import main
from runpod_emulator.runner import allocate_port

from .harness import ADMIN, COMPANION, until


async def cost(capsys, *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["cost", *args])  # a blocking client; the servers run on this loop
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_the_cost_report_of_a_running_controller(stack, capsys) -> None:
    server, api, _ = stack
    lease = (await api.lease("s1")).json()
    ready = (await api.get(f"/v1/leases/{lease['id']}", wait=30)).json()
    assert ready["state"] == "ready"

    async def spent() -> bool:
        body = (await api.get("/v1/cost", ADMIN)).json()
        return body["spent_usd"]["gpu"] > 0 and body["usd_per_hour"]["gpu"] > 0

    await until(spent, timeout=20)
    code, out, _ = await cost(capsys, "--url", server.url, "--token", ADMIN)
    assert code == 0
    assert out.startswith(f"cost at {server.url}")
    for heading in ("now (USD per hour)", "since the database started (USD)", "projection (USD)", "by pod"):
        assert heading in out
    assert ready["pod_id"] in out.split("by pod")[1]

    code, out, _ = await cost(capsys, "--url", server.url, "--token", ADMIN, "--json")
    body = json.loads(out)
    assert code == 0 and body["url"] == server.url and ready["pod_id"] in body["by_pod"]
    rate = body["usd_per_hour"]["total"]
    assert rate > 0 and body["projection"]["month_at_current_rate_usd"] == round(rate * 720, 2)


async def test_the_cost_report_needs_the_admin_token_and_a_controller(stack, capsys) -> None:
    server, _, _ = stack
    code, out, err = await cost(capsys, "--url", server.url, "--token", COMPANION)
    assert code == 3 and out == "" and "refused the token (403)" in err and "HARPER_ADMIN_TOKEN" in err
    assert COMPANION not in err
    nobody = f"http://127.0.0.1:{allocate_port('127.0.0.1')}"
    code, _, err = await cost(capsys, "--url", nobody, "--token", ADMIN)
    assert code == 3 and f"no controller is reachable at {nobody}" in err
