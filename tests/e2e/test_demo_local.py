"""``python -m reconciler demo-local`` (what ``make demo`` runs) says at once why a pod's server died.

The pods are real ``gpu_server`` processes started by the emulator inside the controller; they inherit its
environment, so a bad ``GPU_SERVER_*`` value set for the demo reaches them. Without the pod watch the demo
waited for the standby until its 600 s timeout and said nothing: the subprocess timeouts below (far under
that, and under the default ``--timeout``) fail these tests if it waits.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reconciler.local_pods import PodFailure, find_failure
from runpod_emulator.runner import allocate_port

pytestmark = pytest.mark.timeout(240)


def demo_local(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ) | env
    environ.pop("HARPER_RUNPOD_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "demo-local", "--port", str(allocate_port("127.0.0.1")),
         "--state-dir", str(tmp_path / "demo")],
        env=environ, capture_output=True, text=True, timeout=150,
    )


def test_a_pod_server_that_dies_at_start_fails_the_demo_with_its_own_error(tmp_path):
    done = demo_local(tmp_path, GPU_SERVER_DEVICE="bogus")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "its gpu_server exited with code 1" in done.stderr
    # the server's own error line, from the pod's log
    assert "Input should be 'auto', 'cpu' or 'cuda'" in done.stderr
    assert "shutting the local stack down" in done.stdout
    assert not (tmp_path / "demo" / "emulator.json").exists()  # the daemon removes what it published


def test_a_pod_server_that_cannot_load_its_models_fails_the_demo(tmp_path):
    done = demo_local(tmp_path, GPU_SERVER_STT_MODEL=str(tmp_path / "no-such-model"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "its gpu_server could not load its models" in done.stderr
    assert "cannot load Whisper model" in done.stderr


def test_only_a_process_that_ended_by_itself_is_a_failure(tmp_path):
    log = tmp_path / "p2.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "RuntimeError: boom\n")
    stopped = {"id": "p1", "runner": {"serving": False, "ready": None}}  # stopped by the emulator: no returncode
    booting = {"id": "p3", "runner": {"serving": True, "returncode": None, "log": "x"}}
    assert find_failure([stopped, booting], {"p3": {"status": "loading"}}) is None
    killed = {"id": "p2", "runner": {"serving": False, "returncode": -9, "log": str(log)}}
    failure = find_failure([stopped, killed], {})
    assert failure == PodFailure("p2", "its gpu_server was killed by signal 9", str(log), failure.log_tail)
    assert len(failure.log_tail) == 20 and failure.log_tail[-1] == "RuntimeError: boom"
    sick = find_failure([booting], {"p3": {"status": "error", "error": "no CUDA"}})
    assert sick is not None and sick.what.endswith("could not load its models: no CUDA")
