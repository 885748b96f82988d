"""Fixtures for the gpu_server tests: the real bundled models, loaded once per session, and real uvicorn
servers on loopback ports, each in its own thread (its own event loop) so tests talk to them over real
WebSockets exactly as the controller's demo and a companion server do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import uvicorn

from gpu_server import client
from gpu_server.app import create_app, uvicorn_ws_options
from gpu_server.audio import resample
from gpu_server.auth import issue_token
from gpu_server.engines import Engines, load_engines
from gpu_server.settings import Settings

SECRET = "test-pod-secret"

# Sentences Piper speaks and Whisper must get back; no numbers, so WER needs no number normalisation.
SENTENCES = [
    "Could you tell me what the weather will be like tomorrow in Boston?",
    "Please remind me to call my sister when I get home from work.",
    "Turn off the lights in the kitchen and lock the front door.",
    "The meeting has been moved to Thursday afternoon because the manager is away.",
]


def make_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"secret": SECRET, "pod_id": None, "cpu_threads": 2}
    return Settings(**{**base, **overrides})


def token(
    *,
    ttl_s: float = 600,
    pod: str = "local",
    secret: str = SECRET,
    lease: str = "lease-test",
    slot: int | None = None,
    generation: int = 0,
) -> str:
    return issue_token(secret, lease, pod, expires_at=time.time() + ttl_s, slot=slot, generation=generation)


@dataclass
class RunningServer:
    port: int
    server: uvicorn.Server

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, path: str, tok: str | None = None) -> str:
        url = f"ws://127.0.0.1:{self.port}{path}"
        return f"{url}?token={tok}" if tok else url

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if httpx.get(f"{self.http}/health").status_code == 200:
                return
            time.sleep(0.05)
        raise TimeoutError("server did not become healthy")


@contextlib.contextmanager
def serve(settings: Settings, load: Callable[[Settings], Engines]) -> Iterator[RunningServer]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(settings, load=load), log_level="warning", lifespan="on", **uvicorn_ws_options(settings)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield RunningServer(sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def engines() -> Engines:
    return load_engines(make_settings())


@pytest.fixture(scope="session")
def server(engines: Engines) -> Iterator[RunningServer]:
    with serve(make_settings(), lambda _settings: engines) as running:
        running.wait_healthy()
        yield running


@pytest.fixture(scope="session")
def start_server(engines: Engines) -> Callable[..., contextlib.AbstractContextManager[RunningServer]]:
    """Another server with different settings, sharing the session's models."""

    @contextlib.contextmanager
    def start(**overrides: object) -> Iterator[RunningServer]:
        with serve(make_settings(**overrides), lambda _settings: engines) as running:
            running.wait_healthy()
            yield running

    return start


@dataclass(frozen=True)
class SpokenSet:
    speeches: list[client.Speech]
    pcm16k: list[np.ndarray]  # each utterance as int16 at 16 kHz, ready for /ws/stt


@pytest.fixture(scope="session")
def spoken(server: RunningServer) -> SpokenSet:
    """SENTENCES spoken through /ws/tts once per session (frames kept for the frame checks)."""

    async def speak_all() -> list[client.Speech]:
        async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
            return [await tts.speak(text) for text in SENTENCES]

    speeches = asyncio.run(speak_all())
    pcm = [
        (np.clip(resample(s.pcm.astype(np.float32) / 32768, s.sample_rate, 16000), -1, 1) * 32767).astype(np.int16)
        for s in speeches
    ]
    return SpokenSet(speeches, pcm)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.int16)
