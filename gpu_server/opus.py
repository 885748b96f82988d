"""Opus packets in and out: 20 ms packets for `/ws/tts`, raw packets (one per message) into `/ws/stt`.

Imports only numpy and opuslib (which loads the system libopus), so `gpu_server.client` can use it too.
"""

from __future__ import annotations

import numpy as np
import opuslib

from gpu_server.protocol import FRAME_MS

# The largest packet Opus allows is 120 ms; decoding into a buffer that size never truncates.
_MAX_PACKET_MS = 120


class OpusPacketizer:
    """Cuts a PCM stream into exactly-20 ms Opus packets; ``flush`` pads the last one with silence."""

    def __init__(self, sample_rate: int, frame_ms: int = FRAME_MS, bitrate: int = 32000) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._encoder = opuslib.Encoder(sample_rate, 1, opuslib.APPLICATION_AUDIO)
        self._encoder.bitrate = bitrate
        self._pending = np.zeros(0, np.int16)

    def push(self, pcm: np.ndarray) -> list[bytes]:
        """Takes int16 samples; returns every whole packet they complete."""
        pending = np.concatenate([self._pending, np.asarray(pcm, dtype=np.int16)])
        whole = len(pending) // self.frame_samples * self.frame_samples
        self._pending = pending[whole:]
        return [
            self._encoder.encode(pending[i : i + self.frame_samples].tobytes(), self.frame_samples)
            for i in range(0, whole, self.frame_samples)
        ]

    def flush(self) -> list[bytes]:
        if not len(self._pending):
            return []
        padded = np.zeros(self.frame_samples, np.int16)
        padded[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, np.int16)
        return [self._encoder.encode(padded.tobytes(), self.frame_samples)]


class OpusDecoder:
    """Decodes one raw Opus packet at a time into int16 samples; raises ``opuslib.OpusError`` on garbage."""

    Error = opuslib.OpusError

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._decoder = opuslib.Decoder(sample_rate, 1)
        self._max_samples = sample_rate * _MAX_PACKET_MS // 1000

    def decode(self, packet: bytes) -> np.ndarray:
        return np.frombuffer(self._decoder.decode(packet, self._max_samples), dtype=np.int16)
