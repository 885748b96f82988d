"""The chaos run: many companion sessions against the real daemon while it is SIGKILLed at random moments, RunPod
(the emulator) fails a fifth of its calls on both APIs, and other tenants take and give back GPUs.

``tests/integration/test_chaos.py`` runs a short one (20 kills) in ``make test``; ``bench/chaos.py`` a long one
(100+ kills) and prints the figures. In the flow:

1. The emulator runs in this process (simulated pods: creates pull for ``boot_s``, resumes are faster, ports come
   some time after RUNNING), with fault rules on both APIs: internal errors (some carried out anyway), rate limits
   (GraphQL's as recorded: a bare body the SDK chokes on), timeouts (the answer held past the controller's
   patience, the call carried out), host-GPU-busy on resumes; the first GPU type is kept out of stock by other
   tenants, who also take freed GPUs elsewhere and give them back at seeded rates.
2. The controller runs as ``python -m reconciler run`` (REST v2; a share of restarts on GraphQL through the SDK,
   over the same database), all its output appended to one log. Sessions arrive at random: create a lease
   (retrying the same Idempotency-Key through crashes), long-poll until it is ready, heartbeat while they hold
   it, then release it (most) or vanish (the rest, whose leases must expire).
3. The daemon is SIGKILLed at random moments: mid-boot, or at work after a random while; restarted at once.
   While it is down, the database and RunPod are checked: no two leases ever held one slot (the ready/ended
   intervals), every ended lease ended with a reason, every ``harper-`` pod at RunPod has its intent row.
4. At the end the faults stop, every session finishes, the controller settles (no lease left active, no
   ``harper-`` pod it does not know), then winds down to nothing (standby 0), so that its cost estimate can be
   set against the emulator's final bill. Every answer the sessions and the operator got, every event, the metrics
   and the daemon's whole output are searched for the RunPod key, the API tokens, every lease token and every
   pod secret.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from runpod_emulator.runner import allocate_port
from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import ADMIN, COMPANION, EMULATOR_KEY, Api, Daemon, EmulatorAdmin, daemon_env


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


GPU_TYPES = ("NVIDIA GeForce RTX 4090", "NVIDIA L4", "NVIDIA A40")  # the first one is kept out of stock
# Three renewal periods of the controller lock (10 s): a controller that took over from a dead one can tell an
# outage long enough to threaten heartbeating clients (then it gives every lease a TTL) from a crash loop's restart.
LEASE_TTL_S = 30.0


@dataclass
class ChaosConfig:
    kills: int = 20
    seed: int = 1
    arrivals_per_s: float = 1.0  # sessions arriving (Poisson) while the kills go on
    hold_s: tuple[float, float] = (1.0, 6.0)  # how long a session holds its ready lease
    vanish_share: float = 0.2  # sessions that never release: their leases must expire
    mid_boot_share: float = 0.25  # kills in the first seconds of a start (migrating, claiming, first pass)
    at_work_s: tuple[float, float] = (0.3, 4.0)  # otherwise: this long after the API answers
    fault_rate: float = 0.2  # RunPod calls that fail (internal, rate limit, timeout)
    resume_busy_rate: float = 0.3  # resumes answered "not enough free GPUs on the host machine"
    graphql_share: float = 0.25  # restarts on GraphQL (the SDK) instead of REST v2
    tenant_take_per_hour: float = 120.0  # other tenants take each free GPU at this rate ...
    tenant_release_per_hour: float = 360.0  # ... and give theirs back at this one
    max_pods: int = 20
    settle_s: float = 120.0


@dataclass
class Figures:
    kills: int = 0
    kills_mid_boot: int = 0
    graphql_starts: int = 0
    sessions: int = 0
    leases: Counter = field(default_factory=Counter)  # served, released_waiting, expired, failed, ...
    by_path: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # why the leases that were not released ended
    expired_heartbeating: int = 0  # leases that expired although their session kept heartbeating
    wait_db: list[float] = field(default_factory=list)  # created -> ready, as the controller recorded it
    wait_seen: list[float] = field(default_factory=list)  # first POST -> ready, as a session saw it
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    pods_unknown: int = 0
    pods_leaked: int = 0
    calls: dict = field(default_factory=dict)
    faults_fired: Counter = field(default_factory=Counter)
    estimate_usd: float = 0.0  # the controller's own estimate (/v1/cost spent_usd)
    hidden_usd: float = 0.0  # what RunPod billed while the daemon was down or starting: no pass accounted it
    read_billed_usd: float | None = None  # what the controller read from RunPod's billing records (REST)
    billed_usd: float = 0.0  # the emulator's bill
    down_s: float = 0.0
    run_s: float = 0.0
    scanned_bytes: int = 0
    secrets_found: list[str] = field(default_factory=list)
    events: Counter = field(default_factory=Counter)

    def accounted_gap(self) -> float:
        """(estimate + what was billed while no pass could account) against the bill, as a share of the bill."""
        return (self.estimate_usd + self.hidden_usd - self.billed_usd) / self.billed_usd if self.billed_usd else 0.0

    @staticmethod
    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def lines(self) -> list[str]:
        leases = sum(self.leases.values())
        gap = self.billed_usd - self.estimate_usd
        share = gap / self.billed_usd if self.billed_usd else 0.0
        calls = self.calls.get("total", 0)
        fired = sum(self.faults_fired.values())
        by_api = ", ".join(f"{api} {n['total']}" for api, n in self.calls.get("by_api", {}).items())
        return [
            f"kills survived: {self.kills} ({self.kills_mid_boot} mid-boot); restarts on GraphQL: {self.graphql_starts}",
            f"sessions: {self.sessions}; leases: {leases} — " + ", ".join(f"{k} {v}" for k, v in
                                                                          sorted(self.leases.items())),
            "leases served by path: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_path.items())),
            "leases not released, why: " + "; ".join(f"{k} ({v})" for k, v in sorted(self.reasons.items()))
            + f"; expired although their session kept heartbeating: {self.expired_heartbeating}",
            f"wait created->ready (controller's record): p50 {statistics.median(self.wait_db or [0]):.2f} s, "
            f"p95 {self.pct(self.wait_db, 95):.2f} s; as sessions saw it (kills included): "
            f"p50 {statistics.median(self.wait_seen or [0]):.2f} s, p95 {self.pct(self.wait_seen, 95):.2f} s",
            f"RunPod calls while faults were armed: {calls} ({by_api}); faults fired: {fired} ({fired / max(calls, 1):.0%}): "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults_fired.items())),
            "controller events: " + ", ".join(f"{k} {v}" for k, v in sorted(self.events.items())),
            f"invariant checks: {self.checks}, violations: {len(self.violations)}",
            f"pods unknown to the controller once settled: {self.pods_unknown}; pods leaked after wind-down: "
            f"{self.pods_leaked}",
            f"cost: bill ${self.billed_usd:.4f}; the controller's estimate ${self.estimate_usd:.4f} is short by "
            f"${gap:.4f} ({share:.1%}): the daemon was down or starting {self.down_s:.0f} s of {self.run_s:.0f} s "
            f"({self.down_s / max(self.run_s, 1e-9):.0%}), and RunPod billed ${self.hidden_usd:.4f} meanwhile, which "
            f"no pass accounted; estimate + that = ${self.estimate_usd + self.hidden_usd:.4f} "
            f"({self.accounted_gap():+.1%} of the bill)",
            "cost as the controller read it from RunPod's billing records: "
            + (f"${self.read_billed_usd:.4f}" if self.read_billed_usd is not None else "not read (GraphQL has none)"),
            f"secrets found in {self.scanned_bytes / 1e6:.1f} MB of output: {len(self.secrets_found)}",
        ]


class ChaosRun:
    def __init__(self, config: ChaosConfig, workdir: Path, progress: Callable[[str], None] = lambda _: None) -> None:
        self.cfg = config
        self.workdir = workdir
        self.progress = progress
        self.rng = random.Random(config.seed)
        self.db = workdir / "chaos.db"
        self.figures = Figures()
        self.seen: list[str] = []  # every answer received, lease tokens taken out
        self.tokens: set[str] = set()
        self.stop_sessions = asyncio.Event()
        self.sessions: list[asyncio.Task] = []
        self._faults_fired: list[dict] = []
        self.vanished: set[str] = set()  # sessions that left without releasing: their leases must expire

    # ------------------------------------------------------------------------------------------------ setup
    async def run(self) -> Figures:
        cfg = self.cfg
        self.emulator = EmulatorServer(EmulatorSettings(
            port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=1.0, resume_boot_seconds=0.3,
            ports_delay_seconds=0.3, load_seconds=0.3, seed=cfg.seed, machines_per_type=4, gpus_per_machine=4,
            rate_limit="600/minute,20000/hour", tenant_take_per_hour=cfg.tenant_take_per_hour,
            tenant_release_per_hour=cfg.tenant_release_per_hour,
        ))
        await self.emulator.start()
        self.admin = EmulatorAdmin(self.emulator.url)
        self.port = allocate_port("127.0.0.1")
        self.api = Api(f"http://127.0.0.1:{self.port}", COMPANION)
        self.daemon: Daemon | None = None
        started = time.monotonic()
        try:
            await self._arm_faults()
            keeper = asyncio.create_task(self._keep_first_type_out_of_stock(), name="chaos-out-of-stock")
            await self._kill_loop()
            keeper.cancel()
            await self._settle()
            await self._wind_down()
        finally:
            self.figures.run_s = time.monotonic() - started
            if self.daemon is not None:
                await self.daemon.terminate()
            await self.api.aclose()
            await self.admin.aclose()
            await self.emulator.stop()
        self._tally()
        self._scan_for_secrets()
        return self.figures

    def _env(self, api: str) -> dict[str, str]:
        return daemon_env(
            self.emulator.url, str(self.db), self.port, runpod_api=api, gpu_types=",".join(GPU_TYPES),
            reconcile_interval_s=0.25, idle_ttl_s=2, stopped_ttl_s=5, lease_ttl_s=LEASE_TTL_S, orphan_grace_s=2,
            create_grace_s=5, max_pods=self.cfg.max_pods, budget_usd_per_hour=50, provider_timeout_s=2,
            health_timeout_s=1, pending_timeout_s=120, resume_backoff_s=5, out_of_stock_s=10, catalog_ttl_s=5,
            billing_interval_s=5, ready_timeout_s=30, stop_timeout_s=10,
        )

    async def _arm_faults(self) -> None:
        cfg = self.cfg
        # Each rule draws in turn: the three together fail about ``fault_rate`` of all calls.
        each = 1 - (1 - cfg.fault_rate) ** (1 / 3)
        await self.admin.fault(op="resume_pod", kind="host_gpu_busy", rate=cfg.resume_busy_rate)
        await self.admin.fault(op="create_pod", kind="internal", rate=each / 2, applied=True)  # made anyway
        await self.admin.fault(op="*", kind="internal", rate=each)
        await self.admin.fault(op="*", kind="rate_limit", api="rest", rate=each)
        await self.admin.fault(op="*", kind="rate_limit_recorded", api="graphql", rate=each)
        await self.admin.fault(op="*", kind="timeout", rate=each, delay_s=3.0)

    async def _keep_first_type_out_of_stock(self) -> None:
        """Other tenants hold every free GPU of the first type (churn gives some back now and then)."""
        while True:
            for machine in await self.admin.machines():
                if machine["gpu_type_id"] == GPU_TYPES[0] and machine["free"]:
                    await self.admin.fill(machine["id"])
            await asyncio.sleep(0.2)

    # -------------------------------------------------------------------------------------------- kill loop
    async def _start_daemon(self, last: bool = False) -> None:
        """On REST v2, or (a share of the restarts) on GraphQL; the last one on REST, which reads the billing."""
        api = "graphql" if self.rng.random() < self.cfg.graphql_share and not last else "rest"
        self.figures.graphql_starts += api == "graphql"
        self.daemon = Daemon(self._env(api), str(self.workdir / "daemon.log"))
        await self.daemon.start()

    async def _kill_loop(self) -> None:
        """Kill, check, restart at once; each kill either mid-boot (at a random moment of a start: importing,
        migrating, claiming the database, the first passes) or at work (a random while after the API answers)."""
        cfg, f = self.cfg, self.figures
        await self._start_daemon()
        await self._until(self.api.serving, 60)
        boot_s = 2.0  # how long a start takes here (spawn to the API answering), measured as the run goes
        arrivals = asyncio.create_task(self._arrivals(), name="chaos-arrivals")
        down: tuple[float, float] | None = None  # (since, bill then): no daemon has served since that kill
        for n in range(cfg.kills):
            if n and self.rng.random() < cfg.mid_boot_share:
                await asyncio.sleep(self.rng.uniform(0.0, 1.2 * boot_s))  # since the start just made
                f.kills_mid_boot += 1
            else:
                spawned = time.monotonic()
                await self._until(self.api.serving, 60)
                if n:
                    boot_s = 0.7 * boot_s + 0.3 * (time.monotonic() - spawned)
                if down is not None:
                    f.down_s += time.monotonic() - down[0]
                    f.hidden_usd += (await self.admin.bill())["total_usd"] - down[1]
                    down = None
                await asyncio.sleep(self.rng.uniform(*cfg.at_work_s))
                await self._scrape()
            assert self.daemon is not None
            await self.daemon.kill()
            f.kills += 1
            if down is None:
                down = (time.monotonic(), (await self.admin.bill())["total_usd"])
            await self._check_while_down()
            await asyncio.sleep(self.rng.uniform(0.0, 0.5))
            await self._start_daemon(last=n + 1 == cfg.kills)
            if (n + 1) % 10 == 0 or n + 1 == cfg.kills:
                self.progress(f"{n + 1}/{cfg.kills} kills ({f.kills_mid_boot} mid-boot); {f.sessions} sessions so "
                              f"far; {len(f.violations)} violations")
        await self._until(self.api.serving, 60)
        if down is not None:
            f.down_s += time.monotonic() - down[0]
            f.hidden_usd += (await self.admin.bill())["total_usd"] - down[1]
        arrivals.cancel()

    async def _arrivals(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(self.cfg.arrivals_per_s))
            self.figures.sessions += 1
            n = self.figures.sessions
            self.sessions.append(asyncio.create_task(self._session(n), name=f"chaos-session-{n}"))

    # --------------------------------------------------------------------------------------------- sessions
    def _keep(self, response: httpx.Response) -> dict:
        """The answer's body, kept for the secrets search with its lease tokens taken out (and remembered)."""
        if response.status_code >= 500:
            self.figures.violations.append(f"{response.request.method} {response.request.url.path}: "
                                           f"{response.status_code} {response.text[:200]}")
        try:
            body = response.json()
        except ValueError:
            body = {"text": response.text}
        for lease in body.get("leases", [body]) if isinstance(body, dict) else []:
            if isinstance(lease, dict) and lease.get("token"):
                self.tokens.add(lease.pop("token"))
        self.seen.append(json.dumps(body))
        return body

    async def _call(self, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response | None:
        try:
            return await self.api.http.request(method, path, headers=headers or self.api.h(), timeout=15, **kw)
        except httpx.TransportError:
            await asyncio.sleep(0.3)  # the daemon is down (or restarting)
            return None

    async def _session(self, n: int) -> None:
        """Create (same key through crashes), long-poll until ready, heartbeat while holding, release or vanish."""
        rng = random.Random(f"{self.cfg.seed}-{n}")
        key = f"chaos-{n}"
        first = time.monotonic()
        lease = None
        while lease is None:
            response = await self._call("POST", "/v1/leases", json={"session_id": key},
                                        headers=self.api.h(**{"Idempotency-Key": key}))
            if response is None or response.status_code == 503:
                continue
            body = self._keep(response)
            if response.status_code not in (200, 201):
                return  # 409 lease_ended: the lease this key named ended (expired, failed) before we saw it
            lease = body
        while lease["state"] == "pending":
            response = await self._call("GET", f"/v1/leases/{lease['id']}", params={"wait": 5})
            if response is not None:
                lease = self._keep(response)
                if response.status_code != 200:
                    self.figures.violations.append(f"lease {key}: GET answered {response.status_code}: {lease}")
                    return
        if lease["state"] != "ready":
            return
        self.figures.wait_seen.append(time.monotonic() - first)
        hold_until = time.monotonic() + rng.uniform(*self.cfg.hold_s)
        while time.monotonic() < hold_until:
            response = await self._call("POST", f"/v1/leases/{lease['id']}/heartbeat")
            if response is not None:
                body = self._keep(response)
                if response.status_code == 409:
                    return  # it ended under us (its pod was lost): the reason is in the lease
                if response.status_code != 200:
                    self.figures.violations.append(f"lease {key}: heartbeat answered {response.status_code}: {body}")
                    return
            await asyncio.sleep(1.0)
        if rng.random() < self.cfg.vanish_share:
            self.vanished.add(key)
            return
        while not self.stop_sessions.is_set():
            response = await self._call("DELETE", f"/v1/leases/{lease['id']}")
            if response is not None:
                body = self._keep(response)
                if response.status_code != 200:
                    self.figures.violations.append(f"lease {key}: release answered {response.status_code}: {body}")
                return

    # --------------------------------------------------------------------------------------------- checks
    def _rows(self, sql: str) -> list[tuple]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()

    async def _check_while_down(self) -> None:
        """The database and RunPod as the daemon left them."""
        self.figures.checks += 1
        self.figures.violations.extend(self._slot_overlaps())
        for lease_id, state in self._rows("SELECT id, state FROM leases WHERE state IN ('expired', 'failed') "
                                          "AND reason = ''"):
            self.figures.violations.append(f"lease {lease_id} ended {state} without a reason")
        names = {f"harper-{row[0]}" for row in self._rows("SELECT id FROM pods")}
        for pod in await self.admin.live():
            if pod["name"] not in names:
                self.figures.violations.append(f"pod {pod['name']} ({pod['id']}) at RunPod has no intent row")

    def _slot_overlaps(self) -> list[str]:
        held: dict[tuple[str, int], list[tuple[float, float, str]]] = {}
        for lease_id, pod_id, slot, ready_at, ended_at in self._rows(
                "SELECT id, pod_id, slot, ready_at, ended_at FROM leases WHERE ready_at IS NOT NULL"):
            held.setdefault((pod_id, slot), []).append((ready_at, ended_at or float("inf"), lease_id))
        out = []
        for (pod_id, slot), spans in held.items():
            spans.sort()
            for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
                if start_b < end_a:
                    out.append(f"leases {a} and {b} held slot {slot} of pod {pod_id} at once "
                               f"({start_b - end_a:+.3f} s)")
        return out

    async def _scrape(self) -> None:
        try:
            self.seen.append((await self.api.http.get("/metrics", timeout=5)).text)
        except httpx.TransportError:
            pass

    # ------------------------------------------------------------------------------------------- the end
    async def _settle(self) -> None:
        self.progress("settling: faults off, every session finishes, no lease left active")
        self._faults_fired = (await self.admin.http.get("/_admin/faults")).json()["faults"]
        self.figures.calls = await self.admin.requests()  # the calls the faults were drawn on
        await self.admin.clear_faults()
        await self.admin.http.put("/_admin/tenants", json={"take_per_hour": 0, "release_per_hour": 0})
        done, pending = await asyncio.wait(self.sessions, timeout=self.cfg.settle_s)
        self.stop_sessions.set()
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                self.figures.violations.append(f"session failed: {task.exception()!r}")
        if pending:
            self.figures.violations.append(f"{len(pending)} sessions did not finish within {self.cfg.settle_s:.0f} s")
        await self._until(lambda: self._no_active_leases(), self.cfg.settle_s)
        await self._until(lambda: self._unknown_pods(), self.cfg.settle_s, want_empty=True)
        self.figures.pods_unknown = len(await self._unknown_pods())

    async def _no_active_leases(self) -> bool:
        return not self._rows("SELECT id FROM leases WHERE state IN ('pending', 'ready')")

    async def _unknown_pods(self) -> list[str]:
        """Live harper- pods at RunPod that no live record of the controller names (with their RunPod id)."""
        known = {(f"harper-{pid}", rid) for pid, rid in self._rows(
            "SELECT id, runpod_id FROM pods WHERE phase NOT IN ('terminated', 'failed')")}
        return [p["id"] for p in await self.admin.live() if (p["name"], p["id"]) not in known]

    async def _wind_down(self) -> None:
        """Standby 0 and no idle time: every pod goes; then the estimate and the bill are both final."""
        self.progress("winding down: standby 0, every pod terminated")
        patch = {"standby_count": 0, "idle_ttl_s": 0, "stopped_ttl_s": 0}
        self._keep(await self.api.http.patch("/v1/policy", json=patch, headers=self.api.h(ADMIN)))
        await self._until(lambda: self.admin.live(), self.cfg.settle_s, want_empty=True)
        self.figures.pods_leaked = len(await self.admin.live())
        done = time.time()

        async def final_cost() -> httpx.Response | None:  # the last interval accounted, RunPod's billing read since
            response = await self.api.http.get("/v1/cost", headers=self.api.h(ADMIN))
            billed = response.json()["billed_usd"]
            return response if billed and _seconds(billed["as_of"]) > done + 0.5 else None

        cost = self._keep(await self._until(final_cost, 30) or
                          await self.api.http.get("/v1/cost", headers=self.api.h(ADMIN)))
        self.figures.estimate_usd = cost["spent_usd"]["total"]
        self.figures.read_billed_usd = (cost.get("billed_usd") or {}).get("total")
        self.figures.billed_usd = (await self.admin.bill())["total_usd"]
        for path in ("/v1/pods?all=true", "/v1/leases?limit=10000", "/v1/events?limit=5000"):
            self._keep(await self.api.http.get(path, headers=self.api.h(ADMIN)))
        await self._scrape()

    def _tally(self) -> None:
        f = self.figures
        for session, state, reason, ready_at, created_at, path in self._rows(
                "SELECT session_id, state, reason, ready_at, created_at, path FROM leases"):
            if state != "released":
                f.reasons[f"{state}: {reason}"] += 1
            if state == "expired" and ready_at is not None and session not in self.vanished:
                f.expired_heartbeating += 1  # its session kept heartbeating: the daemon was down past the TTL
            if ready_at is not None:
                f.leases["served" if state == "released" else f"served, then {state}"] += 1
                f.wait_db.append(ready_at - created_at)
                f.by_path[path] += 1
            else:
                f.leases[f"{state} before a pod" if state != "released" else "released while waiting"] += 1
            if state in ("expired", "failed") and not reason:
                f.violations.append(f"a lease ended {state} without a reason")
        f.violations.extend(self._slot_overlaps())
        f.events = Counter(row[0] for row in self._rows("SELECT reason FROM events"))
        for rule in self._faults_fired:
            f.faults_fired[rule["kind"]] += rule["fired"]

    def _scan_for_secrets(self) -> None:
        events = "\n".join(row[0] for row in self._rows("SELECT message FROM events"))
        text = "\n".join([self.daemon.output() if self.daemon else "", events, *self.seen])
        self.figures.scanned_bytes = len(text)
        secrets = {"the RunPod API key": EMULATOR_KEY, "the companion token": COMPANION, "the admin token": ADMIN}
        for token in self.tokens:
            secrets[f"lease token {token[:12]}..."] = token
            secrets[f"lease token signature {token[-8:]}"] = token.rsplit(".", 1)[1]
        for (secret,) in self._rows("SELECT secret FROM pods"):
            secrets[f"pod secret {secret[:6]}..."] = secret
        self.figures.secrets_found = [name for name, value in secrets.items() if value in text]

    async def _until(self, check, timeout: float, want_empty: bool = False):
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if (not value) if want_empty else value:
                return value
            if time.monotonic() > deadline:
                self.figures.violations.append(f"{getattr(check, '__name__', 'condition')} not met within "
                                               f"{timeout:.0f} s: {value!r}"[:500])
                return value
            await asyncio.sleep(0.25)
