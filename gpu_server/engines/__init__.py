"""Speech engines behind two Protocols, and the one function that loads them for the app's lifespan.

- ``Transcriber``: Whisper on faster-whisper/CTranslate2 (`engines.whisper`), CPU or CUDA.
- ``Synthesizer``: Piper (`engines.piper`, CPU, bundled voice) or Chatterbox (`engines.chatterbox`, CUDA).

Engine methods block (they run the models); callers run them in a worker thread behind a `ModelGate`.
Engines hold no per-connection state, so one instance serves every connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gpu_server.settings import Settings
from gpu_server.vad import SileroVad

log = logging.getLogger(__name__)


class EngineError(Exception):
    """An engine could not load or run; the message says which model and what to change."""


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    audio: np.ndarray  # float32 mono at the transcriber's sample_rate
    language: str
    beam_size: int
    prefix: str | None = None  # words the decoder is forced to start with


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    avg_logprob: float
    no_speech_prob: float


class Transcriber(Protocol):
    sample_rate: int  # 16000 for Whisper

    def info(self) -> dict[str, Any]: ...

    def supports_language(self, language: str) -> bool: ...

    def transcribe_batch(self, requests: Sequence[DecodeRequest]) -> list[Transcription]:
        """Decode several utterances in one model call; all requests share one ``beam_size``."""
        ...


class Synthesizer(Protocol):
    sample_rate: int  # of the chunks ``synthesize`` yields
    # Whether the reply's first piece should be a short clause (`sentences.split_for_speech`): worth it when
    # synthesis time grows with the text (Piper), not when each piece costs a separate start (Chatterbox).
    short_first_piece: bool

    def info(self) -> dict[str, Any]: ...

    def supports_language(self, language: str) -> bool: ...

    def voice_ready(self, voice_id: str | None, language: str = "en") -> bool:
        """Whether ``prepare_voice`` has nothing to do (cheap; no model call): then callers skip it."""
        ...

    def prepare_voice(self, voice_id: str | None, language: str = "en") -> None:
        """Make ``voice_id`` ready (cached) for ``language``; raise EngineError for an unknown voice."""
        ...

    def synthesize(
        self, text: str, voice_id: str | None, max_audio_s: float, language: str = "en"
    ) -> Iterator[np.ndarray]:
        """Float32 mono chunks of ``text`` spoken, as soon as each is ready; at most ``max_audio_s``."""
        ...


@dataclass
class Engines:
    stt: Transcriber
    tts: Synthesizer
    vad: SileroVad
    load_seconds: dict[str, float] = field(default_factory=dict)


def use_cuda(settings: Settings) -> bool:
    if settings.device != "auto":
        return settings.device == "cuda"
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # no CUDA runtime at all: a CPU box
        return False


def _timed(name: str, seconds: dict[str, float], load: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    result = load()
    seconds[name] = time.perf_counter() - t0
    log.info("loaded %s in %.2f s", name, seconds[name])
    return result


def load_engines(settings: Settings) -> Engines:
    """Load, warm up and return every model this process serves with (blocking: call it in a thread)."""
    from gpu_server.engines.whisper import WhisperTranscriber

    cuda = use_cuda(settings)
    seconds: dict[str, float] = {}
    stt = _timed("whisper", seconds, lambda: WhisperTranscriber.load(settings, cuda=cuda))
    tts_engine = settings.tts_engine
    if tts_engine == "auto":
        tts_engine = "chatterbox" if cuda else "piper"
    if tts_engine == "chatterbox":
        from gpu_server.engines.chatterbox import ChatterboxSynthesizer

        tts: Synthesizer = _timed("chatterbox", seconds, lambda: ChatterboxSynthesizer.load(settings, cuda=cuda))
    else:
        from gpu_server.engines.piper import PiperSynthesizer

        tts = _timed("piper", seconds, lambda: PiperSynthesizer.load(settings))
    vad = _timed("silero_vad", seconds, SileroVad)
    return Engines(stt=stt, tts=tts, vad=vad, load_seconds=seconds)
