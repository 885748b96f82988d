"""Controller benchmarks: plan() scaling, lease API latency under load, warm-path grant latency.

    .venv/bin/python bench/controller.py [--quick]

1. plan() on N pods + N leases (N = 10, 100, 1,000, 5,000): median time and time per item, with the
   ratio to N = 10 (linear growth keeps the per-item time flat). Target: 1,000 under 20 ms.
2. The lease API with 1,000 active leases, the controller and the emulator each in their own process:
   an open-loop load at 200 requests/s (heartbeat 60 %, GET 30 %, create 10 %, each create followed by the
   release of its lease) for p50/p99 per HTTP request, with
   reconcile passes at the default 5 s interval running meanwhile; then a
   closed loop for the throughput ceiling. Baseline in the same run: GET /healthz (no database).
   Target: p99 under 25 ms at 200 requests/s.
3. Warm-path grant: POST /v1/leases answered ``ready`` inline while a Ready pod has a free slot.
   Target: under 50 ms from POST to ready.

    .venv/bin/python bench/controller.py --load 400 [--seconds 60]

The lease API alone under a sustained load (the same mix, open loop) at RATE requests/s, then every lease it
touched is checked: the 1,000 held leases still ready, every lease created under load released. Prints p50/p99/max
per request kind; exits 1 on any error answer or lost lease.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.domain import (
    Desired,
    Lease,
    LeaseState,
    Observed,
    ObservedPod,
    Pod,
    PodPhase,
    PodRole,
    Policy,
    Tuning,
)
from reconciler.planning import plan
from runpod_emulator.runner import allocate_port

GPU = "NVIDIA GeForce RTX 4090"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------------------------ plan()


def scenario(n: int, now: float = 1e6) -> tuple[Desired, Observed]:
    rng = random.Random(n)
    pods, seen, leases = [], {}, []
    phases = [PodPhase.READY] * 6 + [PodPhase.STOPPED, PodPhase.STARTING, PodPhase.STOPPING, PodPhase.CREATING]
    for i in range(n):
        phase = phases[i % len(phases)]
        pod = Pod(id=f"p{i}", role=PodRole.SERVING if phase != PodPhase.STOPPED else PodRole.STANDBY,
                  phase=phase, gpu_type=GPU, created_at=now - 5000, phase_since=now - rng.uniform(0, 400),
                  runpod_id=f"rp{i}", cost_per_hr=0.69, was_ready=True, ready_at=now - 1000,
                  idle_since=now - rng.uniform(0, 600) if rng.random() < 0.3 else None)
        pods.append(pod)
        status = "EXITED" if phase == PodPhase.STOPPED else "RUNNING"
        seen[pod.name] = ObservedPod(f"rp{i}", pod.name, status, cost_per_hr=0.69, endpoint_host="10.0.0.1",
                                     endpoint_port=20000 + i, healthy=phase == PodPhase.READY)
    ready = [p for p in pods if p.phase == PodPhase.READY]
    for i in range(n):
        if i < len(ready) and rng.random() < 0.7:
            leases.append(Lease(f"l{i}", f"s{i}", LeaseState.READY, now - 100, now + rng.uniform(-5, 60),
                                pod_id=ready[i].id, slot=0))
        else:
            leases.append(Lease(f"l{i}", f"s{i}", LeaseState.PENDING, now - rng.uniform(0, 50), now + 60))
    policy = Policy(max_pods=n * 2, budget_usd_per_hour=n * 2.0)
    return Desired(policy, Tuning(), tuple(pods), tuple(leases), {}, {GPU: 0.69}, {}), Observed(seen)


def bench_plan(sizes: list[int], repeats: int) -> None:
    print("\n== plan(desired, observed, now): N pods + N leases ==")
    print(f"{'N':>6} {'median ms':>10} {'p95 ms':>8} {'us/item':>8} {'x per-item vs N=10':>19} {'actions':>8}")
    base = None
    for n in sizes:
        desired, observed = scenario(n)
        times, actions = [], 0
        runs = max(5, repeats if n <= 1000 else repeats // 4)
        for _ in range(runs):
            t0 = time.perf_counter()
            actions = len(plan(desired, observed, 1e6))
            times.append((time.perf_counter() - t0) * 1000)
        med = statistics.median(times)
        per_item = med * 1000 / (2 * n)
        base = base or per_item
        print(f"{n:>6} {med:>10.2f} {pct(times, 95):>8.2f} {per_item:>8.2f} {per_item / base:>19.2f} {actions:>8}")


# ------------------------------------------------------------------------------------------ lease API


class Stack:
    """Emulator and controller as separate processes, like a deployment."""

    def __init__(self, workdir: Path, sessions_per_pod: int) -> None:
        self.workdir = workdir
        self.emu_port, self.port = allocate_port("127.0.0.1"), allocate_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.companion = {"Authorization": "Bearer bench-companion"}
        self.admin = {"Authorization": "Bearer bench-admin"}
        self.sessions_per_pod = sessions_per_pod
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        log = open(self.workdir / "stack.log", "w")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "runpod_emulator", "serve", "--port", str(self.emu_port), "--api-key", "bench",
             "--runner", "simulated", "--boot-seconds", "0.2", "--load-seconds", "0.2"],
            stdout=log, stderr=log))
        env = dict(os.environ) | {
            "HARPER_RUNPOD_API_KEY": "bench", "HARPER_RUNPOD_API_URL": f"http://127.0.0.1:{self.emu_port}",
            "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir / 'bench.db'}",
            "HARPER_API_TOKEN": "bench-companion", "HARPER_ADMIN_TOKEN": "bench-admin",
            "HARPER_PORT": str(self.port), "HARPER_SESSIONS_PER_POD": str(self.sessions_per_pod),
            "HARPER_MAX_PODS": "40", "HARPER_BUDGET_USD_PER_HOUR": "100", "HARPER_LEASE_TTL_S": "600",
            "HARPER_IDLE_TTL_S": "600", "HARPER_RECONCILE_INTERVAL_S": "5", "HARPER_LOG_LEVEL": "WARNING",
            "HARPER_QUEUE_LIMIT": "5000",
        }
        self.procs.append(subprocess.Popen([sys.executable, "-m", "reconciler", "run"], env=env, stdout=log,
                                           stderr=log))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"controller did not start; see {self.workdir / 'stack.log'}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def fill_leases(stack: Stack, n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.companion, timeout=30) as http:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with sem:
                r = await http.post("/v1/leases", json={"session_id": f"bench-{i}"})
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"lease create failed: {r.status_code} {r.text[:300]}")
                return r.json()["id"]

        ids = await asyncio.gather(*(one(i) for i in range(n)))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            r = await http.get("/v1/leases", params={"state": "ready", "limit": n}, headers=stack.admin)
            ready = len(r.json()["leases"])
            print(f"   {ready}/{n} leases ready", end="\r", flush=True)
            if ready >= n:
                break
            await asyncio.sleep(1)
        print()
        return list(ids)


class RawHttp:
    """A lean HTTP/1.1 keep-alive client (asyncio streams): httpx costs the load generator ~1 ms of CPU per
    request, which on this 2-core machine would measure the client rather than the controller."""

    def __init__(self, url: str, token: str, connections: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.token, self.n = host, int(port), token, connections
        self.pool: asyncio.Queue = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.n):
            self.pool.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def close(self) -> None:
        while not self.pool.empty():
            _, writer = self.pool.get_nowait()
            writer.close()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        reader, writer = await self.pool.get()
        try:
            head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            writer.write(head.encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
            return int(status_line.split()[1]), payload
        finally:
            self.pool.put_nowait((reader, writer))


async def open_loop(stack: Stack, lease_ids: list[str], rate: float, seconds: float,
                    created: list[str] | None = None) -> dict[str, list[float]]:
    """Requests start on a fixed schedule whatever the answers do; latency counts from the scheduled time,
    so a stall shows up in the figures instead of slowing the load (no coordinated omission). A scheduled
    create is followed by the release of its lease as soon as it is answered: one more request, timed from
    its own start (so the load is ~220 HTTP requests/s)."""
    import json

    rng = random.Random(5)
    created = created if created is not None else []
    lat: dict[str, list[float]] = {"heartbeat": [], "get": [], "create": [], "release": [], "all": [], "errors": [],
                                   "create+release": []}  # the pair, as a client sees it (not in "all")
    http = RawHttp(stack.url, "bench-companion", 64)
    await http.open()

    def record(kind: str, status: int, started: float) -> None:
        if status >= 400:
            lat["errors"].append(status)
        ms = (time.perf_counter() - started) * 1000
        lat[kind].append(ms)
        lat["all"].append(ms)

    async def one(i: int, due: float) -> None:
        roll = rng.random()
        if roll < 0.6:
            status, _ = await http.request("POST", f"/v1/leases/{rng.choice(lease_ids)}/heartbeat")
            record("heartbeat", status, due)
        elif roll < 0.9:
            status, _ = await http.request("GET", f"/v1/leases/{rng.choice(lease_ids)}")
            record("get", status, due)
        else:
            status, body = await http.request("POST", "/v1/leases", json.dumps({"session_id": f"load-{i}"}).encode())
            record("create", status, due)
            if status in (200, 201):
                lease_id = json.loads(body)["id"]
                created.append(lease_id)
                started = time.perf_counter()
                status, _ = await http.request("DELETE", f"/v1/leases/{lease_id}")
                record("release", status, started)
                lat["create+release"].append((time.perf_counter() - due) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    await http.close()
    return lat


async def closed_loop(stack: Stack, lease_ids: list[str], concurrency: int, seconds: float, path: str) -> float:
    done = 0
    http = RawHttp(stack.url, "bench-companion", concurrency)
    await http.open()
    stop = time.perf_counter() + seconds
    rng = random.Random(9)

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            if path == "healthz":
                await http.request("GET", "/healthz")
            else:
                await http.request("POST", f"/v1/leases/{rng.choice(lease_ids)}/heartbeat")
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await http.close()
    return done / seconds


async def healthz_baseline(stack: Stack, n: int, rate: float) -> list[float]:
    out = []
    http = RawHttp(stack.url, "bench-companion", 1)
    await http.open()
    for _ in range(n):
        t0 = time.perf_counter()
        await http.request("GET", "/healthz")
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(1 / rate)
    await http.close()
    return out


async def warm_grants(stack: Stack, n: int) -> list[float]:
    import json

    out = []
    http = RawHttp(stack.url, "bench-companion", 1)
    await http.open()
    for i in range(n):
        t0 = time.perf_counter()
        status, raw = await http.request("POST", "/v1/leases", json.dumps({"session_id": f"warm-{i}"}).encode())
        ms = (time.perf_counter() - t0) * 1000
        body = json.loads(raw)
        if body["state"] == "ready" and body["path"] == "warm":
            out.append(ms)
        await http.request("DELETE", f"/v1/leases/{body['id']}")
    await http.close()
    return out


def reconcile_totals(stack: Stack) -> tuple[float, float]:
    """(seconds, count) of the controller's reconcile-duration histogram."""
    values = {}
    for line in httpx.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith(("harper_reconcile_duration_seconds_sum", "harper_reconcile_duration_seconds_count")):
            name, value = line.split()
            values[name.rsplit("_", 1)[1]] = float(value)
    return values["sum"], values["count"]


