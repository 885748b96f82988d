"""The command line: help on every command, and a real ``serve`` process that stops cleanly on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import httpx
import pytest
import runpod

from runpod_emulator.server import EmulatorServer

from .conftest import RTX_4090, StartEmulator, make_settings


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runpod_emulator", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_on_every_command():
    top = run("--help")
    assert top.returncode == 0 and "serve" in top.stdout
    serve = run("serve", "--help")
    assert serve.returncode == 0
    for flag in (
        "--port",
        "--api-key",
        "--runner",
        "--boot-seconds",
        "--load-seconds",
        "--seed",
        "--machines-per-type",
        "--gpus-per-machine",
        "--command",
        "--log-dir",
        "--resume-boot-seconds",
        "--ports-delay-seconds",
        "--rate-limit",
        "--tenant-take-per-hour",
        "--tenant-release-per-hour",
        "--stale-exited-ports",
        "--http-proxy-only",
    ):
        assert flag in serve.stdout
    assert "EMULATOR_" in serve.stdout


def test_fidelity_flags_reach_the_settings(monkeypatch):
    from runpod_emulator.cli import _parser, settings_from_args

    monkeypatch.setenv("EMULATOR_PORTS_DELAY_SECONDS", "25")
    args = _parser().parse_args(
        ["serve", "--resume-boot-seconds", "20", "--rate-limit", "10/minute", "--tenant-take-per-hour", "3",
         "--tenant-release-per-hour", "1", "--stale-exited-ports", "--http-proxy-only"]
    )
    settings = settings_from_args(args)
    assert (settings.resume_boot_seconds, settings.ports_delay_seconds, settings.rate_limit) == (20, 25, "10/minute")
    assert (settings.tenant_take_per_hour, settings.tenant_release_per_hour) == (3, 1)
    assert settings.stale_exited_ports and settings.http_proxy_only
    plain = settings_from_args(_parser().parse_args(["serve"]))
    assert not plain.stale_exited_ports and not plain.http_proxy_only  # unset flags leave the defaults
    assert run("serve", "--rate-limit", "lots").returncode == 2


def test_bad_settings_are_refused():
    result = run("serve", "--boot-seconds", "-1")
    assert result.returncode == 2 and "boot_seconds" in result.stderr


def test_serve_on_port_zero_then_sigterm():
    env = {**os.environ, "EMULATOR_API_KEY": "from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runpod_emulator", "serve", "--port", "0", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("RUNPOD_API_BASE_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        query = {"query": "{ myself { id } }"}
        assert httpx.post(f"{url}/graphql", json=query, params={"api_key": "from-env"}).status_code == 200
        assert httpx.post(f"{url}/graphql", json=query, params={"api_key": "other"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "from-env" not in stderr  # the key is never logged


def test_logs_name_pod_events_but_never_the_key_or_env(start_emulator: StartEmulator, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="runpod_emulator")
    start_emulator(api_key="sekrit-key-123")
    monkeypatch.setattr(runpod, "api_key", "sekrit-key-123")
    pod = runpod.create_pod("p", "img", RTX_4090, env={"GPU_SERVER_SECRET": "hunter2-value"})
    runpod.stop_pod(pod["id"])
    runpod.terminate_pod(pod["id"])
    text = caplog.text
    assert f"pod {pod['id']} created" in text and f"pod {pod['id']} terminated" in text
    assert "sekrit-key-123" not in text and "hunter2-value" not in text


async def test_a_busy_port_is_a_plain_error_in_process():
    async with EmulatorServer(make_settings()) as first:
        with pytest.raises(RuntimeError, match="cannot listen"):
            await EmulatorServer(make_settings(port=first.port)).start()
        with pytest.raises(RuntimeError, match="cannot listen"):
            EmulatorServer(make_settings(port=first.port)).start_in_thread()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{first.url}/healthz")).json() == {"status": "ok"}
