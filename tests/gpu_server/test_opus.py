"""Opus packets are exactly 20 ms, the last one padded, and decode back to the same length of audio."""

import numpy as np
import pytest

from gpu_server.opus import OpusDecoder, OpusPacketizer


@pytest.mark.parametrize("rate", [16000, 24000])
def test_packets_are_20_ms_and_last_is_padded(rate):
    tone = (np.sin(np.arange(rate) * 2 * np.pi * 220 / rate) * 8000).astype(np.int16)[: rate // 2 + 123]
    packetizer = OpusPacketizer(rate)
    packets = packetizer.push(tone[:1000]) + packetizer.push(tone[1000:]) + packetizer.flush()
    assert len(packets) == -(-len(tone) // (rate // 50))
    decoder = OpusDecoder(rate)
    decoded = [decoder.decode(p) for p in packets]
    assert all(len(d) == rate // 50 for d in decoded)
    audio = np.concatenate(decoded).astype(np.float32)
    assert np.sqrt(np.mean(audio[rate // 10 : len(tone)] ** 2)) > 2000  # the tone survives the codec
    assert packetizer.flush() == []


def test_garbage_packet_raises():
    with pytest.raises(OpusDecoder.Error):
        OpusDecoder(16000).decode(b"\xff\xfe not opus at all")
