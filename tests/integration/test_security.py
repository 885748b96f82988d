"""Who gets in, and what never leaks, on the controller's side.

- Every ``/v1`` route wants a token; the companion token reaches the lease routes only, never an admin route (the
  routes are read from the app's own OpenAPI document, so a new admin route is covered the day it is added).
- Bodies over 64 KiB are refused, declared or streamed, and nothing of them is stored.
- The lease tokens the controller hands out open their own pod only, name their slot, expire, and are refused
  when forged; a newer lease on the slot supersedes an older one (``gpu_server.auth``, as a pod checks them).
- The RunPod API key, the API tokens, lease tokens and pod secrets appear in no log line (DEBUG included), error,
  event, metric or admin answer, even when RunPod refuses the key and clients send tokens where they should not.
- Every server listens on loopback unless told otherwise: the controller, the emulator (and its pods), gpu_server.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from gpu_server.auth import (
    CLOCK_SKEW_S,
    SlotGuard,
    TokenExpired,
    TokenForged,
    TokenSuperseded,
    verify_token,
)
from gpu_server.settings import Settings as GpuServerSettings
from reconciler.api.common import TOKEN_TTL_S
from reconciler.settings import Settings as ControllerSettings
from runpod_emulator.runner import allocate_port
from runpod_emulator.settings import EmulatorSettings

from .harness import ADMIN, COMPANION, EMULATOR_KEY, GPU_A, GPU_B, Api, Daemon, daemon_env, until
from .test_controller_lifecycle import standby_parked

ROOT = Path(__file__).resolve().parents[2]
DUMMY = {"lease_id": "l_0123456789abcdef", "pod_id": "0123456789ab", "op": "cordon"}


def _routes(spec: dict) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, ops in spec["paths"].items() if path.startswith("/v1/") for method in ops]


def _is_companion_route(method: str, path: str) -> bool:
    return path.startswith("/v1/leases") and not (path == "/v1/leases" and method == "GET")


async def test_every_admin_route_refuses_the_companion_token_and_every_route_wants_one(stack):
    server, api, emu = stack
    spec = (await api.http.get("/openapi.json")).json()
    routes = _routes(spec)
    assert len(routes) >= 12
    policy_before = (await api.get("/v1/policy", ADMIN)).json()
    for method, path in routes:
        url = path.format(**DUMMY)
        body = {"json": {"session_id": "sec"}} if method == "POST" and path == "/v1/leases" else (
            {"json": {"paused": True}} if method == "PATCH" else {})
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {COMPANION}"}):
            response = await api.http.request(method, url, headers=headers, **body)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
        as_companion = await api.http.request(method, url, headers=api.h(COMPANION), **body)
        if _is_companion_route(method, path):
            assert as_companion.status_code != 403, (method, path)
        else:
            assert as_companion.status_code == 403, (method, path, as_companion.text)
            assert as_companion.json()["error"]["code"] == "forbidden"
    assert (await api.get("/v1/policy", ADMIN)).json() == policy_before  # the refused PATCH changed nothing


async def test_bodies_over_the_limit_are_refused_declared_or_streamed(stack):
    server, api, emu = stack
    big = json.dumps({"session_id": "s", "voice_id": "v" * 100_000}).encode()

    async def streamed():  # no Content-Length: chunked, cut off as it arrives
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    for method, path, token in (("POST", "/v1/leases", COMPANION), ("PATCH", "/v1/policy", ADMIN)):
        declared = await api.http.request(method, path, content=big, headers=api.h(token))
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large", declared.text
        chunked = await api.http.request(method, path, content=streamed(), headers=api.h(token))
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "too_large", chunked.text
    assert (await api.get("/v1/leases", ADMIN)).json()["leases"] == []
    long_key = await api.lease("s", key="k" * 201)  # headers are bounded too
    assert long_key.status_code == 422


async def test_lease_tokens_open_only_their_own_pod_slot_and_only_for_a_while(make_controller, emu):
    server = await make_controller(idle_ttl_s=60.0)
    api = Api(server.url)
    store, clock = server.controller.store, server.controller.clock
    try:
        await until(lambda: standby_parked(api))
        first = (await api.lease("a")).json()
        second = (await api.lease("b")).json()
        a = (await api.get(f"/v1/leases/{first['id']}", wait=20)).json()
        b = (await api.get(f"/v1/leases/{second['id']}", wait=20)).json()
        assert a["state"] == b["state"] == "ready" and a["pod_id"] != b["pod_id"]
        pod_a, pod_b = await store.get_pod(a["pod_id"]), await store.get_pod(b["pod_id"])
        now = clock()
        claims = verify_token(pod_a.secret, a["token"], now, pod_id=pod_a.id)
        assert (claims.lease_id, claims.pod_id, claims.slot) == (a["id"], pod_a.id, 0)
        assert claims.expires_at <= now + TOKEN_TTL_S + 1
        with pytest.raises(TokenForged):  # another pod's secret: a token for one pod is worthless on another
            verify_token(pod_b.secret, a["token"], now, pod_id=pod_b.id)
        with pytest.raises(TokenForged):  # the right secret, but the pod names another
            verify_token(pod_a.secret, a["token"], now, pod_id=pod_b.id)
        head, payload, sig = a["token"].split(".")
        _, other_payload, _ = b["token"].split(".")
        with pytest.raises(TokenForged):  # b's claims under a's signature
            verify_token(pod_a.secret, f"{head}.{other_payload}.{sig}", now, pod_id=pod_a.id)
        with pytest.raises(TokenExpired):
            verify_token(pod_a.secret, a["token"], claims.expires_at + CLOCK_SKEW_S + 1, pod_id=pod_a.id)
        # A heartbeat brings a fresh token; a released lease's slot goes to the next lease, which supersedes it.
        guard = SlotGuard()
        guard.admit(claims)
        await api.http.delete(f"/v1/leases/{a['id']}", headers=api.h())
        third = (await api.lease("c")).json()
        assert third["state"] == "ready" and third["pod_id"] == pod_a.id and third["path"] == "warm"
        newer = verify_token(pod_a.secret, third["token"], clock(), pod_id=pod_a.id)
        assert guard.admit(newer) == a["id"]  # the pod closes the old lease's sockets
        with pytest.raises(TokenSuperseded):
            guard.admit(claims)
    finally:
        await api.aclose()


async def test_secrets_never_reach_logs_errors_events_or_metrics(emulator, emu, tmp_path):
    """The real daemon at DEBUG, its whole output captured, while RunPod refuses its key and fails calls and clients
    send tokens where they do not belong."""
    port = allocate_port("127.0.0.1")
    db = tmp_path / "harper.db"
    daemon = Daemon(daemon_env(emulator.url, str(db), port, log_level="DEBUG", reconcile_interval_s=0.25,
                               idle_ttl_s=60, health_timeout_s=1), str(tmp_path / "daemon.log"))
    api = Api(f"http://127.0.0.1:{port}")
    seen: list[str] = []  # every answer a client or an operator got, with the lease tokens taken out
    tokens: list[str] = []

    def keep(response: httpx.Response) -> dict:
        body = response.json()
        for lease in body.get("leases", [body]):
            if isinstance(lease, dict) and lease.get("token"):
                tokens.append(lease.pop("token"))
        seen.append(json.dumps(body))
        return body

    try:
        await daemon.start()
        await until(api.serving, timeout=60)
        await until(lambda: standby_parked(api), timeout=60)
        lease = keep(await api.lease("secret-session"))
        ready = keep(await api.get(f"/v1/leases/{lease['id']}", wait=20))
        keep(await api.post(f"/v1/leases/{lease['id']}/heartbeat"))
        keep(await api.http.delete(f"/v1/leases/{lease['id']}", headers=api.h()))
        warm = keep(await api.lease("warm-session"))  # its first response, token included, is stored in the database
        assert ready["state"] == warm["state"] == "ready" and warm["path"] == "warm" and len(tokens) == 3
        # Tokens where they do not belong: each refused without being repeated.
        for bearer in (tokens[0], ADMIN + "x", COMPANION + "x", EMULATOR_KEY):
            keep(await api.http.get("/v1/pods", headers={"Authorization": f"Bearer {bearer}"}))
        keep(await api.http.get(f"/v1/leases/{warm['id']}?token={tokens[0]}", headers=api.h()))
        tokens.pop()  # that GET's fresh token: it went to the client only
        # RunPod refuses the key, then fails creates: the provider's errors reach the log, events and /readyz.
        await emu.fault(op="*", kind="auth", count=3)
        await emu.fault(op="create_pod", kind="internal", count=2)
        for i in range(2):
            keep(await api.lease(f"more-{i}"))
        await until(lambda: _recorded(api, "AuthFailed"), timeout=30)
        for path in ("/v1/events?limit=5000", "/v1/pods?all=true", "/v1/cost", "/v1/leases", "/v1/policy"):
            keep(await api.get(path, ADMIN))
        metrics = (await api.http.get("/metrics")).text
    finally:
        await daemon.terminate()
        await api.aclose()
    with sqlite3.connect(db) as conn:
        secrets = [row[0] for row in conn.execute("SELECT secret FROM pods")]
    output = daemon.output()
    assert "AuthFailed" in output and "Ready" in output  # what happened is in the log, failures included
    text = "\n".join([output, metrics, *seen])
    for secret in [EMULATOR_KEY, COMPANION, ADMIN, *tokens, *(t.rsplit(".", 1)[1] for t in tokens), *secrets]:
        assert secret not in text, f"a secret ({secret[:6]}...) leaked"


async def _recorded(api: Api, word: str) -> bool:
    events = (await api.get("/v1/events", ADMIN, limit=5000)).json()["events"]
    return any(word in e["message"] for e in events) or word in (await api.http.get("/readyz")).text


def test_servers_listen_on_loopback_unless_told_otherwise(monkeypatch, tmp_path):
    for name in ("HARPER_HOST", "EMULATOR_HOST", "EMULATOR_POD_HOST", "GPU_SERVER_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert ControllerSettings().host == "127.0.0.1"
    assert EmulatorSettings().host == EmulatorSettings().pod_host == "127.0.0.1"
    assert GpuServerSettings().host == "127.0.0.1"
    # Where a server must be reachable from outside, its image says so.
    assert "GPU_SERVER_HOST=0.0.0.0" in (ROOT / "Dockerfile.gpu").read_text()
    assert '"--host", "0.0.0.0"' in (ROOT / "Dockerfile.controller").read_text()
    # The real processes, started with their defaults: what they listen on, as the kernel says.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARPER_", "EMULATOR_", "GPU_SERVER_"))}
    emu_port, port = allocate_port("127.0.0.1"), allocate_port("127.0.0.1")
    log = open(tmp_path / "servers.log", "w")
    emulator = subprocess.Popen([sys.executable, "-m", "runpod_emulator", "serve", "--port", str(emu_port),
                                 "--api-key", EMULATOR_KEY, "--runner", "simulated"], env=env, stdout=log, stderr=log)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run"], stdout=log, stderr=log,
        env=env | {"HARPER_RUNPOD_API_KEY": EMULATOR_KEY, "HARPER_RUNPOD_API_URL": f"http://127.0.0.1:{emu_port}",
                   "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'h.db'}", "HARPER_PORT": str(port),
                   "HARPER_API_TOKEN": COMPANION, "HARPER_ADMIN_TOKEN": ADMIN, "HARPER_GPU_TYPES": f"{GPU_A},{GPU_B}"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listening = {proc.pid: _listening(proc) for proc in (emulator, daemon)}
            if all(listening.values()):
                break
            time.sleep(0.2)
        assert listening[emulator.pid] == {("127.0.0.1", emu_port)}, listening
        assert listening[daemon.pid] == {("127.0.0.1", port)}, listening
    finally:
        for proc in (daemon, emulator):
            proc.terminate()
            proc.wait(20)
        log.close()


def _listening(proc: subprocess.Popen) -> set[tuple[str, int]]:
    try:
        connections = psutil.Process(proc.pid).net_connections(kind="inet")
    except psutil.Error:
        return set()
    return {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
