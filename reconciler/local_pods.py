"""Local mode's pods, seen from outside the controller: say at once when a pod's gpu_server dies.

In local mode each pod is a real ``python -m gpu_server serve`` process run by the emulator inside the
controller. When that process dies at start (a bad setting, a missing library) the controller only sees a pod
that never turns Ready, and ``demo-local`` would wait for the standby until its timeout. So the daemon
publishes where its emulator listens (``publish_emulator``: ``<local state dir>/emulator.json``, mode 0600,
as it holds the emulator's key), and ``watch`` polls the emulator's admin view of its pods: a runner process
that exited while its pod should be running, or a gpu_server whose ``/health`` reports that its models
failed to load, ends the watch with a ``PodFailure`` that carries the exit code and the tail of the pod's log.

``find_failure`` is the pure decision; ``watch`` does the polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

EMULATOR_FILE = "emulator.json"
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class PodFailure:
    pod_id: str
    what: str  # e.g. "its gpu_server exited with code 1"
    log_path: str | None
    log_tail: list[str]

    def report(self) -> str:
        where = f"; last lines of {self.log_path}:" if self.log_path else ""
        lines = [f"pod {self.pod_id}: {self.what}{where}"]
        lines += [f"    | {line}" for line in self.log_tail]
        return "\n".join(lines)


def publish_emulator(state_dir: Path, url: str, api_key: str) -> Path:
    """Write the emulator's URL and key where ``demo-local`` finds them; readable by this user only."""
    path = state_dir / EMULATOR_FILE
    path.unlink(missing_ok=True)  # O_CREAT's mode applies to a new file only
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "api_key": api_key}, f)
    return path


def read_emulator(state_dir: Path) -> tuple[str, str] | None:
    try:
        found = json.loads((state_dir / EMULATOR_FILE).read_text())
        return found["url"], found["api_key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines()[-lines:]]


def find_failure(
    pods: list[dict[str, Any]], health: dict[str, dict[str, Any]], log_dir: Path | None = None
) -> PodFailure | None:
    """The first pod whose server is dead, from the emulator's admin view and the ``/health`` bodies read
    from each serving pod (``health[pod_id]``). A stopped pod has no runner process, so no returncode: only
    a process that ended by itself has one, and the emulator keeps its exit code on the pod (``exit_code``)
    after RunPod's ``ERROR`` and after the controller replaced it (it does so at once)."""
    for pod in pods:
        runner = pod.get("runner") or {}
        code = runner.get("returncode")
        if code is None:
            code = pod.get("exit_code")
        if code is not None:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            path = runner.get("log") or (str(log_dir / f"{pod['id']}.log") if log_dir else None)
            return PodFailure(pod["id"], f"its gpu_server {how}", path, log_tail(path))
        body = health.get(pod["id"]) or {}
        if body.get("status") == "error":
            what = f"its gpu_server could not load its models: {body.get('error', 'no reason given')}"
            return PodFailure(pod["id"], what, runner.get("log"), log_tail(runner.get("log")))
    return None


async def watch(state_dir: Path, *, every_s: float = 0.5) -> PodFailure:
    """Poll until a pod's server fails, and return the failure; runs until cancelled otherwise. Until the
    daemon has written the emulator file (once its emulator is up) there is nothing to poll."""
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            found = read_emulator(state_dir)
            if found is not None:
                url, key = found
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = await http.get(f"{url}/_admin/pods", headers={"Authorization": f"Bearer {key}"})
                    pods = response.json() if response.status_code == 200 else []
                    failure = find_failure(pods, await _health(http, pods), state_dir / "pods")
                    if failure is not None:
                        return failure
            await asyncio.sleep(every_s)


async def _health(http: httpx.AsyncClient, pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    bodies: dict[str, dict[str, Any]] = {}
    for pod in pods:
        if not (pod.get("serving") and pod.get("endpoint")):
            continue
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body = (await http.get(f"{pod['endpoint']}/health")).json()
            if isinstance(body, dict):
                bodies[pod["id"]] = body
    return bodies
