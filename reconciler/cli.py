"""``python -m reconciler``: run the daemon, migrate the database, or act as the companion server (demo).

With no ``HARPER_RUNPOD_API_KEY`` the daemon runs in local mode: it starts the RunPod emulator on loopback
(whose pods are real local gpu_server processes, or simulated ones) and points itself at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from .settings import Settings

log = logging.getLogger("reconciler")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apscheduler", "httpx", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _db_location(url: str) -> str:
    if url.startswith("sqlite") and ":///" in url:
        return str(Path(url.split(":///", 1)[1]).resolve())
    return url.split("@")[-1]  # never print credentials of a server URL


async def _run(settings: Settings) -> None:
    from .app import create_app

    updates: dict[str, object] = {}
    generated = []
    for name in ("api_token", "admin_token"):
        if not getattr(settings, name).get_secret_value():
            updates[name] = secrets.token_urlsafe(24)
            generated.append(name)
    emulator = None
    if settings.local_mode:
        from runpod_emulator.server import EmulatorServer
        from runpod_emulator.settings import EmulatorSettings

        key = secrets.token_urlsafe(24)
        state_dir = Path(settings.local_state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        emulator = EmulatorServer(
            EmulatorSettings(
                host="127.0.0.1", port=0, api_key=key, runner=settings.local_runner,
                boot_seconds=settings.local_boot_s, log_dir=str(state_dir / "pods"),
            )
        )
        await emulator.start()
        updates |= {"runpod_api_key": key, "runpod_api_url": emulator.url}
    settings = settings.model_copy(update={k: _secret(k, v) for k, v in updates.items()})
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_exit)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    print(f"harper controller: API {url}  (OpenAPI {url}/docs, metrics {url}/metrics)", flush=True)
    print(f"  database: {_db_location(settings.database_url)}", flush=True)
    if emulator is not None:
        print(f"  local mode: RunPod emulator at {emulator.url} ({settings.local_runner} pods; "
              f"logs in {Path(settings.local_state_dir).resolve() / 'pods'})", flush=True)
    for name in generated:
        env = "HARPER_" + name.upper()
        print(f"  {env}={getattr(settings, name).get_secret_value()}  (generated; set {env} to keep it)",
              flush=True)
    try:
        await server.serve()
    finally:
        if emulator is not None:
            await emulator.stop()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ours ends it gracefully, then the emulator and its pods."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def request_exit(self) -> None:
        log.info("shutting down")
        self.should_exit = True


def _secret(name: str, value: object) -> object:
    from pydantic import SecretStr

    return SecretStr(value) if name in ("api_token", "admin_token", "runpod_api_key") else value


def cmd_run(args: argparse.Namespace) -> int:
    # Flags win over the environment: put them there, then read one Settings object.
    for flag, env in (("host", "HARPER_HOST"), ("port", "HARPER_PORT"), ("database_url", "HARPER_DATABASE_URL"),
                      ("runner", "HARPER_LOCAL_RUNNER")):
        if getattr(args, flag):
            os.environ[env] = str(getattr(args, flag))
    try:
        settings = Settings()
        settings.default_policy(), settings.tuning()  # fail here, with the setting named, not mid-start
    except ValidationError as e:
        err = e.errors()[0]
        print(f"reconciler: bad setting {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    with contextlib.suppress(ImportError):  # uvloop (from uvicorn[standard]) roughly halves the loop's cost
        import uvloop

        uvloop.install()
    asyncio.run(_run(settings))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import migrate

    settings = Settings()
    url = args.database_url or settings.database_url
    migrate(url)
    print(f"database at {_db_location(url)} is at the newest schema")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler",
        description="Harper pod controller: leases voice GPU pods on RunPod with a warm stopped standby.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the controller daemon (local mode when HARPER_RUNPOD_API_KEY is unset)")
    run.add_argument("--host", help="listen address (HARPER_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, help="listen port (HARPER_PORT, default 8080)")
    run.add_argument("--database-url", help="SQLAlchemy async URL (HARPER_DATABASE_URL)")
    run.add_argument("--runner", choices=["process", "simulated"],
                     help="local mode only: real gpu_server processes or simulated pods (HARPER_LOCAL_RUNNER)")
    run.set_defaults(func=cmd_run)

    mig = sub.add_parser("migrate", help="bring the database to the newest schema and exit")
    mig.add_argument("--database-url", help="SQLAlchemy async URL (HARPER_DATABASE_URL)")
    mig.set_defaults(func=cmd_migrate)

    from . import costreport, demo
    from .simulate import cli as simulate

    demo.add_parser(sub)
    simulate.add_parser(sub)
    costreport.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)
