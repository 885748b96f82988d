"""Both pod runners, seen from outside: what answers on a pod's public port, and when it stops answering."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from runpod_emulator.clock import FakeClock
from runpod_emulator.server import EmulatorServer

from .conftest import API_KEY, RTX_4090, alive, make_settings

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
POD = "id desiredStatus runtime { ports { ip privatePort publicPort type } }"

# A stand-in for gpu_server: answers /health on $GPU_SERVER_PORT and reports what the pod was given. It also
# starts a grandchild, which must die with it (the whole process group is signalled).
STAND_IN = textwrap.dedent("""
    import http.server, json, os, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "pod": os.environ["RUNPOD_POD_ID"], "child": child.pid,
                               "tcp_8000": os.environ["RUNPOD_TCP_PORT_8000"], "ip": os.environ["RUNPOD_PUBLIC_IP"],
                               "secret": os.environ["POD_SECRET"], "pid": os.getpid()}).encode()
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer((os.environ["GPU_SERVER_HOST"], int(os.environ["GPU_SERVER_PORT"])), Health)
    print("stand-in listening", flush=True)
    server.serve_forever()
""")
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
)


async def gql(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables}, headers=HEADERS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def create(client: httpx.AsyncClient, ports: str = "8000/tcp", env: dict[str, str] | None = None) -> str:
    env_list = [{"key": k, "value": v} for k, v in (env or {}).items()]
    data = await gql(
        client,
        "mutation($i: PodFindAndDeployOnDemandInput) { podFindAndDeployOnDemand(input: $i) { id } }",
        {"i": {"name": "r", "imageName": "img", "gpuTypeId": RTX_4090, "ports": ports, "env": env_list}},
    )
    return data["podFindAndDeployOnDemand"]["id"]


async def get_pod(client: httpx.AsyncClient, pod_id: str) -> dict[str, Any]:
    return (await gql(client, f"query($id: String) {{ pod(input: {{podId: $id}}) {{ {POD} }} }}", {"id": pod_id}))[
        "pod"
    ]


async def public_port(client: httpx.AsyncClient, pod_id: str) -> int:
    for _ in range(200):
        pod = await get_pod(client, pod_id)
        if pod["runtime"]:
            return next(p["publicPort"] for p in pod["runtime"]["ports"] if p["privatePort"] == 8000)
        await asyncio.sleep(0.02)
    raise AssertionError(f"pod {pod_id} never booted")


async def health(port: int) -> httpx.Response | None:
    async with httpx.AsyncClient() as client:
        try:
            return await client.get(f"http://127.0.0.1:{port}/health", timeout=2)
        except httpx.TransportError:
            return None


async def wait_healthy(port: int, seconds: float = 15) -> httpx.Response:
    for _ in range(int(seconds / 0.05)):
        response = await health(port)
        if response is not None and response.status_code == 200:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing healthy on port {port}")


async def wait_dead(pid: int, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if not alive(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} is still alive")


async def test_simulated_health_goes_from_loading_to_ok():
    clock = FakeClock()
    async with EmulatorServer(make_settings(boot_seconds=10, load_seconds=20), clock) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            pod_id = await create(client)
            assert (await get_pod(client, pod_id))["runtime"] is None
            clock.advance(10)
            port = await public_port(client, pod_id)
            loading = await health(port)
            assert loading is not None and loading.status_code == 503
            assert loading.json() == {"status": "loading"}
            clock.advance(20)
            ok = await health(port)
            assert ok is not None and ok.status_code == 200
            assert ok.json() == {
                "status": "ok",
                "stt": {"engine": "simulated", "model": "tiny.en"},
                "tts": {"engine": "simulated", "voice": "simulated"},
            }
            assert (await client.get(f"http://127.0.0.1:{port}/other")).status_code == 404

            await gql(client, f'mutation {{ podStop(input: {{podId: "{pod_id}"}}) {{ id }} }}')
            assert await health(port) is None  # the listener is closed on stop
            await gql(client, f'mutation {{ podResume(input: {{podId: "{pod_id}", gpuCount: 1}}) {{ id }} }}')
            clock.advance(10)
            new_port = await public_port(client, pod_id)
            assert new_port != port  # a fresh public port on every start
            reloaded = await health(new_port)
            assert reloaded is not None and reloaded.status_code == 503  # the model loads again


async def test_admin_pods_view_tracks_boot_and_readiness():
    clock = FakeClock()
    async with EmulatorServer(make_settings(boot_seconds=5, load_seconds=5), clock) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS) as client:
            pod_id = await create(client)

            async def view() -> dict[str, Any]:
                return (await client.get("/_admin/pods")).json()[0]

            first = await view()
            assert (first["id"], first["state"], first["booted"], first["ready"]) == (pod_id, "STARTING", False, False)
            assert first["gpu_type_id"] == RTX_4090 and first["desired_status"] == "RUNNING"
            clock.advance(5)
            booted = await view()
            assert (booted["state"], booted["booted"], booted["ready"], booted["serving"]) == (
                "RUNNING",
                True,
                False,
                True,
            )
            assert booted["endpoint"] == f"http://127.0.0.1:{booted['public_ports']['8000']}"
            clock.advance(5)
            assert (await view())["ready"] is True


async def test_process_runner_runs_a_real_process_and_kills_it_on_stop(tmp_path: Path):
    settings = make_settings(
        runner="process", command=f"{sys.executable} -c '{STAND_IN}'", log_dir=tmp_path, stop_grace_seconds=2
    )
    async with EmulatorServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            pod_id = await create(client, ports="8000/tcp,22/tcp", env={"POD_SECRET": "s3cret"})
            port = await public_port(client, pod_id)
            seen = (await wait_healthy(port)).json()
            assert seen["pod"] == pod_id and seen["secret"] == "s3cret"
            assert seen["tcp_8000"] == str(port) and seen["ip"] == "127.0.0.1"
            assert "stand-in listening" in (tmp_path / f"{pod_id}.log").read_text()

            await gql(client, f'mutation {{ podStop(input: {{podId: "{pod_id}"}}) {{ id }} }}')
            await wait_dead(seen["pid"])
            await wait_dead(seen["child"])  # the whole process group went
            assert await health(port) is None

            await gql(client, f'mutation {{ podResume(input: {{podId: "{pod_id}", gpuCount: 1}}) {{ id }} }}')
            new_port = await public_port(client, pod_id)
            assert new_port != port
            again = (await wait_healthy(new_port)).json()
            assert again["pid"] != seen["pid"] and again["tcp_8000"] == str(new_port)
    await wait_dead(again["pid"])  # emulator shutdown stops running pods too
    await wait_dead(again["child"])


async def test_process_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path):
    settings = make_settings(
        runner="process", command=f'{sys.executable} -c "{IGNORES_SIGTERM}"', log_dir=tmp_path, stop_grace_seconds=0.3
    )
    async with EmulatorServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS) as client:
            pod_id = await create(client)
            await public_port(client, pod_id)
            pid = next(p for p in (await client.get("/_admin/pods")).json() if p["id"] == pod_id)["runner"]["pid"]
            for _ in range(100):  # wait until it has installed its SIGTERM handler
                if "up" in (tmp_path / f"{pod_id}.log").read_text():
                    break
                await asyncio.sleep(0.05)
            await gql(client, f'mutation {{ podTerminate(input: {{podId: "{pod_id}"}}) }}')
            assert alive(pid)  # terminate answers at once; the kill follows the grace
            await wait_dead(pid, seconds=5)


@pytest.mark.parametrize("runner", ["simulated", "process"])
async def test_no_ports_means_nothing_served(runner: str, tmp_path: Path):
    settings = make_settings(
        runner=runner, command=f"{sys.executable} -c 'import time; time.sleep(30)'", log_dir=tmp_path
    )
    async with EmulatorServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            pod_id = await create(client, ports="")
            for _ in range(100):
                pod = await get_pod(client, pod_id)
                if pod["runtime"] is not None:
                    break
                await asyncio.sleep(0.02)
            assert pod["runtime"] == {"ports": []}
            view = next(p for p in (await client.get("/_admin/pods", headers=HEADERS)).json() if p["id"] == pod_id)
            assert view["endpoint"] is None and view["public_ports"] == {}
            if runner == "simulated":
                assert view["serving"] is False  # no listener was opened


async def test_admin_can_make_a_simulated_pod_sick_and_heal_it():
    async with EmulatorServer(make_settings(boot_seconds=0, load_seconds=0)) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS) as client:
            pod_id = await create(client)
            port = await public_port(client, pod_id)
            await wait_healthy(port)
            sick = await client.post(f"/_admin/pods/{pod_id}/sick")
            assert sick.status_code == 200 and sick.json()["ready"] is False and sick.json()["runner"]["sick"]
            answer = await health(port)
            assert answer is not None and answer.status_code == 503 and answer.json()["status"] == "error"
            assert (await get_pod(client, pod_id))["desiredStatus"] == "RUNNING"  # RunPod sees nothing wrong
            healed = await client.post(f"/_admin/pods/{pod_id}/sick", json={"sick": False})
            assert healed.status_code == 200 and healed.json()["ready"] is True
            assert (await wait_healthy(port)).json()["status"] == "ok"
            assert (await client.post("/_admin/pods/nope/sick")).status_code == 404
            assert (await client.post(f"/_admin/pods/{pod_id}/sick", json={"sick": "very"})).status_code == 422
