"""Spanish end to end: Debian's espeak-ng speaks Spanish sentences, they stream into /ws/stt with
``language: "es"`` and the multilingual Whisper (``GPU_SERVER_STT_MODEL=base``), and the WER is printed.

espeak-ng is a formant synthesiser: robotic, but its Spanish is intelligible, and it is a voice Whisper has
not been tuned on, so the figure is a pessimistic one. `tests/gpu_server/test_spanish.py` runs the same corpus.

Usage: .venv/bin/python bench/spanish.py            (starts its own server on the bundled CPU models)
From another bench: ``await spanish_wer(ws_url, token)`` against a server that loaded a multilingual model.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_server import client
from gpu_server.auth import issue_token
from gpu_server.transcript import word_error_rate
from runpod_emulator.runner import allocate_port

SENTENCES = [
    "Mañana por la mañana quiero ir al mercado a comprar fruta.",
    "Por favor, apaga las luces de la cocina antes de dormir.",
    "¿Qué tiempo va a hacer el fin de semana en Madrid?",
    "Recuérdame llamar a mi hermana cuando llegue a casa.",
    "La reunión se ha cambiado al jueves por la tarde.",
    "Me gustaría escuchar música tranquila mientras preparo la cena.",
]
ESPEAK_VOICE = "es-419"  # Latin American Spanish: Whisper base hears it best of espeak-ng's two
LEAD_S, TRAIL_S = 0.5, 1.0
SECRET = "bench-secret"


class NoEspeak(RuntimeError):
    """espeak-ng is not installed (Debian: apt-get install espeak-ng)."""


def espeak(text: str, voice: str = ESPEAK_VOICE) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng: int16 mono and its sample rate (22050)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise NoEspeak("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([binary, "-v", voice, "-s", "160", "-w", str(path), text], check=True, capture_output=True,
                       timeout=60)
        with wave.open(str(path)) as f:
            rate = f.getframerate()
            pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2").copy()
    return pcm, rate


def padded(pcm: np.ndarray, rate: int) -> np.ndarray:
    return np.concatenate([np.zeros(int(LEAD_S * rate), np.int16), pcm, np.zeros(int(TRAIL_S * rate), np.int16)])


async def transcribe_spanish(url: str, token: str, sentences: list[str] = SENTENCES) -> list[str]:
    """Each sentence on its own /ws/stt stream with ``language: "es"``; the finals of each, joined."""
    texts = []
    for sentence in sentences:
        pcm, rate = espeak(sentence)
        result = await client.transcribe(url, token, padded(pcm, rate), rate, language="es", realtime=False)
        if result.errors:
            raise RuntimeError(f"/ws/stt refused Spanish: {result.errors[0].message}")
        texts.append(result.text)
    return texts


async def spanish_wer(url: str, token: str) -> tuple[float, list[str]]:
    texts = await transcribe_spanish(url, token)
    return word_error_rate(SENTENCES, texts), texts


def _serve() -> tuple[subprocess.Popen, int]:
    port = allocate_port("127.0.0.1")
    env = {**os.environ, "GPU_SERVER_SECRET": SECRET, "GPU_SERVER_HOST": "127.0.0.1",
           "GPU_SERVER_LOG_LEVEL": "warning", "GPU_SERVER_STT_MODEL": os.environ.get("GPU_SERVER_STT_MODEL", "base")}
    process = subprocess.Popen([sys.executable, "-m", "gpu_server", "serve", "--port", str(port)], env=env,
                               cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("gpu_server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("gpu_server did not become healthy in 180 s")


async def main() -> None:
    process, port = _serve()
    try:
        token = issue_token(SECRET, "bench", "local", time.time() + 3600)
        wer, texts = await spanish_wer(f"ws://127.0.0.1:{port}/ws/stt", token)
    finally:
        process.terminate()
        process.wait(timeout=30)
    for said, heard in zip(SENTENCES, texts, strict=True):
        print(f"  said:  {said}\n  heard: {heard}")
    print(f"Spanish STT WER (espeak-ng voice, {len(SENTENCES)} sentences)   {wer * 100:.1f}%")


if __name__ == "__main__":
    asyncio.run(main())
