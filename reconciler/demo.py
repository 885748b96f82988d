"""``python -m reconciler demo``: act as the companion server for one round trip.

Take a lease, wait until its pod is Ready, speak a sentence through the pod's ``/ws/tts``, stream that
audio into its ``/ws/stt`` at real-time pace, print the transcript beside the text with the lease wait
(and its path), first-audio and final latencies, then release.

``demo-local`` (what ``make demo`` runs) also starts the local stack first (controller in local mode, whose
emulator runs real gpu_server processes on the bundled CPU models) and shuts it down afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from runpod_emulator.process import die_with_parent
from runpod_emulator.runner import allocate_port

from . import local_pods
from .lease_api import ControllerError, ControllerUnavailable, LeaseApi, LeaseFailed
from .local_pods import EMULATOR_FILE

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog, and then it takes a well deserved nap."


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of one transcript, normalised as the gpu_server's tests and bench do (``gpu_server.transcript``)."""
    from gpu_server import transcript  # not in the controller image, like the rest of the speech side

    return transcript.word_error_rate([reference], [hypothesis])


async def round_trip(url: str, token: str, text: str, *, wait_timeout_s: float = 600.0,
                     progress=print) -> dict:
    from gpu_server.client import speak, transcribe

    api = LeaseApi(url, token)
    started = time.monotonic()
    try:
        lease = await api.create(f"demo-{os.getpid()}-{int(time.time())}")
        progress(f"lease {lease.id}: {lease.state}" + (
            f" (queue position {lease.queue_position})" if lease.queue_position else ""))
        lease = await api.wait_ready(
            lease, wait_timeout_s, heartbeat_every_s=5.0,
            on_wait=lambda _, waited: progress(f"  waiting for a pod... {waited:.0f}s"),
        )
        lease_wait = time.monotonic() - started
        progress(f"lease ready via {lease.path} after {lease_wait:.2f}s: pod {lease.pod_id}")
        spoken = await speak(lease.endpoints["tts"], lease.token, text)
        progress(f"tts: {len(spoken.frames)} Opus frames, {spoken.audio_ms:.0f} ms of audio, "
                 f"first audio after {spoken.first_audio_ms:.0f} ms")
        progress("stt: streaming that audio back at real-time pace...")
        heard = await transcribe(lease.endpoints["stt"], lease.token, spoken.pcm, spoken.sample_rate, realtime=True)
        partial_ms = heard.first_partial_ms
        return {
            "spoken": text,
            "transcript": heard.text,
            "wer": round(word_error_rate(text, heard.text), 4),
            "path": lease.path,
            "pod_id": lease.pod_id,
            "lease_wait_s": round(lease_wait, 3),
            "tts_first_audio_ms": round(spoken.first_audio_ms or 0.0, 1),
            "tts_audio_ms": round(spoken.audio_ms, 1),
            "stt_final_ms": round(heard.final_latency_ms, 1) if heard.final_latency_ms is not None else None,
            "stt_first_partial_ms": round(partial_ms, 1) if partial_ms is not None else None,
        }
    finally:
        if "lease" in locals():
            try:
                await api.release(lease.id)
            except (ControllerError, ControllerUnavailable):
                pass
        await api.aclose()


