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
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_server import client
from gpu_server.transcript import word_error_rate

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
# The multilingual Whisper (English-only tiny.en is the CPU default); GPU_SERVER_STT_MODEL picks another.
SERVER_SETTINGS = {"GPU_SERVER_STT_MODEL": os.environ.get("GPU_SERVER_STT_MODEL", "base")}


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


async def main() -> None:
    import speech  # the server bench/speech.py starts, on the multilingual model

    server = speech.start_server(SERVER_SETTINGS)
    try:
        wer, texts = await spanish_wer(server.ws("/ws/stt"), speech.token())
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
    for said, heard in zip(SENTENCES, texts, strict=True):
        print(f"  said:  {said}\n  heard: {heard}")
    print(f"Spanish STT WER (espeak-ng voice, {len(SENTENCES)} sentences)   {wer * 100:.1f}%")


if __name__ == "__main__":
    asyncio.run(main())
