"""``python -m runpod_emulator serve``: the emulator as a standalone process.

Every flag has an ``EMULATOR_<NAME>`` environment variable (e.g. ``EMULATOR_API_KEY``); a flag wins over
the environment. Once listening it prints one line, ``RUNPOD_API_BASE_URL=http://host:port``, which is
what the runpod SDK needs (it appends ``/graphql`` itself) and the base of REST v2 (``<url>/v2/...``),
then logs pod events until SIGINT/SIGTERM, on
which every pod runner is stopped before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from runpod_emulator.settings import EmulatorSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runpod_emulator", description="A local stand-in for RunPod's pod APIs (REST v2 and GraphQL)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the REST v2, GraphQL and admin APIs",
        description="Serve RunPod's REST API v2 (/v2/...) and pod GraphQL API (POST /graphql) over one fleet, "
        "the pod proxy (/proxy/<podId>-<port>/) and the emulator's admin API (/_admin). "
        "Every option can also be set as EMULATOR_<OPTION> in the environment.",
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port; 0 picks a free one (default 8765)")
    serve.add_argument("--api-key", help="accept only this key (default: any non-empty key)")
    serve.add_argument("--runner", choices=["simulated", "process"], help="what runs behind each pod")
    serve.add_argument("--boot-seconds", type=float, help="create to runtime delay, the image pull (default 3)")
    serve.add_argument(
        "--resume-boot-seconds", type=float, help="resume/restart to runtime delay (default: --boot-seconds)"
    )
    serve.add_argument(
        "--ports-delay-seconds", type=float, help="runtime to its ports being reported (default 0)"
    )
    serve.add_argument(
        "--rate-limit",
        help="REST v2 rate limit, QUOTA/WINDOW[,...] or off (default 60/minute,3000/hour,50000/day)",
    )
    serve.add_argument(
        "--tenant-take-per-hour", type=float, help="other tenants take each free GPU at this rate (default 0)"
    )
    serve.add_argument(
        "--tenant-release-per-hour", type=float, help="other tenants give back each GPU at this rate (default 0)"
    )
    serve.add_argument(
        "--stale-exited-ports", action="store_const", const=True, help="GraphQL keeps an EXITED pod's runtime.ports"
    )
    serve.add_argument(
        "--http-proxy-only", action="store_const", const=True, help="http ports only through /proxy/<podId>-<port>/"
    )
    serve.add_argument("--load-seconds", type=float, help="simulated: boot to /health 200 (default 2)")
    serve.add_argument("--seed", type=int, help="seed for ids and fault rates (default random)")
    serve.add_argument("--machines-per-type", type=int, help="machines per GPU type (default 4)")
    serve.add_argument("--gpus-per-machine", type=int, help="GPUs per machine (default 8)")
    serve.add_argument(
        "--command",
        dest="pod_command",
        metavar="COMMAND",
        help="process runner: command per pod, shell words (default: python -m gpu_server serve)",
    )
    serve.add_argument("--log-dir", help="process runner: directory for per-pod logs (default: a temp dir)")
    serve.add_argument("--stop-grace-seconds", type=float, help="process runner: SIGTERM to SIGKILL (default 5)")
    serve.add_argument("--pod-host", help="address pods serve on and report as their ip (default 127.0.0.1)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    flags = {
        "host": args.host,
        "port": args.port,
        "api_key": args.api_key,
        "runner": args.runner,
        "boot_seconds": args.boot_seconds,
        "resume_boot_seconds": args.resume_boot_seconds,
        "ports_delay_seconds": args.ports_delay_seconds,
        "rate_limit": args.rate_limit,
        "tenant_take_per_hour": args.tenant_take_per_hour,
        "tenant_release_per_hour": args.tenant_release_per_hour,
        "stale_exited_ports": args.stale_exited_ports,
        "http_proxy_only": args.http_proxy_only,
        "load_seconds": args.load_seconds,
        "seed": args.seed,
        "machines_per_type": args.machines_per_type,
        "gpus_per_machine": args.gpus_per_machine,
        "command": args.pod_command,
        "log_dir": args.log_dir,
        "stop_grace_seconds": args.stop_grace_seconds,
        "pod_host": args.pod_host,
    }
    return EmulatorSettings(**{k: v for k, v in flags.items() if v is not None})


async def _serve(settings: EmulatorSettings, log_level: str) -> None:
    from runpod_emulator.server import EmulatorServer  # uvicorn and FastAPI only when serving

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = EmulatorServer(settings, log_level=log_level)
    await server.start()
    print(f"RUNPOD_API_BASE_URL={server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        print(f"invalid settings:\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(settings, args.log_level))
    except RuntimeError as e:
        print(f"runpod emulator: {e}", file=sys.stderr)
        return 1
    return 0
