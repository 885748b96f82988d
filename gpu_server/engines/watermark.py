"""Perth's implicit watermark applied to a stream, continuously, instead of to each chunk alone.

Perth marks a whole signal: it resamples it to 32 kHz, takes an STFT (64 ms windows), adds a residual from a
convolutional encoder (about +-150 ms of receptive field) and resynthesises. Marking each streamed chunk on its
own puts STFT and resampler edges at every join: audible artefacts. `StreamWatermarker` marks a sliding window
instead: each call covers ``CONTEXT_S`` of already-marked input in front and keeps ``HOLD_S`` of new input
back, so every sample it returns was marked with context on both sides, as in a whole-utterance pass. The cost
is ``HOLD_S`` of latency (released at the end of the utterance) and re-marking ``2 * CONTEXT_S`` per chunk.

Pure numpy around ``mark(audio, sample_rate) -> audio`` (Perth's ``apply_watermark``), so it is tested on CPU
with the real Perth model and with plain functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

CONTEXT_S = 0.25
HOLD_S = 0.25

Mark = Callable[[np.ndarray, int], np.ndarray]


class StreamWatermarker:
    def __init__(self, mark: Mark, sample_rate: int) -> None:
        self._mark = mark
        self._rate = sample_rate
        self._context = int(CONTEXT_S * sample_rate)
        self._hold = int(HOLD_S * sample_rate)
        self._history = np.zeros(0, np.float32)  # input already marked and emitted (its last CONTEXT_S)
        self._pending = np.zeros(0, np.float32)  # input not emitted yet

    def push(self, chunk: np.ndarray, *, final: bool = False) -> np.ndarray:
        self._pending = np.concatenate([self._pending, np.asarray(chunk, np.float32)])
        ready = len(self._pending) if final else len(self._pending) - self._hold
        if ready <= 0 or not len(self._pending):
            return np.zeros(0, np.float32)
        window = np.concatenate([self._history, self._pending])
        marked = self._apply(window)
        start = len(self._history)
        out = marked[start : start + ready]
        emitted, self._pending = self._pending[:ready], self._pending[ready:]
        self._history = np.concatenate([self._history, emitted])[-self._context :]
        return out

    def flush(self) -> np.ndarray:
        return self.push(np.zeros(0, np.float32), final=True)

    def _apply(self, window: np.ndarray) -> np.ndarray:
        try:
            marked = np.asarray(self._mark(window, self._rate), dtype=np.float32)
        except Exception as e:  # a window too short for Perth's STFT: send it unmarked rather than drop it
            log.debug("watermark skipped on a %d-sample window: %s", len(window), e)
            return window
        if len(marked) < len(window):  # the resampler's rounding: never lose samples
            marked = np.concatenate([marked, window[len(marked) :]])
        return marked[: len(window)]
