"""The controller's cost estimate against what RunPod billed, over a scripted run with churn.

    .venv/bin/python bench/cost.py [--minutes 10] [--seed 1]

The emulator (REST v2, the documented 60/min rate limit, simulated pods that boot in seconds) and the
controller run as separate processes, as deployed. Sessions arrive at random (about one every 12 s), last 20-60 s
and are released; the idle TTL (20 s) stops their pods, standbys are resumed and refilled, surplus stopped pods
are terminated: every transition the estimate has to follow. At the end every lease is released and every pod
stopped, so neither side moves while they are read; then it prints the estimate (``/v1/cost``: spent so far),
what the controller read from RunPod's billing records (``billed_usd``), and the emulator's own ledger, with the
differences.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runpod_emulator.runner import allocate_port

KEY, COMPANION, ADMIN = "bench-key", "bench-companion", "bench-admin"


def start(workdir: Path) -> tuple[list[subprocess.Popen], str, str]:
    emu_port, port = allocate_port("127.0.0.1"), allocate_port("127.0.0.1")
    log = open(workdir / "stack.log", "w")
    emulator = subprocess.Popen(
        [sys.executable, "-m", "runpod_emulator", "serve", "--port", str(emu_port), "--api-key", KEY,
         "--runner", "simulated", "--boot-seconds", "6", "--resume-boot-seconds", "3", "--load-seconds", "1"],
        stdout=log, stderr=log)
    env = dict(os.environ) | {
        "HARPER_RUNPOD_API_KEY": KEY, "HARPER_RUNPOD_API_URL": f"http://127.0.0.1:{emu_port}",
        "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'cost.db'}", "HARPER_API_TOKEN": COMPANION,
        "HARPER_ADMIN_TOKEN": ADMIN, "HARPER_PORT": str(port), "HARPER_IDLE_TTL_S": "20",
        "HARPER_STOPPED_TTL_S": "60", "HARPER_STANDBY_COUNT": "1", "HARPER_BILLING_INTERVAL_S": "10",
        "HARPER_GPU_TYPES": "NVIDIA GeForce RTX 4090,NVIDIA L4", "HARPER_LOG_LEVEL": "WARNING",
    }
    controller = subprocess.Popen([sys.executable, "-m", "reconciler", "run"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return [emulator, controller], url, f"http://127.0.0.1:{emu_port}"
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the stack did not start; see {workdir / 'stack.log'}")


async def session(http: httpx.AsyncClient, name: str, seconds: float, served: list[float]) -> None:
    lease = (await http.post("/v1/leases", json={"session_id": name})).json()
    started = time.monotonic()
    while lease["state"] == "pending":
        lease = (await http.get(f"/v1/leases/{lease['id']}", params={"wait": 20})).json()
    if lease["state"] == "ready":
        served.append(time.monotonic() - started)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(min(15.0, max(0.0, end - time.monotonic())))
            await http.post(f"/v1/leases/{lease['id']}/heartbeat")
    await http.delete(f"/v1/leases/{lease['id']}")


async def run(url: str, emu_url: str, minutes: float, seed: int) -> None:
    rng = random.Random(seed)
    served: list[float] = []
    headers = {"Authorization": f"Bearer {COMPANION}"}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http, \
            httpx.AsyncClient(base_url=url, headers=admin, timeout=60) as adm:
        tasks = []
        began = time.monotonic()
        n = 0
        while time.monotonic() - began < minutes * 60:
            await asyncio.sleep(rng.expovariate(1 / 12))
            n += 1
            tasks.append(asyncio.create_task(session(http, f"s{n}", rng.uniform(20, 60), served)))
            elapsed = time.monotonic() - began
            print(f"  [{elapsed:6.0f}s] {n} sessions started, {len(served)} served", flush=True)
        await asyncio.gather(*tasks)
        print("==> every session ended; waiting until every pod is stopped", flush=True)
        while True:
            pods = (await adm.get("/v1/pods")).json()["pods"]
            if pods and all(p["state"] == "stopped" for p in pods):
                break
            await asyncio.sleep(2)
        await asyncio.sleep(15)  # a billing read (every 10 s) after the last change
        cost = (await adm.get("/v1/cost")).json()
        ledger = (await adm.get(f"{emu_url}/_admin/bill", headers={"Authorization": f"Bearer {KEY}"})).json()
    est, billed = cost["spent_usd"], cost["billed_usd"]
    print(f"\nsessions: {n} started, {len(served)} served; lease wait median "
          f"{sorted(served)[len(served) // 2]:.1f} s" if served else "")
    print(f"{'':26}{'gpu':>12}{'storage':>12}{'total':>12}")
    print(f"{'estimate (/v1/cost)':26}{est['gpu']:12.6f}{est['storage']:12.6f}{est['total']:12.6f}")
    print(f"{'billed (RunPod records)':26}{billed['gpu']:12.6f}{billed['storage']:12.6f}{billed['total']:12.6f}")
    print(f"{'emulator ledger':26}{ledger['gpu_usd']:12.6f}{ledger['storage_usd']:12.6f}{ledger['total_usd']:12.6f}")
    for kind in ("gpu", "storage", "total"):
        gap = (est[kind] - billed[kind]) / billed[kind] * 100 if billed[kind] else float("nan")
        print(f"  estimate vs billed, {kind}: {gap:+.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long sessions keep arriving")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="harper-cost-") as tmp:
        procs, url, emu_url = start(Path(tmp))
        try:
            print(f"==> churn for {args.minutes:g} min against {url}", flush=True)
            asyncio.run(run(url, emu_url, args.minutes, args.seed))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
