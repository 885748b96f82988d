"""Many clients and many pods at once: concurrent SDK creates, and hundreds of simulated pods serving."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import runpod

from runpod_emulator.server import EmulatorServer

from .conftest import API_KEY, RTX_4090, StartEmulator, alive, make_settings

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def test_100_concurrent_sdk_creates(start_emulator: StartEmulator):
    start_emulator(machines_per_type=2, gpus_per_machine=64, boot_seconds=60)

    def create(n: int) -> str:
        return runpod.create_pod(f"harper-{n}", "img", RTX_4090, ports="8000/tcp")["id"]

    with ThreadPoolExecutor(max_workers=100) as pool:
        ids = list(pool.map(create, range(100)))
    assert len(set(ids)) == 100
    pods = runpod.get_pods()
    assert {p["id"] for p in pods} == set(ids)
    assert {p["name"] for p in pods} == {f"harper-{n}" for n in range(100)}


async def test_300_simulated_pods_boot_and_answer_health():
    settings = make_settings(machines_per_type=5, gpus_per_machine=64, boot_seconds=0.2, load_seconds=0.2)
    # httpx's pool is slow with hundreds of queued requests, so the client keeps 20 in flight at a time.
    in_flight = asyncio.Semaphore(20)
    async with EmulatorServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=30) as client:
            mutation = """mutation($i: PodFindAndDeployOnDemandInput!) {
                podFindAndDeployOnDemand(input: $i) { id } }"""

            async def create(n: int) -> str:
                body = {"name": f"sim-{n}", "imageName": "img", "gpuTypeId": RTX_4090, "ports": "8000/tcp"}
                async with in_flight:
                    response = await client.post("/graphql", json={"query": mutation, "variables": {"i": body}})
                return response.json()["data"]["podFindAndDeployOnDemand"]["id"]

            ids = await asyncio.gather(*(create(n) for n in range(300)))
            assert len(set(ids)) == 300

            query = "{ myself { pods { id runtime { ports { privatePort publicPort } } } } }"
            for _ in range(200):
                pods = (await client.post("/graphql", json={"query": query})).json()["data"]["myself"]["pods"]
                if all(p["runtime"] for p in pods):
                    break
                await asyncio.sleep(0.05)
            ports = [p["runtime"]["ports"][0]["publicPort"] for p in pods]
            assert len(pods) == 300 and len(set(ports)) == 300

            async def healthy(port: int) -> bool:
                for _ in range(100):
                    async with in_flight:
                        response = await client.get(f"http://127.0.0.1:{port}/health")
                    if response.status_code == 200:
                        return True
                    await asyncio.sleep(0.05)
                return False

            assert all(await asyncio.gather(*(healthy(port) for port in ports)))


async def test_100_process_pods_start_and_all_die_with_the_emulator(tmp_path):
    sleep = shutil.which("sleep")
    assert sleep is not None
    settings = make_settings(
        runner="process",
        command=f"{sleep} 120",
        log_dir=tmp_path,
        machines_per_type=1,
        gpus_per_machine=100,
        boot_seconds=0,
    )
    async with EmulatorServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=30) as client:
            mutation = 'mutation { podFindAndDeployOnDemand(input: {name: "p", imageName: "i", gpuTypeId: "%s", ports: "8000/tcp"}) { id } }'
            for _ in range(100):
                response = await client.post("/graphql", json={"query": mutation % RTX_4090})
                assert response.json()["data"]["podFindAndDeployOnDemand"]["id"]
            for _ in range(100):
                pods = (await client.get("/_admin/pods")).json()
                if all(p["serving"] for p in pods):
                    break
                await asyncio.sleep(0.05)
            pids = [p["runner"]["pid"] for p in pods]
            assert len(set(pids)) == 100 and all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)  # shutdown reaped every one of them
