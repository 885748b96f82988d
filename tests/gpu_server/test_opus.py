"""Opus packets are exactly 20 ms, the last one padded, and decode back to the same length of audio."""

import subprocess
import sys

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


def test_codec_needs_no_system_libopus():
    """opuslib found libopus through ctypes.util.find_library; the codec must work where that finds nothing
    (a fresh machine without Debian's libopus0)."""
    code = (
        "import ctypes.util, numpy as np\n"
        "ctypes.util.find_library = lambda name: None\n"
        "from gpu_server.opus import OpusDecoder, OpusPacketizer\n"
        "tone = (np.sin(np.arange(4800) * 2 * np.pi * 300 / 24000) * 8000).astype(np.int16)\n"
        "packets = OpusPacketizer(24000).push(tone)\n"
        "decoder = OpusDecoder(24000)\n"
        "audio = np.concatenate([decoder.decode(p) for p in packets]).astype(np.float32)\n"
        "assert len(packets) == 10 and len(audio) == 4800, (len(packets), len(audio))\n"
        "assert np.sqrt(np.mean(audio[1200:] ** 2)) > 2000\n"
        "import sys; assert 'opuslib' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 24000, 48000])
def test_every_opus_rate_decodes_to_exactly_20_ms(rate):
    tone = (np.sin(np.arange(rate // 5) * 2 * np.pi * 300 / rate) * 8000).astype(np.int16)
    decoder = OpusDecoder(rate)
    decoded = [decoder.decode(p) for p in OpusPacketizer(rate).push(tone)]
    assert [len(d) for d in decoded] == [rate // 50] * 10
    audio = np.concatenate(decoded).astype(np.float32)
    # The decimator passes the tone: its level after the codec's start-up is close to the input's.
    assert np.sqrt(np.mean(audio[rate // 20 :] ** 2)) > 0.7 * np.sqrt(np.mean(tone.astype(np.float32) ** 2))
