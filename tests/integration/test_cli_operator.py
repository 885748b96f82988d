"""The daemon as an operator starts and stops it: settings checked before anything starts, one-line errors,
the API bound before the first pass, a prompt shutdown while clients long-poll, and the policy in force said
at start (issue: an operator's first hour)."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from runpod_emulator.runner import allocate_port
from runpod_emulator.server import EmulatorServer
from runpod_emulator.settings import EmulatorSettings

from .harness import ADMIN, COMPANION, EMULATOR_KEY


def clean_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HARPER_")}
    if "HARPER_RUNPOD_API" in os.environ:  # lets the suite run the daemon on either RunPod API
        base["HARPER_RUNPOD_API"] = os.environ["HARPER_RUNPOD_API"]
    return base | env


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=60,
                          env=clean_env(**env))


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"HARPER_PORT": "99999"}, "bad setting HARPER_PORT=99999: Input should be less than or equal to 65535"),
        ({"HARPER_PORT": "abc"}, "bad setting HARPER_PORT=abc"),
        ({"HARPER_LEASE_TTL_S": "-1"}, "bad setting HARPER_LEASE_TTL_S=-1.0: Input should be greater than 0"),
        ({"HARPER_LOCAL_RUNNER": "bogus"}, "bad setting HARPER_LOCAL_RUNNER=bogus"),
        ({"HARPER_LOG_LEVEL": "loud"}, "bad setting HARPER_LOG_LEVEL=LOUD"),
        ({"HARPER_STANDBY_COUNT": "5", "HARPER_MAX_PODS": "2"}, "standby_count 5 is above max_pods 2"),
        ({"HARPER_RUNPOD_API": "soap"}, "bad setting HARPER_RUNPOD_API=soap"),
    ],
)
def test_bad_settings_are_one_line_naming_the_setting(env, says):
    done = run("run", **env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_an_unusable_database_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    done = run("run", HARPER_DATABASE_URL=f"sqlite+aiosqlite:///{blocker}/harper.db")
    assert done.returncode == 2 and "cannot open the database" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    missing_driver = run("migrate", "--database-url", "postgresql+nosuchdriver://u:secret@db/h")
    assert missing_driver.returncode == 2 and "Traceback" not in missing_driver.stderr
    assert "secret" not in missing_driver.stderr


@pytest.fixture
def emulator():
    server = EmulatorServer(EmulatorSettings(port=0, api_key=EMULATOR_KEY, runner="simulated", boot_seconds=0.2,
                                             load_seconds=0.2, seed=3))
    with server.start_in_thread():
        yield server


def daemon_env(emulator, tmp_path, **env: str) -> dict[str, str]:
    return clean_env(
        HARPER_RUNPOD_API_KEY=EMULATOR_KEY, HARPER_RUNPOD_API_URL=emulator.url, HARPER_API_TOKEN=COMPANION,
        HARPER_ADMIN_TOKEN=ADMIN, HARPER_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'h.db'}",
        HARPER_GPU_TYPES="NVIDIA GeForce RTX 4090", HARPER_RECONCILE_INTERVAL_S="0.5", **env,
    )


def start_daemon(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("harper controller: API "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split()[3]


def test_a_busy_port_fails_before_any_banner_or_runpod_call(emulator, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "reconciler", "run"], capture_output=True, text=True,
                              timeout=60, env=daemon_env(emulator, tmp_path, HARPER_PORT=str(port)))
    assert done.returncode == 2 and done.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    time.sleep(1.0)
    assert httpx.get(f"{emulator.url}/_admin/pods", headers={"Authorization": f"Bearer {EMULATOR_KEY}"}).json() == []


def test_shutdown_answers_long_polls_at_once_and_exits_promptly(emulator, tmp_path):
    port = allocate_port("127.0.0.1")
    proc, url = start_daemon(daemon_env(emulator, tmp_path, HARPER_PORT=str(port)))
    try:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.patch(f"{url}/v1/policy", json={"paused": True}, headers=auth).status_code == 200
        lease = httpx.post(f"{url}/v1/leases", json={"session_id": "s"}, headers=auth).json()
        with httpx.Client(timeout=70) as client:
            import threading

            answer: list[httpx.Response] = []
            poller = threading.Thread(target=lambda: answer.append(
                client.get(f"{url}/v1/leases/{lease['id']}", params={"wait": 60}, headers=auth)))
            poller.start()
            time.sleep(1.0)
            asked = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            poller.join(20)
            proc.communicate(timeout=20)
            code, took = proc.returncode, time.monotonic() - asked
        assert answer and answer[0].status_code == 200 and answer[0].json()["state"] == "pending"
        assert code == 0
        assert took < 10, f"shutdown took {took:.1f}s with a long poll open (it used to take up to 60 s)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_second_interrupt_exits_at_once(emulator, tmp_path):
    # The first RunPod call hangs for 20 s, so the graceful shutdown has a pass in flight to wait for.
    admin = {"Authorization": f"Bearer {EMULATOR_KEY}"}
    httpx.post(f"{emulator.url}/_admin/faults", json={"op": "*", "kind": "timeout", "delay_s": 20, "count": 1},
               headers=admin).raise_for_status()
    port = allocate_port("127.0.0.1")
    proc, url = start_daemon(daemon_env(emulator, tmp_path, HARPER_PORT=str(port)))
    try:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130 and "interrupted again: exiting now" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_policy_in_force_and_where_it_came_from_is_logged(emulator, tmp_path):
    port = allocate_port("127.0.0.1")
    proc, url = start_daemon(daemon_env(emulator, tmp_path, HARPER_PORT=str(port), HARPER_IDLE_TTL_S="60"))
    httpx.patch(f"{url}/v1/policy", json={"paused": True}, headers={"Authorization": f"Bearer {ADMIN}"})
    proc.send_signal(signal.SIGTERM)
    first = proc.communicate(timeout=20)[1]
    assert "policy in force: standby_count=1 (default), idle_ttl_s=60.0 (HARPER_IDLE_TTL_S)" in first
    # Again on the same database, with the environment now disagreeing with what is stored.
    proc, url = start_daemon(daemon_env(emulator, tmp_path, HARPER_PORT=str(port), HARPER_IDLE_TTL_S="30"))
    proc.send_signal(signal.SIGTERM)
    second = proc.communicate(timeout=20)[1]
    assert "idle_ttl_s=60.0 (database)" in second
    assert "HARPER_IDLE_TTL_S=30.0 is not applied: the database's policy says 60.0" in second
    assert "the controller starts paused" in second