def bench_api(active: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), sessions_per_pod=50)
        stack.start()
        try:
            print(f"\n== lease API with {active} active leases (controller + emulator in their own processes) ==")
            ids = asyncio.run(fill_leases(stack, active))
            base = asyncio.run(healthz_baseline(stack, 300, 200))
            passes_before = reconcile_totals(stack)
            lat = asyncio.run(open_loop(stack, ids, 200, seconds))
            passes = [after - before for after, before in zip(reconcile_totals(stack), passes_before, strict=True)]
            n = len(lat["all"])
            print(f"open loop 200 req/s for {seconds:.0f}s: {n} requests, {len(lat['errors'])} errors")
            print(f"{'request':>16} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'x p50 vs /healthz':>18}")
            b50 = statistics.median(base)
            print(f"{'/healthz (base)':>16} {len(base):>6} {b50:>8.2f} {pct(base, 99):>8.2f} {1.0:>18.2f}")
            for kind in ("heartbeat", "get", "create", "release", "all", "create+release"):
                v = lat[kind]
                if v:
                    p50 = statistics.median(v)
                    print(f"{kind:>16} {len(v):>6} {p50:>8.2f} {pct(v, 99):>8.2f} {p50 / b50:>18.2f}")
            hb = asyncio.run(closed_loop(stack, ids, 16, 5.0, "heartbeat"))
            hz = asyncio.run(closed_loop(stack, ids, 16, 5.0, "healthz"))
            print(f"closed loop, 16 connections: heartbeat {hb:.0f} req/s, /healthz {hz:.0f} req/s "
                  f"(ratio {hb / hz:.2f})")
            mean_ms = passes[0] / max(passes[1], 1) * 1000
            print(f"reconcile passes during the open loop: {passes[1]:.0f}, mean {mean_ms:.0f} ms each "
                  "(wall time, the API's requests interleaved)")
            print("\n== warm-path grant: POST /v1/leases -> ready inline ==")
            grants = asyncio.run(warm_grants(stack, 200))
            print(f"{len(grants)} warm grants: p50 {statistics.median(grants):.2f} ms, p95 {pct(grants, 95):.2f} ms, "
                  f"p99 {pct(grants, 99):.2f} ms")
        finally:
            stack.stop()