def _print_report(result: dict) -> None:
    print()
    print(f"  spoken:     {result['spoken']}")
    print(f"  transcript: {result['transcript']}")
    print(f"  word error rate: {result['wer'] * 100:.1f}%")
    print(f"  lease wait: {result['lease_wait_s']:.2f} s via {result['path']} (pod {result['pod_id']})")
    print(f"  TTS first audio: {result['tts_first_audio_ms']:.0f} ms for {result['tts_audio_ms']:.0f} ms of speech")
    final = result["stt_final_ms"]
    print(f"  STT final: {final:.0f} ms after the end of speech" if final is not None else "  STT final: none")


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from .settings import Settings

    settings = Settings()
    url = args.url or settings.public_url or f"http://{settings.host}:{settings.port}"
    token = args.token or settings.api_token.get_secret_value()
    if not token:
        print("demo: no token: pass --token or set HARPER_API_TOKEN (the controller prints it on start)",
              file=sys.stderr)
        return 2
    say = (lambda *_: None) if args.json else (lambda msg: print(msg, flush=True))
    bridge = getattr(args, "bridge", None)
    try:
        if bridge:  # needs the speech side (gpu_server.client), which the controller image does not have
            from .demo_bridge import bridge_demo, print_bridge_report
            from .local_server import LocalServerFailed

            try:
                demo = await bridge_demo(url, token, bridge, progress=say)
            except LocalServerFailed as e:
                print(f"demo: the local CPU gpu_server (the bridge) did not start: {e}", file=sys.stderr)
                return 5
            if args.json:
                print(json.dumps(demo.as_json()))
            else:
                print_bridge_report(demo)
            return 0
        result = await round_trip(url, token, args.text, progress=say)
    except ControllerUnavailable:
        print(f"demo: no controller is reachable at {url}: start one with `python -m reconciler run` "
              f"(or pass --url)", file=sys.stderr)
        return 3
    except ControllerError as e:
        print(f"demo: the controller refused: {e}", file=sys.stderr)
        return 4
    except (LeaseFailed, TimeoutError, OSError) as e:
        print(f"demo: {type(e).__name__}: {e}", file=sys.stderr)
        return 5
    if args.json:
        print(json.dumps(result))
    else:
        _print_report(result)
    return 0


