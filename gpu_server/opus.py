"""Opus packets in and out: 20 ms packets for `/ws/tts`, raw packets (one per message) into `/ws/stt`.

The codec is libopus as PyAV's wheels carry it, so no system library is needed (opuslib, the usual binding,
loads the system ``libopus0`` and has been unmaintained since 2018). Imports only numpy and av, so
`gpu_server.client` can use it too.

FFmpeg's libopus decoder always decodes at 48 kHz; ``OpusDecoder`` brings each packet to the stream's rate
with a fixed FIR decimator that keeps its history across packets, so a 20 ms packet decodes to exactly 20 ms
of samples (every Opus rate divides 48 kHz).
"""

from __future__ import annotations

import av
import av.error
import numpy as np

from gpu_server.protocol import FRAME_MS

_DECODE_RATE = 48000
_TAPS_PER_PHASE = 16


class OpusPacketizer:
    """Cuts a PCM stream into exactly-20 ms Opus packets; ``flush`` pads the last one with silence."""

    def __init__(self, sample_rate: int, frame_ms: int = FRAME_MS, bitrate: int = 32000) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._encoder = av.CodecContext.create("libopus", "w")
        self._encoder.sample_rate = sample_rate
        self._encoder.layout = "mono"
        self._encoder.format = "s16"
        self._encoder.bit_rate = bitrate
        self._encoder.options = {"application": "audio", "frame_duration": str(frame_ms)}
        self._encoder.open()
        self._pts = 0
        self._pending = np.zeros(0, np.int16)

    def push(self, pcm: np.ndarray) -> list[bytes]:
        """Takes int16 samples; returns every whole packet they complete."""
        pending = np.concatenate([self._pending, np.asarray(pcm, dtype=np.int16)])
        whole = len(pending) // self.frame_samples * self.frame_samples
        self._pending = pending[whole:]
        step = self.frame_samples
        return [packet for i in range(0, whole, step) for packet in self._encode(pending[i : i + step])]

    def flush(self) -> list[bytes]:
        if not len(self._pending):
            return []
        padded = np.zeros(self.frame_samples, np.int16)
        padded[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, np.int16)
        return self._encode(padded)

    def _encode(self, frame_pcm: np.ndarray) -> list[bytes]:
        # libopus emits one packet per whole frame at once (no lookahead buffering), so packets stay 1:1 with
        # frames; the encoder's own end-of-stream flush is never needed.
        frame = av.AudioFrame.from_ndarray(frame_pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += len(frame_pcm)
        return [bytes(packet) for packet in self._encoder.encode(frame)]


class OpusDecoder:
    """Decodes one raw Opus packet at a time into int16 samples; raises ``OpusDecoder.Error`` on garbage."""

    Error = av.error.FFmpegError

    def __init__(self, sample_rate: int) -> None:
        if _DECODE_RATE % sample_rate:
            raise ValueError(f"Opus cannot decode at {sample_rate} Hz")
        self.sample_rate = sample_rate
        self._decoder = av.CodecContext.create("libopus", "r")
        self._decoder.layout = "mono"
        self._factor = _DECODE_RATE // sample_rate
        self._taps = _lowpass(self._factor) if self._factor > 1 else None
        self._history = np.zeros(0 if self._taps is None else len(self._taps) - 1, np.float32)

    def decode(self, packet: bytes) -> np.ndarray:
        frames = self._decoder.decode(av.Packet(packet))
        if not frames:
            return np.zeros(0, np.int16)
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        if self._taps is None:
            return audio.astype(np.int16)
        signal = np.concatenate([self._history, audio.astype(np.float32)])
        self._history = signal[len(signal) - len(self._history) :]
        filtered = np.convolve(signal, self._taps, mode="valid")[:: self._factor]
        return np.clip(np.rint(filtered), -32768, 32767).astype(np.int16)


def _lowpass(factor: int) -> np.ndarray:
    """A Kaiser-windowed sinc that keeps 90% of the band below the new Nyquist frequency."""
    n = _TAPS_PER_PHASE * factor
    t = np.arange(n) - (n - 1) / 2
    cutoff = 0.9 / (2 * factor)  # in cycles per input sample
    taps = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, 8.0)
    return (taps / taps.sum()).astype(np.float32)
