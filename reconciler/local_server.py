"""The local CPU gpu_server of the companion library: the bridge while a lease is pending, and the fallback
when no pod can be had.

One per ``VoicePods``, shared by its sessions. ``VoicePods.start()`` starts it in the background at start-up
(so a bridged session finds it warm); ``ensure()`` starts it if it is not running (the fallback's on-demand
path) and waits until ``/health`` says its models are loaded. It signs its own lease tokens with a secret
made here, so nothing about it involves the controller. Its output goes to an anonymous temporary file
(gone when it stops) whose tail is in the error if it dies at start; it logs at ``warning`` unless
``GPU_SERVER_LOG_LEVEL`` says otherwise, so a long-lived companion does not fill that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import tempfile
import time
import uuid

import httpx

from gpu_server.auth import issue_token
from runpod_emulator.process import die_with_parent

from .bridge import Route, Server

TOKEN_TTL_S = 24 * 3600


class LocalServerFailed(RuntimeError):
    """The local gpu_server exited or never became healthy; the message carries the tail of its output."""


class LocalGpuServer:
    def __init__(self, *, startup_timeout_s: float = 180.0) -> None:
        self.secret = secrets.token_hex(24)
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._output = None
        self._lock = asyncio.Lock()
        self._timeout = startup_timeout_s
        self.healthy_after_s: float | None = None  # how long the last start took

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def ensure(self) -> None:
        async with self._lock:
            if self.running:
                return
            started = time.monotonic()
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            env = dict(os.environ) | {"GPU_SERVER_SECRET": self.secret, "GPU_SERVER_HOST": "127.0.0.1",
                                      "GPU_SERVER_PORT": str(self.port)}
            env.setdefault("GPU_SERVER_LOG_LEVEL", "warning")
            for name in ("RUNPOD_POD_ID", "HARPER_POD_ID", "GPU_SERVER_POD_ID"):  # its tokens name no pod
                env.pop(name, None)
            self._output = tempfile.TemporaryFile()
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gpu_server", "serve", env=env,
                stdout=self._output, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent(),  # it must not outlive the companion
            )
            deadline = time.monotonic() + self._timeout
            async with httpx.AsyncClient(timeout=2.0) as http:
                while time.monotonic() < deadline:
                    if self._proc.returncode is not None:
                        tail = self._tail()
                        code = self._proc.returncode
                        await self._stop()
                        raise LocalServerFailed(f"local gpu_server exited with {code}:\n{tail}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"http://127.0.0.1:{self.port}/health")).status_code == 200:
                            self.healthy_after_s = time.monotonic() - started
                            return
                    await asyncio.sleep(0.1)
            tail = self._tail()
            await self._stop()
            raise LocalServerFailed(f"local gpu_server did not become healthy in {self._timeout:.0f}s:\n{tail}")

    def route(self, server: Server = Server.BRIDGE) -> Route:
        """Endpoints and a fresh token of its own for one session."""
        token = issue_token(self.secret, "local-" + uuid.uuid4().hex[:12], "local", time.time() + TOKEN_TTL_S)
        base = f"ws://127.0.0.1:{self.port}"
        return Route(server, {"stt": f"{base}/ws/stt", "tts": f"{base}/ws/tts"}, lambda: token, "local")

    def _tail(self, lines: int = 15) -> str:
        if self._output is None:
            return ""
        self._output.seek(0)
        text = self._output.read()[-16384:].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        output, self._output = self._output, None
        try:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        finally:
            if output is not None:
                output.close()
