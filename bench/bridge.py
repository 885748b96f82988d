"""Bridge benchmark: time from session start to the first final, with and without the bridge, on a slow pod.

Starts the local stack (``python -m reconciler run`` in local mode, its pods real gpu_server processes) with
the emulator's boot delay at ``--boot-s`` (default 20 s: a stopped RunPod pod takes 30-60 s to resume, a cold
create minutes) and no standby, so every lease waits for the same pod to boot and load its models. A companion
(``VoicePods``, its local CPU gpu_server kept warm) then runs sessions in turn, each after the pod is stopped
again:

- without the bridge: ``session()`` returns once the pod is ready; then the user says one sentence;
- with ``bridge="stt"``: ``session()`` returns at once on the local server and the user speaks at once; the
  session stays open until the pod is ready and a second sentence has shown the move.

The user's sentence is Piper's, synthesized once on the local server, streamed at real-time pace after 0.3 s
of silence. Printed per mode: median, min and max of session start -> first final, and for bridged runs the
pod's ready time and the utterance the stream moved at.

Usage: .venv/bin/python bench/bridge.py [--runs 3] [--boot-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler.bridge import Server
from reconciler.client import VoicePods
from reconciler.demo_bridge import SENTENCES, Clip, collect, play, synthesize
from runpod_emulator.runner import allocate_port

COMPANION, ADMIN = "bench-companion", "bench-admin"


class Stack:
    def __init__(self, workdir: Path, boot_s: float) -> None:
        self.port = allocate_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "controller.log"
        self.env = dict(os.environ) | {
            "HARPER_PORT": str(self.port), "HARPER_HOST": "127.0.0.1", "HARPER_API_TOKEN": COMPANION,
            "HARPER_ADMIN_TOKEN": ADMIN, "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
            "HARPER_LOCAL_STATE_DIR": str(workdir / "local"), "HARPER_RECONCILE_INTERVAL_S": "0.5",
            "HARPER_LOCAL_BOOT_S": str(boot_s), "HARPER_STANDBY_COUNT": "0", "HARPER_IDLE_TTL_S": "1",
            "HARPER_LOG_LEVEL": "WARNING",
        }
        self.env.pop("HARPER_RUNPOD_API_KEY", None)
        self.proc: subprocess.Popen | None = None
        self.admin = httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)

    def start(self) -> None:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    async def pods(self) -> list[dict]:
        return (await self.admin.get("/v1/pods")).json()["pods"]

    async def quiet(self, timeout_s: float = 180.0) -> None:
        """Until the controller answers and no pod runs or boots (the last session's pod is stopped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the controller exited; see {self.log}")
            try:
                if all(p["state"] in ("stopped", "terminated") for p in await self.pods()):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"pods still running after {timeout_s:.0f}s; see {self.log}")

    async def stop(self) -> None:
        await self.admin.aclose()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def first_final(pods: VoicePods, clips: list[Clip], bridge: str | None, n: int) -> dict:
    started = time.monotonic()
    async with pods.session(f"bench-{bridge or 'none'}-{n}", bridge=bridge) as voice:
        opened = time.monotonic() - started
        async with voice.stt(sample_rate=clips[0].sample_rate) as stt:
            first: list[float] = []

            def on_event(event) -> None:
                if event.type == "final" and event.text and not first:
                    first.append(event.at - started)

            listener = asyncio.create_task(collect(stt, on_event))

            async def before(i: int) -> None:
                if i == 1:  # the second sentence only once the stream is on the pod: it shows the move
                    if await voice.wait_for_pod():
                        await stt.moved.wait()

            await play(stt, clips[: 2 if bridge else 1], gap_s=1.5, before=before)
            await stt.finish()
            finals = [e for e in await listener if e.type == "final"]
        return {"first_final_s": first[0] if first else None, "session_open_s": opened, "ready_s": voice.ready_s,
                "switched_at": voice.switched_at, "servers": [str(f.server) for f in finals]}


def summary(name: str, runs: list[dict]) -> float:
    finals = [r["first_final_s"] for r in runs if r["first_final_s"] is not None]
    med = statistics.median(finals)
    print(f"  {name:<16} first final after session start: median {med:6.2f} s  (min {min(finals):.2f}, "
          f"max {max(finals):.2f}, n={len(finals)}); session open after median "
          f"{statistics.median(r['session_open_s'] for r in runs):.2f} s")
    return med


async def main_async(args: argparse.Namespace) -> None:
    print(f"bridge bench: pod boot delay {args.boot_s:.0f} s, {args.runs} runs per mode, "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="harper-bridge-bench-") as tmp:
        stack = Stack(Path(tmp), args.boot_s)
        stack.start()
        pods = VoicePods(stack.url, COMPANION, bridge="stt", heartbeat_s=5.0, fallback_after_s=600)
        try:
            warm_s = await pods.warm()
            print(f"  local CPU gpu_server warm after {warm_s:.1f} s (once, at companion start-up)")
            clips = await synthesize(pods.local.route(Server.BRIDGE), SENTENCES[:2])
            results: dict[str | None, list[dict]] = {None: [], "stt": []}
            for n in range(args.runs):
                for bridge in (None, "stt"):
                    await stack.quiet()
                    result = await first_final(pods, clips, bridge, n)
                    results[bridge].append(result)
                    print(f"    run {n + 1} bridge={bridge}: first final {result['first_final_s']:.2f} s, pod ready "
                          f"{result['ready_s']:.2f} s, finals on {result['servers']}"
                          + (f", moved at utterance {result['switched_at']}" if bridge else ""), flush=True)
        finally:
            await pods.aclose()
            await stack.stop()
    print()
    without = summary("without bridge", results[None])
    with_bridge = summary("bridge=stt", results["stt"])
    ready = statistics.median(r["ready_s"] for r in results["stt"])
    print(f"  pod ready after median {ready:.2f} s; the bridge heard the first words {without - with_bridge:.1f} s "
          f"sooner ({without / with_bridge:.1f}x)")
    print(f"  load average at end {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="sessions per mode")
    parser.add_argument("--boot-s", type=float, default=20.0, help="the emulator's pod boot delay")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
