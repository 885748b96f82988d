"""Voice activity: Silero VAD run incrementally, and the endpointer that turns its probabilities into
speech start / end-of-utterance events for `stt.SttStream`.

Silero (the ONNX model that ships inside faster-whisper) scores 512-sample windows at 16 kHz, each with
the previous 64 samples as context and an LSTM state carried from window to window. faster-whisper only
runs it over whole files; ``VadStream`` keeps the context and state per connection, so each 32 ms of
audio costs one ~0.1 ms model call however long the stream lives, and the scores are identical to the
whole-file run.

``Endpointer`` is pure (probabilities in, events out) and uses Silero's own hysteresis: a window at or
above ``threshold`` is speech, below ``neg_threshold`` is silence, anything between keeps the state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)
_CONTEXT = 64


class SileroVad:
    """The shared Silero model; thread-safe (ONNX Runtime sessions are), stateless between calls."""

    def __init__(self) -> None:
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        opts = onnxruntime.SessionOptions()
        # One window is tiny: threading it costs more than it saves and steals cores from Whisper.
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(
            os.path.join(get_assets_path(), "silero_vad_v6.onnx"),
            providers=["CPUExecutionProvider"],
            sess_options=opts,
        )

    def stream(self) -> VadStream:
        return VadStream(self)

    def run(self, windows: np.ndarray, state: tuple[np.ndarray, np.ndarray]):
        # windows: (n, 576), consecutive; the model carries its LSTM state across the n rows.
        h, c = state
        probs, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1), (h, c)


class VadStream:
    """Per-connection Silero state: feed any number of 16 kHz samples, get one probability per window."""

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._context = np.zeros(_CONTEXT, np.float32)
        self._leftover = np.zeros(0, np.float32)

    def push(self, audio: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._leftover, audio]) if len(self._leftover) else audio
        whole = len(audio) // WINDOW * WINDOW
        self._leftover = audio[whole:].copy()
        if not whole:
            return np.zeros(0, np.float32)
        windows = audio[:whole].reshape(-1, WINDOW)
        contexts = np.concatenate([self._context[None], windows[:-1, -_CONTEXT:]])
        self._context = windows[-1, -_CONTEXT:].copy()
        probs, self._state = self._model.run(np.concatenate([contexts, windows], axis=1), self._state)
        return probs


@dataclass(frozen=True, slots=True)
class SpeechStart:
    sample: int  # first sample of the first speech window


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    sample: int  # end of the last speech window


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    threshold: float = 0.5
    endpoint_ms: int = 500
    # Consecutive speech windows needed to open an utterance: one loud click is not speech.
    start_windows: int = 2

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01)

    @property
    def endpoint_windows(self) -> int:
        return max(1, round(self.endpoint_ms * SAMPLE_RATE / 1000 / WINDOW))


class Endpointer:
    """Speech start and end of utterance from one VAD probability per window; pure."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.in_speech = False
        self.samples = 0  # end of the last window seen, on the 16 kHz stream clock
        self.last_speech_end = 0
        self.speech_windows = 0  # speech windows in the current utterance
        # Silent runs (start, end) inside the current utterance, oldest first: where it may be cut.
        self.pauses: list[tuple[int, int]] = []
        self._run = 0

    @property
    def trailing_silence_ms(self) -> float:
        if not self.in_speech:
            return 0.0
        return (self.samples - self.last_speech_end) * 1000 / SAMPLE_RATE

    def push(self, prob: float) -> SpeechStart | SpeechEnd | None:
        cfg = self.config
        start = self.samples
        self.samples += WINDOW
        if not self.in_speech:
            self._run = self._run + 1 if prob >= cfg.threshold else 0
            if self._run >= cfg.start_windows:
                self.in_speech = True
                self.speech_windows = self._run
                self.last_speech_end = self.samples
                self.pauses = []
                self._run = 0
                return SpeechStart(self.samples - cfg.start_windows * WINDOW)
            return None
        if prob >= cfg.threshold:
            self.last_speech_end = self.samples
            self.speech_windows += 1
        elif prob < cfg.neg_threshold:
            if self.pauses and self.pauses[-1][1] == start:
                self.pauses[-1] = (self.pauses[-1][0], self.samples)
            else:
                self.pauses.append((start, self.samples))
        elif self.last_speech_end == start:
            # Between the thresholds right after speech: still speech (Silero's hysteresis).
            self.last_speech_end = self.samples
        if (self.samples - self.last_speech_end) // WINDOW >= cfg.endpoint_windows:
            self.in_speech = False
            self._run = 0
            return SpeechEnd(self.last_speech_end)
        return None

    def restart_utterance(self, sample: int) -> None:
        """After a long utterance is split at ``sample``: keep speaking, count the new part from zero."""
        self.speech_windows = 0
        self.forget_pauses_before(sample)

    def forget_pauses_before(self, sample: int) -> None:
        """Pauses before ``sample`` can no longer be cut at (their audio is decoded and committed)."""
        self.pauses = [(max(a, sample), b) for a, b in self.pauses if b > sample]
