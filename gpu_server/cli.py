"""``python -m gpu_server``: ``serve`` runs the speech server, ``token`` mints a lease token for testing.

Settings come from ``GPU_SERVER_*`` environment variables (see `gpu_server.settings`); flags override them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from gpu_server.settings import Settings

DEFAULT_POD = "local"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpu_server", description="Harper speech server (STT + TTS).")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Serve /ws/stt, /ws/tts, /health and /metrics. Other settings: GPU_SERVER_* variables.",
    )
    serve.add_argument(
        "--host", help="interface to bind (GPU_SERVER_HOST, default 127.0.0.1; the GPU image sets 0.0.0.0)"
    )
    serve.add_argument("--port", type=int, help="port to bind (GPU_SERVER_PORT, default 8000)")
    serve.add_argument("--log-level", help="debug, info, warning... (GPU_SERVER_LOG_LEVEL, default info)")

    token = commands.add_parser(
        "token",
        help="print a lease token for the configured secret",
        description="Print a lease token signed with GPU_SERVER_SECRET, for manual tests and local mode.",
    )
    token.add_argument("--lease-id", required=True, help="lease id to put in the token")
    token.add_argument("--ttl-s", type=float, required=True, help="seconds until the token expires")
    token.add_argument(
        "--pod-id",
        help="pod the token is for (default: GPU_SERVER_POD_ID, HARPER_POD_ID or RUNPOD_POD_ID, "
        f"else {DEFAULT_POD!r})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags = {name: getattr(args, name, None) for name in ("host", "port", "log_level")}
    settings = Settings(**{name: value for name, value in flags.items() if value is not None})
    if args.command == "token":
        return _token(settings, args)
    return _serve(settings)


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from gpu_server.auth import issue_token

    if not settings.secret:
        print("GPU_SERVER_SECRET is not set: there is no secret to sign the token with", file=sys.stderr)
        return 2
    pod_id = args.pod_id or settings.pod_id or DEFAULT_POD
    print(issue_token(settings.secret, args.lease_id, pod_id, expires_at=time.time() + args.ttl_s))
    return 0


def _serve(settings: Settings) -> int:
    import os

    import uvicorn

    from gpu_server.app import create_app, uvicorn_ws_options
    from gpu_server.memory import limit_arenas

    limit_arenas(os.cpu_count() or 1)  # before uvicorn and the models start their threads

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.secret:
        logging.getLogger(__name__).warning("GPU_SERVER_SECRET is not set: every WebSocket will be refused (4401)")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        **uvicorn_ws_options(settings),
    )
    return 0