def cmd_demo_local(args: argparse.Namespace) -> int:
    """Start the local stack, wait for its standby, run the demo, shut it down. A pod whose gpu_server dies
    (or cannot load its models) ends it at once, with the exit code and the tail of the pod's log."""
    # A private directory and a free port unless told: two demos, or anything else on a fixed port, must not
    # meet (a second demo used to read another stack's status, then fail with a traceback).
    private = args.state_dir is None
    workdir = Path(args.state_dir or tempfile.mkdtemp(prefix="harper-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / EMULATOR_FILE).unlink(missing_ok=True)  # a previous run's: the watch must see this run's
    if args.port is None:
        args.port = allocate_port("127.0.0.1")
    port = args.port
    env = dict(os.environ) | {
        "HARPER_PORT": str(port), "HARPER_HOST": "127.0.0.1",
        "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'demo.db'}",
        "HARPER_LOCAL_STATE_DIR": str(workdir), "HARPER_API_TOKEN": os.environ.get("HARPER_API_TOKEN") or "demo-token",
        "HARPER_ADMIN_TOKEN": os.environ.get("HARPER_ADMIN_TOKEN") or "demo-admin-token",
        "HARPER_RECONCILE_INTERVAL_S": "1",
    }
    env.pop("HARPER_RUNPOD_API_KEY", None)
    log_path = workdir / "controller.log"
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout carries the JSON object only
    print(f"==> starting the local stack (controller log: {log_path})", file=out, flush=True)
    with open(log_path, "w") as log_file:
        # Its own session (a Ctrl-C meant for the demo reaches it once, through us); SIGTERM if we die, so a
        # killed demo does not leave the stack and its pods' servers running.
        proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run"], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent(signal.SIGTERM))
    code = 1
    try:
        code = asyncio.run(_demo_local(args, proc, env, workdir, out))
        return code
    finally:
        print("==> shutting the local stack down", file=out, flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if private and code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        elif code != 0:
            print(f"==> logs kept in {workdir}", file=out, flush=True)


async def _demo_local(args: argparse.Namespace, proc: subprocess.Popen, env: dict[str, str], workdir: Path,
                      out) -> int:
    """The standby wait and the demo, raced against the pod watch: whichever ends first decides."""
    work = asyncio.create_task(_standby_then_demo(args, proc, env, workdir, out), name="demo")
    pods = asyncio.create_task(local_pods.watch(workdir), name="pod-watch")
    try:
        await asyncio.wait({work, pods}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        failure = pods.result()
        print(f"demo: the demo cannot go on: {failure.report()}", file=sys.stderr, flush=True)
        return 1
    finally:
        for task in (work, pods):
            task.cancel()
        await asyncio.gather(work, pods, return_exceptions=True)


async def _standby_then_demo(args: argparse.Namespace, proc: subprocess.Popen, env: dict[str, str],
                             workdir: Path, out) -> int:
    url = f"http://127.0.0.1:{args.port}"
    log_path = workdir / "controller.log"
    admin = {"Authorization": f"Bearer {env['HARPER_ADMIN_TOKEN']}"}
    started = time.monotonic()
    last = ""
    async with httpx.AsyncClient(timeout=2.0, headers=admin) as http:
        while True:
            if proc.poll() is not None:
                last_line = (local_pods.log_tail(str(log_path), 1) or ["(no output)"])[-1]
                print(f"demo: the controller exited with code {proc.returncode}: {last_line} (log: {log_path})",
                      file=sys.stderr)
                return 1
            if time.monotonic() - started > args.timeout:
                print(f"demo: the standby was not ready after {args.timeout:.0f}s; see {log_path}", file=sys.stderr)
                return 1
            status = await _standby_status(http, url)
            if status != last:
                print(f"    [{time.monotonic() - started:5.1f}s] {status}", file=out, flush=True)
                last = status
            if status.startswith("standby ready"):
                break
            await asyncio.sleep(0.5)
    print("==> running the demo round trip", file=out, flush=True)
    demo_args = argparse.Namespace(url=url, token=env["HARPER_API_TOKEN"], text=args.text, json=args.json,
                                   bridge=args.bridge)
    os.environ["HARPER_API_TOKEN"] = env["HARPER_API_TOKEN"]
    return await _demo(demo_args)


async def _standby_status(http: httpx.AsyncClient, url: str) -> str:
    try:
        pods = (await http.get(f"{url}/v1/pods")).json()["pods"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "waiting for the controller to start"
    if not pods:
        return "controller up; creating the standby pod"
    pod = pods[0]
    if pod["state"] == "stopped" and pod["was_ready"]:
        return "standby ready (models loaded, pod stopped)"
    labels = {"creating": "creating the pod", "starting": "pod booting: gpu_server loading its models",
              "ready": "pod Ready: parking it as the stopped standby", "stopping": "stopping the standby"}
    return labels.get(pod["state"], pod["state"])


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="take a lease, speak through /ws/tts, transcribe through /ws/stt, release")
    demo.add_argument("--url", help="controller URL (default from HARPER_HOST/HARPER_PORT)")
    demo.add_argument("--token", help="companion token (default HARPER_API_TOKEN)")
    demo.add_argument("--text", default=DEFAULT_TEXT, help="what to say")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    _bridge_flag(demo)
    demo.set_defaults(func=cmd_demo)

    local = sub.add_parser("demo-local", help="start the local stack, run the demo, stop the stack (make demo)")
    local.add_argument("--text", default=DEFAULT_TEXT, help="what to say")
    local.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    local.add_argument("--port", type=int, default=None,
                       help="controller port for the demo stack (default: a free one)")
    local.add_argument("--state-dir", default=None,
                       help="where the demo keeps its database and logs (default: a new private temporary "
                            "directory, removed after a successful run)")
    local.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the standby")
    _bridge_flag(local)
    local.set_defaults(func=cmd_demo_local)


def _bridge_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bridge", nargs="?", const="both", choices=["stt", "both"],
        help="a five-sentence conversation that starts at once on the local CPU gpu_server and moves to the pod "
             "at an utterance boundary once it is ready (default both: STT and TTS; stt: replies wait for the pod)",
    )
