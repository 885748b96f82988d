"""Failures and quirks real RunPod shows: slow creates and quick resumes, late ports, stale ports, other
tenants taking freed GPUs, containers that exit (ERROR) with their logs, and http ports behind the proxy."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import runpod
import websockets
from runpod.error import QueryError

from runpod_emulator.clock import FakeClock
from runpod_emulator.messages import NOT_ENOUGH_FREE_GPUS
from runpod_emulator.server import EmulatorServer

from .conftest import API_KEY, RTX_4090, StartEmulator, admin, make_settings, rest

POD = {"name": "harper-q", "image": "img", "gpu": {"id": RTX_4090}, "ports": ["8000/tcp"]}


def test_a_create_pulls_the_image_a_resume_does_not(start_emulator: StartEmulator):
    clock = FakeClock()
    start_emulator(clock=clock, boot_seconds=300, resume_boot_seconds=20)
    pod = runpod.create_pod("p", "img", RTX_4090, ports="8000/tcp")
    clock.advance(299)
    assert runpod.get_pod(pod["id"])["runtime"] is None
    clock.advance(1)
    assert runpod.get_pod(pod["id"])["runtime"] is not None
    runpod.stop_pod(pod["id"])
    runpod.resume_pod(pod["id"], 1)
    clock.advance(19)
    assert runpod.get_pod(pod["id"])["runtime"] is None
    clock.advance(1)
    assert runpod.get_pod(pod["id"])["runtime"]["ports"]


def test_ports_appear_some_seconds_after_the_runtime(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, boot_seconds=10, ports_delay_seconds=25)
    pod = runpod.create_pod("p", "img", RTX_4090, ports="8000/tcp")
    clock.advance(10)
    early = runpod.get_pod(pod["id"])
    assert early["desiredStatus"] == "RUNNING" and early["runtime"] == {"ports": []}
    with rest(server) as client:
        early_rest = client.get(f"/v2/pods/{pod['id']}").json()
        assert early_rest["status"] == "RUNNING" and early_rest["runtime"]["ports"] == []
        clock.advance(25)
        assert client.get(f"/v2/pods/{pod['id']}").json()["runtime"]["ports"][0]["private"] == 8000
    assert runpod.get_pod(pod["id"])["runtime"]["ports"][0]["privatePort"] == 8000


def test_an_exited_pod_can_report_stale_ports_on_graphql_only(start_emulator: StartEmulator):
    server = start_emulator(stale_exited_ports=True)
    pod = runpod.create_pod("p", "img", RTX_4090, ports="8000/tcp")
    running = runpod.get_pod(pod["id"])["runtime"]["ports"]
    runpod.stop_pod(pod["id"])
    stale = runpod.get_pod(pod["id"])
    assert stale["desiredStatus"] == "EXITED"
    assert stale["runtime"]["ports"] == running  # what RunPod was seen doing: read desiredStatus first
    with rest(server) as client:
        assert client.get(f"/v2/pods/{pod['id']}").json()["runtime"] is None  # v2: null unless RUNNING


def test_other_tenants_take_freed_gpus_over_time(start_emulator: StartEmulator):
    def run(seed: int) -> list[str]:
        clock = FakeClock()
        server = start_emulator(clock=clock, seed=seed, machines_per_type=1, gpus_per_machine=2,
                                tenant_take_per_hour=6.0, tenant_release_per_hour=6.0)
        pod = runpod.create_pod("p", "img", RTX_4090)
        outcomes = []
        for _ in range(12):
            runpod.stop_pod(pod["id"])
            clock.advance(600)
            admin(server, "GET", "/pods")  # a tick: let time pass for the other tenants
            try:
                runpod.resume_pod(pod["id"], 1)
                outcomes.append("resumed")
            except QueryError as e:
                assert str(e) == NOT_ENOUGH_FREE_GPUS
                outcomes.append("busy")
        server.stop_in_thread()
        return outcomes

    first = run(seed=5)
    assert "busy" in first and "resumed" in first  # now and then, without the test arranging it
    assert run(seed=5) == first  # seeded: a run repeats itself


def test_no_churn_by_default(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, machines_per_type=1, gpus_per_machine=1)
    pod = runpod.create_pod("p", "img", RTX_4090)
    runpod.stop_pod(pod["id"])
    clock.advance(30 * 86400)
    admin(server, "GET", "/pods")
    assert runpod.resume_pod(pod["id"], 1)["desiredStatus"] == "RUNNING"
    assert admin(server, "GET", "/tenants").json() == {"take_per_hour": 0.0, "release_per_hour": 0.0}
    assert admin(server, "PUT", "/tenants", json={"take_per_hour": 2, "release_per_hour": 1}).json() == {
        "take_per_hour": 2.0, "release_per_hour": 1.0}


def read_events(client: httpx.Client, url: str, count: int, **kwargs: object) -> list[dict]:
    """The first ``count`` SSE events of a log stream (which stays open), as (id, data) dicts."""
    events: list[dict] = []
    with client.stream("GET", url, timeout=10, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        assert "ratelimit" in response.headers
        event: dict = {}
        for line in response.iter_lines():
            if line.startswith("id: "):
                event["id"] = line[4:]
            elif line.startswith("data: "):
                event.update(json.loads(line[6:]))
            elif line == "" and event:
                events.append(event)
                event = {}
                if len(events) == count:
                    break
    return events


def test_a_crashed_pod_is_error_and_its_last_words_are_in_the_logs(emulator):
    with rest(emulator) as client:
        pod = client.post("/v2/pods", json=POD).json()
        url = f"/v2/pods/{pod['id']}"
        assert client.get(url).json()["status"] == "RUNNING"
        crashed = admin(emulator, "POST", f"/pods/{pod['id']}/crash",
                        json={"log": "RuntimeError: CUDA error: no kernel image is available", "exit_code": 3})
        assert crashed.status_code == 200 and crashed.json()["status"] == "ERROR"
        error = client.get(url).json()
        assert (error["status"], error["actions"], error["runtime"]) == ("ERROR", ["start", "terminate"], None)
        assert error["cost"] == 0.69  # the machine is still rented
        assert client.post(f"{url}/action", json={"action": "stop"}).status_code == 409
        sdk = runpod.get_pod(pod["id"])
        assert sdk["desiredStatus"] == "RUNNING" and sdk["runtime"] is None  # GraphQL has no ERROR

        events = read_events(client, f"{url}/logs", 6)
        assert [(e["source"], e["line"].split(":")[0]) for e in events] == [
            ("system", "pod created on machine " + crashed.json()["machine_id"] + "; pulling image"),
            ("system", "container started"),
            ("container", "simulated gpu_server"),
            ("container", "simulated gpu_server"),
            ("container", "RuntimeError"),
            ("system", "container exited with code 3"),
        ]
        container = read_events(client, f"{url}/logs", 3, params={"source": "container"})
        assert all(e["source"] == "container" for e in container)
        assert container[-1]["line"].startswith("RuntimeError")

        assert client.post(f"{url}/action", json={"action": "start"}).json()["status"] == "STARTING"
        assert client.get(url).json()["status"] == "RUNNING"
        assert admin(emulator, "POST", "/pods/nosuchpod00000/crash").status_code == 404
        client.post(f"{url}/action", json={"action": "stop"})
        assert admin(emulator, "POST", f"/pods/{pod['id']}/crash").status_code == 409


def test_logs_tail_resume_and_follow(emulator):
    with rest(emulator) as client:
        pod = client.post("/v2/pods", json=POD).json()
        url = f"/v2/pods/{pod['id']}/logs"
        first = read_events(client, url, 2, params={"tail": 2})
        assert len(first) == 2
        # Resume after the first event: the second comes again, then whatever follows.
        resumed = read_events(client, url, 1, headers={"Last-Event-ID": first[0]["id"]})
        assert resumed[0]["id"] == first[1]["id"]
        ids = [int(e["id"].rsplit("/", 1)[1]) for e in first]
        assert ids == sorted(ids)

        # A live stream: a line written after the stream opened arrives on it.
        with client.stream("GET", url, params={"tail": 0}, timeout=10) as response:
            admin(emulator, "POST", f"/pods/{pod['id']}/crash", json={"log": "late line"})
            seen = ""
            deadline = time.monotonic() + 5
            for chunk in response.iter_text():
                seen += chunk
                if "container exited" in seen or time.monotonic() > deadline:
                    break
        assert '"line": "late line"' in seen and "container exited with code 1" in seen

        assert client.get(url, params={"tail": 5001}).status_code == 422
        assert client.get(url, params={"source": "kernel"}).status_code == 422
        assert client.get("/v2/pods/nosuchpod00000/logs").status_code == 404
        client.delete(f"/v2/pods/{pod['id']}")
        assert client.get(url).status_code == 404


EXITS_AT_START = "import sys; print('loading model', flush=True); print('OSError: model not found', flush=True); sys.exit(3)"


async def test_a_process_that_exits_by_itself_turns_its_pod_to_error(tmp_path: Path):
    settings = make_settings(runner="process", command=f'{sys.executable} -c "{EXITS_AT_START}"', log_dir=tmp_path)
    async with EmulatorServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            pod = (await client.post("/v2/pods", json=POD)).json()
            for _ in range(200):
                status = (await client.get(f"/v2/pods/{pod['id']}")).json()["status"]
                if status == "ERROR":
                    break
                await asyncio.sleep(0.05)
            assert status == "ERROR"
            view = next(p for p in (await client.get("/_admin/pods")).json() if p["id"] == pod["id"])
            assert view["exit_code"] == 3 and view["runner"]["serving"] is False
            lines: list[str] = []
            async with client.stream("GET", f"/v2/pods/{pod['id']}/logs") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(json.loads(line[6:])["line"])
                    if "container exited with code 3" in lines:
                        break
            assert lines[-3:] == ["loading model", "OSError: model not found", "container exited with code 3"]


# A stand-in pod process for the proxy: HTTP on /health and /slow, and a WebSocket echo on /ws that wants a
# token and closes with 4401 without one, like gpu_server.
PROXIED = textwrap.dedent("""
    import asyncio, os
    from http import HTTPStatus
    from websockets.asyncio.server import serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    async def http(connection, request):
        if request.path.startswith("/health"):
            return Response(200, "OK", Headers({"content-type": "application/json"}), b'{"status": "ok"}')
        if request.path.startswith("/slow"):
            await asyncio.sleep(3)
            return Response(200, "OK", Headers(), b"late")
        return None

    async def echo(ws):
        if "token=t" not in ws.request.path:
            await ws.close(4401, "no token")
            return
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, os.environ["GPU_SERVER_HOST"], int(os.environ["GPU_SERVER_PORT"]),
                         process_request=http):
            print("proxied stand-in up", flush=True)
            await asyncio.Future()

    asyncio.run(main())
