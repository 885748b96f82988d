"""The pure pieces of Chatterbox streaming, on CPU without torch: which tokens each flow call renders, how
vocoder renderings are joined, and the watermark applied over a stream."""

import numpy as np
import pytest

from gpu_server.engines.chatterbox_stream import (
    CONTEXT_TOKENS,
    LOOKAHEAD_TOKENS,
    TOKEN_FRAMES,
    VocoderJoin,
    flow_window,
)
from gpu_server.engines.watermark import HOLD_S, StreamWatermarker


def schedule(n_tokens: int, first: int = 16, every: int = 25) -> list:
    windows, rendered, cut = [], 0, first
    for have in range(1, n_tokens + 1):
        if have >= cut:
            cut = have + every
            w = flow_window(rendered, have, final=False)
            if w:
                windows.append(w)
                rendered = w.rendered
    windows.append(flow_window(rendered, n_tokens, final=True))
    return windows


@pytest.mark.parametrize("n_tokens", [1, 3, 16, 17, 60, 260])
def test_every_token_is_rendered_once_and_only_with_its_lookahead(n_tokens):
    windows = schedule(n_tokens)
    covered = []
    for w in windows:
        kept = range(w.start + w.keep_from // TOKEN_FRAMES, w.rendered)
        covered += list(kept)
        if not w.final:
            assert w.rendered + LOOKAHEAD_TOKENS <= w.end  # each kept token had its 3 tokens of lookahead
        assert w.start >= max(0, kept.start - CONTEXT_TOKENS)
    assert covered == list(range(n_tokens))


def test_vocoder_join_rebuilds_a_signal_from_renderings_that_agree():
    rng = np.random.default_rng(1)
    signal = rng.standard_normal(10_000).astype(np.float32)
    join, out, pos, overlap = VocoderJoin(480), [], 0, 480
    for end, final in ((2000, False), (5000, False), (10_000, True)):
        start = max(0, pos - overlap) if pos else 0
        out.append(join.push(signal[start:end], final=final))
        pos = end
    # Hamming halves sum to ~1 (0.08 at the ends): a rendering agreeing with the held one passes unchanged.
    np.testing.assert_allclose(np.concatenate(out), signal, atol=0.09 * np.abs(signal).max())
    assert sum(map(len, out)) == len(signal)


def test_stream_watermark_matches_marking_the_whole_signal():
    rate = 24000
    audio = np.sin(np.arange(3 * rate) / rate * 2 * np.pi * 220).astype(np.float32)

    def mark(window, _rate):  # a local, smoothing effect like Perth's: the same wherever the window starts
        return np.convolve(window, np.ones(9) / 9, mode="same").astype(np.float32)

    marker = StreamWatermarker(mark, rate)
    streamed = [marker.push(audio[i : i + 7000]) for i in range(0, len(audio), 7000)]
    streamed.append(marker.flush())
    out = np.concatenate(streamed)
    assert len(out) == len(audio)
    assert len(streamed[0]) == 7000 - int(HOLD_S * rate)  # held back for right context
    whole = mark(audio, rate)
    np.testing.assert_allclose(out[10:-10], whole[10:-10], atol=1e-5)  # no seams where chunks met
