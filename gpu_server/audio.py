"""PCM sample conversions, streaming resampling (soxr) and the STT stream's rolling buffer, shared by the STT
input and the TTS output.

Server side only: `gpu_server.client` must not import this module (soxr is not a client dependency).
"""

from __future__ import annotations

import numpy as np
import soxr

PCM16_SCALE = 32768.0


def pcm16_to_float(data: bytes | np.ndarray) -> np.ndarray:
    samples = np.frombuffer(data, dtype="<i2") if isinstance(data, bytes | bytearray | memoryview) else data
    return samples.astype(np.float32) / PCM16_SCALE


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 32767 / PCM16_SCALE) * PCM16_SCALE).astype(np.int16)


class StreamResampler:
    """Resamples a mono float32 stream chunk by chunk; soxr keeps the filter state between chunks."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")

    def push(self, audio: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if self._stream is None:
            return audio
        return self._stream.resample_chunk(audio, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    if in_rate == out_rate:
        return np.asarray(audio, dtype=np.float32)
    return soxr.resample(np.asarray(audio, dtype=np.float32), in_rate, out_rate).astype(np.float32)


class AudioBuffer:
    """The most recent audio of a stream, from ``start`` (a sample index on the stream clock) to ``end``."""

    def __init__(self, capacity_samples: int) -> None:
        self._data = np.zeros(capacity_samples, np.float32)
        self.start = 0
        self.end = 0

    def append(self, audio: np.ndarray) -> None:
        size = self.end - self.start
        if size + len(audio) > len(self._data):  # callers trim first; growing is the safe fallback
            self._data = np.concatenate([self._data[:size], np.zeros(size + len(audio), np.float32)])
        self._data[size : size + len(audio)] = audio
        self.end += len(audio)

    def trim_before(self, sample: int) -> None:
        cut = min(max(sample, self.start), self.end) - self.start
        if cut:
            size = self.end - self.start - cut
            self._data[:size] = self._data[cut : cut + size]
            self.start += cut

    def slice(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.start), min(end, self.end)
        return self._data[start - self.start : end - self.start].copy()
