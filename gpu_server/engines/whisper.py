"""Whisper on faster-whisper/CTranslate2: one utterance in, its text out, sized for streaming.

faster-whisper's ``transcribe`` always pads the audio to a 30 s window, so even a 1 s partial costs a full
30 s encoder pass (~250 ms for tiny.en int8 on two cores, most of the budget). CTranslate2 accepts shorter
windows, and the encoder cost scales with the window, so this engine encodes the utterance plus padding,
rounded up to 5 s and at least ``stt_min_window_s`` (10 s by default; a 1 s partial then costs ~50 ms).
Shorter windows make Whisper repeat itself, so any decode that reads like a loop (see
``transcript.is_runaway``) is redone with the full 30 s window.

Decoding is single-segment, without timestamps and without conditioning on earlier text: a request is at
most ~25 s (the stream commits long utterances piece by piece), and old text is what feeds hallucination
loops (given the previous stretch's text as its prompt, tiny.en repeated that text in ~1 of 5 stretches:
streaming WER 9% against 0.9% without).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpu_server.engines import DecodeRequest, EngineError, Transcription
from gpu_server.engines.whisper_models import locate
from gpu_server.settings import Settings
from gpu_server.transcript import is_runaway

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FULL_WINDOW_S = 30.0
_WINDOW_STEP_S = 5.0
# Room after the speech: Whisper ends an utterance when it sees (padded) silence after it.
_MIN_PADDING_S = 1.0
# Generous ceiling on tokens per second of audio (fast speech is ~4-5 with punctuation): caps loops.
_TOKENS_PER_S = 8
_TOKENS_SLACK = 16


class WhisperTranscriber:
    sample_rate = SAMPLE_RATE

    def __init__(self, model: Any, *, name: str, device: str, compute_type: str, min_window_s: float) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._model = model
        self._name = name
        self._device = device
        self._compute_type = compute_type
        self._min_window_s = min_window_s
        self._tokenizer_cls = Tokenizer
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._suppress = list(get_suppressed_tokens(self._tokenizer("en"), [-1]))
        self._max_length = model.max_length

    @classmethod
    def load(cls, settings: Settings, *, cuda: bool) -> WhisperTranscriber:
        from faster_whisper import WhisperModel

        source = locate(settings, cuda=cuda)
        device = "cuda" if cuda else "cpu"
        compute_type = settings.compute_type
        if compute_type == "auto":
            compute_type = "float16" if cuda else "int8"
        try:
            model = WhisperModel(
                source.model,
                device=device,
                compute_type=compute_type,
                cpu_threads=settings.threads_per_call(settings.stt_concurrency),
                num_workers=settings.stt_concurrency,
                # Weights are baked into the image or bundled; never fetch them at run time.
                local_files_only=True,
                files=source.files,
            )
        except Exception as e:
            raise EngineError(f"cannot load Whisper model {source.label!r} on {device} ({compute_type}): {e}") from e
        engine = cls(
            model, name=source.label, device=device, compute_type=compute_type, min_window_s=settings.stt_min_window_s
        )
        # The first CTranslate2 call allocates its buffers; pay that here, not on a user's first words.
        engine.transcribe(np.zeros(SAMPLE_RATE, np.float32), language="en", beam_size=1)
        return engine

    def info(self) -> dict[str, Any]:
        return {
            "engine": "faster-whisper",
            "model": self._name,
            "device": self._device,
            "compute_type": self._compute_type,
            "multilingual": self._model.model.is_multilingual,
            "sample_rate": self.sample_rate,
        }

    def supports_language(self, language: str) -> bool:
        if not self._model.model.is_multilingual:
            return language == "en"
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        return language in _LANGUAGE_CODES

    def _tokenizer(self, language: str) -> Any:
        with self._lock:
            tok = self._tokenizers.get(language)
            if tok is None:
                multilingual = self._model.model.is_multilingual
                tok = self._tokenizer_cls(
                    self._model.hf_tokenizer,
                    multilingual,
                    task="transcribe",
                    language=language if multilingual else "en",
                )
                self._tokenizers[language] = tok
        return tok

    def _window_s(self, audio_s: float) -> float:
        window = math.ceil((audio_s + _MIN_PADDING_S) / _WINDOW_STEP_S) * _WINDOW_STEP_S
        return min(FULL_WINDOW_S, max(self._min_window_s, window))

    def transcribe(
        self, audio: np.ndarray, *, language: str, beam_size: int, prefix: str | None = None
    ) -> Transcription:
        return self.transcribe_batch([DecodeRequest(audio, language, beam_size, prefix)])[0]

    def transcribe_batch(self, requests: Sequence[DecodeRequest]) -> list[Transcription]:
        """One encoder pass and one generate call per window size in the batch (much cheaper per item than
        one call each: a decoder step costs about the same for one sequence or a few). Requests are not
        padded to a longer one's window: the encoder's cost grows with it, so one long utterance in a batch
        of short ones would make all of them as slow as it."""
        if len({r.beam_size for r in requests}) > 1:
            raise ValueError("a batch shares one beam size")
        audio = [np.asarray(r.audio, dtype=np.float32)[: int(FULL_WINDOW_S * SAMPLE_RATE)] for r in requests]
        groups: dict[float, list[int]] = {}
        for i, samples in enumerate(audio):
            groups.setdefault(self._window_s(len(samples) / SAMPLE_RATE), []).append(i)
        results: list[Transcription] = [Transcription("", 0.0, 1.0)] * len(requests)
        for window_s, members in groups.items():
            decoded = self._decode_window([audio[i] for i in members], [requests[i] for i in members], window_s)
            for i, result in zip(members, decoded, strict=True):
                results[i] = result
        return results

    def _decode_window(
        self, audio: list[np.ndarray], requests: Sequence[DecodeRequest], window_s: float
    ) -> list[Transcription]:
        results = self._decode(audio, requests, window_s)
        runaway = [
            i for i, (a, r) in enumerate(zip(audio, results, strict=True))
            if window_s < FULL_WINDOW_S and is_runaway(r.text, len(a) / SAMPLE_RATE)
        ]
        if runaway:
            log.debug("%d decode(s) with a %.0f s window ran away; redoing with 30 s", len(runaway), window_s)
            redone = self._decode([audio[i] for i in runaway], [requests[i] for i in runaway], FULL_WINDOW_S)
            for i, result in zip(runaway, redone, strict=True):
                results[i] = result
        return results

    def _decode(
        self, audio: list[np.ndarray], requests: Sequence[DecodeRequest], window_s: float
    ) -> list[Transcription]:
        import ctranslate2

        frames = int(window_s * 100)  # 10 ms hop
        # Zero in the normalised log-mel space is exactly what faster-whisper pads its 30 s windows with.
        batch = np.zeros((len(audio), self._model.feature_extractor.mel_filters.shape[0], frames), np.float32)
        prompts, max_length = [], 0
        for i, (samples, request) in enumerate(zip(audio, requests, strict=True)):
            features = self._model.feature_extractor(samples)
            used = min(frames, features.shape[1])
            batch[i, :, :used] = features[:, :used]
            tok = self._tokenizer(request.language)
            prompt = [*tok.sot_sequence, tok.no_timestamps]
            if request.prefix:
                prompt += tok.encode(" " + request.prefix.strip())
            prompts.append(prompt)
            max_length = max(max_length, len(prompt) + int(len(samples) / SAMPLE_RATE * _TOKENS_PER_S) + _TOKENS_SLACK)
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(batch))
        generated = self._model.model.generate(
            encoded,
            prompts,
            beam_size=requests[0].beam_size,
            max_length=min(self._max_length, max_length),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )
        out = []
        for request, result in zip(requests, generated, strict=True):
            tok = self._tokenizer(request.language)
            tokens = [t for t in result.sequences_ids[0] if t < tok.eot]
            # CTranslate2 scores are length-normalised log-probabilities; recover faster-whisper's avg_logprob.
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            out.append(
                Transcription(
                    text=tok.decode(tokens).strip(),
                    avg_logprob=float(avg_logprob),
                    no_speech_prob=float(result.no_speech_prob),
                )
            )
        return out