async def lost_leases(stack: Stack, held: list[str], created: list[str]) -> list[str]:
    """Every lease the load touched, as the controller has it now: the held ones still ready (their heartbeats
    kept them), every one created under load released (it was released as soon as it was answered)."""
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.admin, timeout=60) as http:
        rows = (await http.get("/v1/leases", params={"limit": 10_000})).json()["leases"]
    state = {row["id"]: row["state"] for row in rows}
    lost = [f"{i}: {state.get(i, 'unknown')} (held)" for i in held if state.get(i) != "ready"]
    lost += [f"{i}: {state.get(i, 'unknown')} (created)" for i in created if state.get(i) != "released"]
    return lost


def bench_load(active: int, rate: float, seconds: float) -> bool:
    """The lease API under a sustained open-loop load: no error, no lost lease, p50/p99 per request kind."""
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), sessions_per_pod=50)
        stack.start()
        try:
            print(f"\n== lease API under load: {rate:.0f} requests/s for {seconds:.0f} s, {active} leases held ==")
            ids = asyncio.run(fill_leases(stack, active))
            created: list[str] = []
            lat = asyncio.run(open_loop(stack, ids, rate, seconds, created))
            lost = asyncio.run(lost_leases(stack, ids, created))
            n = len(lat["all"])
            print(f"{n} HTTP requests in {seconds:.0f} s ({n / seconds:.0f}/s, of which {len(created)} creates each "
                  f"followed by its release); errors: {len(lat['errors'])}; leases lost: {len(lost)}")
            print(f"{'request':>16} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            for kind in ("heartbeat", "get", "create", "release", "all", "create+release"):
                v = lat[kind]
                if v:
                    print(f"{kind:>16} {len(v):>6} {statistics.median(v):>8.2f} {pct(v, 99):>8.2f} {max(v):>8.2f}")
            for line in lost[:20]:
                print("LOST:", line)
            return not lat["errors"] and not lost
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (for a smoke test)")
    parser.add_argument("--skip-api", action="store_true", help="plan() only")
    parser.add_argument("--load", type=float, metavar="RATE",
                        help="only the load run: RATE lease requests/s (open loop) for --seconds, then a check that "
                             "no lease was lost; exit status 1 on any error or lost lease")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the --load run (default 60)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.load:
        sys.exit(0 if bench_load(active=1000, rate=args.load, seconds=args.seconds) else 1)
    bench_plan([10, 100, 1000, 5000], repeats=10 if args.quick else 40)
    if not args.skip_api:
        bench_api(active=200 if args.quick else 1000, seconds=5.0 if args.quick else 15.0)


if __name__ == "__main__":
    main()
