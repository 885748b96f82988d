"""``EmulatorServer``: run the emulator on a loopback port inside another program or test suite.

    async with EmulatorServer(EmulatorSettings(port=0, boot_seconds=0)) as server:
        os.environ["RUNPOD_API_BASE_URL"] = server.url      # the runpod SDK appends /graphql
        ...

    with EmulatorServer(settings).start_in_thread() as server:  # for synchronous code
        ...

Uvicorn runs in the current event loop (``start``/``stop``) or on its own loop in a daemon thread
(``start_in_thread``/``stop_in_thread``). Port 0 binds a free port; ``.port`` and ``.url`` report it once
started. The embedded server installs no signal handlers and leaves logging configuration alone: it is a
guest in its host program. ``.emulator`` is the live ``Emulator`` (same event loop only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from types import TracebackType

import uvicorn

from runpod_emulator.app import create_app
from runpod_emulator.clock import Clock
from runpod_emulator.emulator import Emulator
from runpod_emulator.settings import EmulatorSettings

log = logging.getLogger("runpod_emulator")


class GuestServer(uvicorn.Server):
    """uvicorn inside a program that owns the signals (tests, the controller's local mode)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield  # signals belong to the host program


class EmulatorServer:
    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        clock: Clock | None = None,
        *,
        log_level: str = "warning",
    ) -> None:
        self.settings = settings or EmulatorSettings(port=0)
        self.app = create_app(self.settings, clock)
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_level=log_level,
            log_config=None,
            access_log=False,
            ws="websockets-sansio",  # the pod proxy relays WebSockets
            lifespan="on",
            # A request held by the ``timeout`` fault must not hold up shutdown.
            timeout_graceful_shutdown=1,
        )
        self._server = GuestServer(config)
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self.port: int = 0

    @property
    def url(self) -> str:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"http://{host}:{self.port}"

    @property
    def emulator(self) -> Emulator:
        return self.app.state.emulator

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._server.serve(sockets=[sock])
        except SystemExit as e:  # uvicorn exits when its lifespan fails; a guest must not end its host
            raise RuntimeError(f"uvicorn stopped with exit code {e.code}") from e
        finally:
            sock.close()

    async def start(self) -> None:
        # Binding here, before uvicorn runs the lifespan, turns a busy port into a plain error with nothing
        # started yet, and gives the real port at once when 0 was asked for.
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
        # request waits ~40 ms for a delayed ACK (socket.create_server leaves proto at 0).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as e:
            sock.close()
            raise RuntimeError(f"the emulator cannot listen on {host}:{port}: {e}") from e
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._serve(sock), name="runpod-emulator-uvicorn")
        while not self._server.started:
            if self._task.done():
                error = self._task.exception() if not self._task.cancelled() else None
                raise RuntimeError(f"the emulator failed to start on {host}:{self.port}") from error
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Thread mode ----------------------------------------------------------------------------------------

    def start_in_thread(self, timeout: float = 30.0) -> EmulatorServer:
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await self.start()
            except BaseException as e:
                failure.append(e)
                raise
            finally:
                started.set()
            assert self._task is not None
            await self._task

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException:
                if not failure:  # a failed start is raised to the caller instead
                    log.exception("the emulator's server thread died")

        self._thread = threading.Thread(target=run, name="runpod-emulator", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or failure:
            self._server.should_exit = True
            self._thread.join(timeout)
            self._thread = None
            if failure:
                raise failure[0]
            raise RuntimeError(f"the emulator did not start within {timeout}s")
        return self

    def stop_in_thread(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True  # uvicorn's main loop polls this flag
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self if self._thread is not None else self.start_in_thread()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_in_thread()
