"""The Chatterbox chunk joiner, on CPU: renderings of overlapping token windows become one exact stream.

A fake S3Gen stands in for the GPU model: it renders a known signal for the tokens it is given, silences
and fades in its first 40 ms (as S3Gen's trim_fade does) and renders its last token as an ending.
"""

import numpy as np
import pytest

from gpu_server.engines.chatterbox import (
    CHUNK_TOKENS,
    FIRST_CHUNK_TOKENS,
    HOLDBACK_TOKENS,
    TOKEN_SAMPLES,
    Stitcher,
)


def truth(n_tokens: int) -> np.ndarray:
    n = np.arange(n_tokens * TOKEN_SAMPLES)
    return (0.5 * np.sin(2 * np.pi * 220 * n / 24000) * (1 + 0.3 * np.sin(n / 3000))).astype(np.float32)


def fake_s3gen(signal: np.ndarray, start: int, end: int, final: bool) -> np.ndarray:
    wav = signal[start * TOKEN_SAMPLES : end * TOKEN_SAMPLES].copy()
    wav[: TOKEN_SAMPLES // 2] = 0
    wav[TOKEN_SAMPLES // 2 : TOKEN_SAMPLES] *= np.linspace(0, 1, TOKEN_SAMPLES // 2)
    if not final:
        wav[-TOKEN_SAMPLES:] *= 0.2  # the flow model rounds off what it thinks is the end
    return wav


def stream(n_tokens: int) -> list[np.ndarray]:
    """The same schedule ChatterboxSynthesizer.synthesize runs, token by token."""
    signal, stitcher, chunks = truth(n_tokens), Stitcher(), []
    next_cut = FIRST_CHUNK_TOKENS
    for have in range(1, n_tokens + 1):
        if have >= next_cut:
            next_cut = have + CHUNK_TOKENS
            start = stitcher.context_start()
            chunks.append(stitcher.join(fake_s3gen(signal, start, have, False), start, have, final=False))
    start = stitcher.context_start()
    chunks.append(stitcher.join(fake_s3gen(signal, start, n_tokens, True), start, n_tokens, final=True))
    return chunks


@pytest.mark.parametrize("n_tokens", [3, FIRST_CHUNK_TOKENS, 37, 130, 260])
def test_stream_is_gapless_exact_and_complete(n_tokens):
    chunks = stream(n_tokens)
    audio = np.concatenate(chunks)
    assert len(audio) == n_tokens * TOKEN_SAMPLES  # the remainder is always flushed
    # Past the utterance's own fade-in, the joined stream is the signal itself: no seam, no rounded ends.
    np.testing.assert_allclose(audio[TOKEN_SAMPLES:], truth(n_tokens)[TOKEN_SAMPLES:], atol=1e-5)


def test_first_chunk_is_small():
    chunks = stream(200)
    assert len(chunks[0]) == (FIRST_CHUNK_TOKENS - HOLDBACK_TOKENS) * TOKEN_SAMPLES  # 0.32 s
    assert all(len(c) <= (CHUNK_TOKENS + HOLDBACK_TOKENS) * TOKEN_SAMPLES for c in chunks[1:])