""")


async def test_http_ports_only_through_the_proxy(tmp_path: Path):
    script = tmp_path / "proxied.py"
    script.write_text(PROXIED)
    settings = make_settings(runner="process", command=f"{sys.executable} {script}", log_dir=tmp_path,
                             http_proxy_only=True, proxy_timeout_seconds=1)
    async with EmulatorServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            pod = (await client.post("/v2/pods", json={**POD, "ports": ["8000/http", "22/tcp"]})).json()
            proxy = f"/proxy/{pod['id']}-8000"
            for _ in range(200):
                health = await client.get(f"{proxy}/health")
                if health.status_code == 200:
                    break
                assert health.status_code == 502  # nothing listening yet, as RunPod's proxy says
                await asyncio.sleep(0.05)
            assert health.json() == {"status": "ok"}

            ports = {p["private"]: p for p in (await client.get(f"/v2/pods/{pod['id']}")).json()["runtime"]["ports"]}
            assert ports[8000]["ip"] == "127.0.0.2" and ports[22]["ip"] == "127.0.0.1"
            with pytest.raises(httpx.ConnectError):  # the reported address has nothing behind it
                await client.get(f"http://{ports[8000]['ip']}:{ports[8000]['public']}/health")
            query = f'{{ pod(input: {{podId: "{pod["id"]}"}}) {{ runtime {{ ports {{ privatePort ip isIpPublic }} }} }} }}'
            graphql_ports = (await client.post("/graphql", json={"query": query})).json()["data"]["pod"]["runtime"]
            assert {"privatePort": 8000, "ip": "127.0.0.2", "isIpPublic": False} in graphql_ports["ports"]

            assert (await client.get(f"/proxy/{pod['id']}-22/health")).status_code == 404  # tcp is never proxied
            assert (await client.get("/proxy/nosuchpod00000-8000/health")).status_code == 404
            assert (await client.get(f"{proxy}/slow")).status_code == 524  # past the proxy's limit

            ws_url = server.url.replace("http://", "ws://") + proxy
            async with websockets.connect(f"{ws_url}/ws?token=t") as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send(b"\x00\x01")
                assert await ws.recv() == b"\x00\x01"
            async with websockets.connect(f"{ws_url}/ws") as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4401  # the pod's close code reaches the client

            await client.post(f"/v2/pods/{pod['id']}/action", json={"action": "stop"})
            assert (await client.get(f"{proxy}/health")).status_code == 502


def test_a_container_that_cannot_start_is_error_with_the_reason_in_its_log(start_emulator: StartEmulator, tmp_path):
    server = start_emulator(runner="process", command="/nonexistent/gpu-server serve", log_dir=tmp_path)
    with rest(server) as client:
        pod = client.post("/v2/pods", json=POD).json()
        for _ in range(100):
            if client.get(f"/v2/pods/{pod['id']}").json()["status"] == "ERROR":
                break
            time.sleep(0.02)
        assert client.get(f"/v2/pods/{pod['id']}").json()["status"] == "ERROR"
        lines = [e["line"] for e in read_events(client, f"/v2/pods/{pod['id']}/logs", 4)]
    assert lines[2].startswith("failed to start the container:") and "nonexistent" in lines[2]
    assert lines[3] == "container exited"
