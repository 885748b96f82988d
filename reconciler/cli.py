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
import socket
import sys
import time
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from .settings import Settings, setting_error

log = logging.getLogger("reconciler")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosqlite logs every statement with its parameters at DEBUG: pod secrets and the stored first response of a
    # warm lease (its token) would reach the log whenever HARPER_LOG_LEVEL=DEBUG.
    for noisy in ("apscheduler", "httpx", "httpcore", "uvicorn.access", "alembic", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _db_location(url: str) -> str:
    if url.startswith("sqlite") and ":///" in url:
        return str(Path(url.split(":///", 1)[1]).resolve())
    return url.split("@")[-1]  # never print credentials of a server URL


class StartupError(Exception):
    """Something the operator must fix before the controller can start; ``str(e)`` is the one line to print."""


def _bind(host: str, port: int) -> socket.socket:
    """The API's socket, bound before anything else starts: a busy port or a bad host fails here, with nothing
    started, rather than after a reconcile pass has acted on RunPod."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise StartupError(f"cannot listen on {host}:{port}: HARPER_HOST is not an address here ({e})") from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e} (HARPER_HOST/HARPER_PORT)") from e
    return sock


def _check_database(url: str) -> None:
    """Migrate before anything starts, so an unusable database is one line, not a trace from inside uvicorn."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store import StoreError, migrate

    try:
        migrate(url)
    except (SQLAlchemyError, StoreError, OSError) as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        hint = " (is its directory there and writable?)" if url.startswith("sqlite") else ""
        raise StartupError(f"cannot open the database {_db_location(url)}: {reason}{hint}") from e
    except ModuleNotFoundError as e:
        raise StartupError(f"cannot open the database {_db_location(url)}: its driver {e.name!r} is not installed "
                           "(PostgreSQL: pip install 'harper-voice-pods[postgres]')") from e


async def _check_lock(url: str) -> None:
    """Refuse, in one line, to start beside a live controller on the same database (the app claims the lock
    itself a moment later; this only keeps the refusal out of a trace from inside uvicorn)."""
    from . import claim
    from .store import Store

    store = Store(url)
    try:
        holder = await claim.read(store.engine)
    finally:
        await store.engine.dispose()
        await store.reader.dispose()
    now = time.time()
    if holder is not None and not claim.may_take_over(holder, now, claim.holder_gone(holder)):
        raise StartupError(claim.refusal(holder, now))


async def _run(settings: Settings) -> None:
    from .app import create_app

    sock = _bind(settings.host, settings.port)
    emulator = None
    try:
        await asyncio.to_thread(_check_database, settings.database_url)
        await _check_lock(settings.database_url)
        updates: dict[str, object] = {}
        generated = []
        for name in ("api_token", "admin_token"):
            if not getattr(settings, name).get_secret_value():
                updates[name] = secrets.token_urlsafe(24)
                generated.append(name)
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
            from .local_pods import publish_emulator  # demo-local watches the pods' processes through it

            emulator_file = publish_emulator(state_dir, emulator.url, key)
        settings = settings.model_copy(update={k: _secret(k, v) for k, v in updates.items()})
        app = create_app(settings)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        server = _Server(config, app)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.request_exit)
        host, port = sock.getsockname()[:2]
        url = settings.public_url or f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        print(f"harper controller: API {url}  (OpenAPI {url}/docs, metrics {url}/metrics)", flush=True)
        print(f"  database: {_db_location(settings.database_url)}", flush=True)
        print(f"  RunPod: {settings.runpod_api} API", flush=True)
        if emulator is not None:
            print(f"  local mode: RunPod emulator at {emulator.url} ({settings.local_runner} pods; "
                  f"logs in {Path(settings.local_state_dir).resolve() / 'pods'})", flush=True)
        for name in generated:
            env = "HARPER_" + name.upper()
            print(f"  {env}={getattr(settings, name).get_secret_value()}  (generated; set {env} to keep it)",
                  flush=True)
        await server.serve(sockets=[sock])  # the lifespan starts reconciling only now
        if not server.started:
            raise StartupError("the controller failed to start: see the log line above")
    finally:
        if emulator is not None:
            await emulator.stop()
            emulator_file.unlink(missing_ok=True)
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling. The first SIGINT/SIGTERM begins a graceful shutdown that takes
    about a second: no pass starts any more, long polls answer at once, in-flight requests get a moment. A
    second one exits at once (safe: every RunPod call is recorded before it is made)."""

    def __init__(self, config: uvicorn.Config, app: object) -> None:
        super().__init__(config)
        self._app = app

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def request_exit(self) -> None:
        if self.should_exit:
            print("reconciler: interrupted again: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        log.info("shutting down")
        self.should_exit = True
        controller = getattr(getattr(self._app, "state", None), "controller", None)
        if controller is not None:
            asyncio.get_running_loop().create_task(controller.begin_shutdown(), name="controller-shutdown")


def _secret(name: str, value: object) -> object:
    from pydantic import SecretStr

    return SecretStr(value) if name in ("api_token", "admin_token", "runpod_api_key") else value


def cmd_run(args: argparse.Namespace) -> int:
    # Flags win over the environment: put them there, then read one Settings object.
    for flag, env in (("host", "HARPER_HOST"), ("port", "HARPER_PORT"), ("database_url", "HARPER_DATABASE_URL"),
                      ("runner", "HARPER_LOCAL_RUNNER")):
        if getattr(args, flag):
            os.environ[env] = str(getattr(args, flag))
    settings = load_settings()
    if settings is None:
        return 2
    _setup_logging(settings.log_level)
    with contextlib.suppress(ImportError):  # uvloop (from uvicorn[standard]) roughly halves the loop's cost
        import uvloop

        uvloop.install()
    try:
        asyncio.run(_run(settings))
    except StartupError as e:
        print(f"reconciler: {e}", file=sys.stderr)
        return 2
    # Everything is closed. A GraphQL call still hanging in one of the SDK's worker threads would hold the
    # interpreter's exit until it times out (up to 30 s): nothing is left to wait for, so leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_settings() -> Settings | None:
    """The settings, checked whole (policy and tuning included) before anything starts; None after printing
    one line that names the bad setting."""
    try:
        settings = Settings()
        settings.default_policy(), settings.tuning()
    except ValidationError as e:
        print(f"reconciler: {setting_error(e)}", file=sys.stderr)
        return None
    return settings


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings is None:
        return 2
    url = args.database_url or settings.database_url
    try:
        _check_database(url)
    except StartupError as e:
        print(f"reconciler: {e}", file=sys.stderr)
        return 2
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
