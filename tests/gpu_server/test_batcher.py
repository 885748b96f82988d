"""Decodes from many streams share model calls, finals first, and each caller gets its own result."""

import asyncio

import numpy as np

from gpu_server.batcher import DecodeBatcher
from gpu_server.engines import DecodeRequest
from gpu_server.gate import BACKGROUND, URGENT
from gpu_server.transcript import word_error_rate

from .conftest import SENTENCES


async def test_concurrent_requests_are_batched_and_answered_in_place(engines, spoken):
    requests = [DecodeRequest(pcm.astype(np.float32) / 32768, "en", 1) for pcm in spoken.pcm16k]
    async with DecodeBatcher(engines.stt, max_batch=8) as batcher:
        results = await asyncio.gather(*(batcher.transcribe(r, priority=BACKGROUND) for r in requests))
        assert batcher.decoded == len(requests) and batcher.batches < len(requests)
    assert word_error_rate(SENTENCES, [r.text for r in results]) < 0.1


async def test_urgent_requests_overtake_and_beam_sizes_never_mix(engines, spoken):
    order: list[tuple[int, ...]] = []
    real = engines.stt.transcribe_batch

    class Recording:
        sample_rate = 16000

        def transcribe_batch(self, batch):
            order.append(tuple(r.beam_size for r in batch))
            return real(batch)

    audio = spoken.pcm16k[0].astype(np.float32) / 32768
    async with DecodeBatcher(Recording(), max_batch=8) as batcher:
        first = asyncio.create_task(batcher.transcribe(DecodeRequest(audio, "en", 1), priority=BACKGROUND))
        await asyncio.sleep(0)  # the first batch starts with just this one
        rest = [batcher.transcribe(DecodeRequest(audio, "en", 1), priority=BACKGROUND) for _ in range(2)]
        rest += [batcher.transcribe(DecodeRequest(audio, "en", 2), priority=URGENT) for _ in range(2)]
        await asyncio.gather(first, *rest)
    assert order == [(1,), (2, 2), (1, 1)]



def test_a_batch_of_short_and_long_utterances_answers_each_in_its_place(engines, spoken):
    """Decoded per window size (a long one does not make the short ones pay for its window), in order."""
    audio = [pcm.astype(np.float32) / 32768 for pcm in spoken.pcm16k]
    long = np.concatenate(audio[:3])  # ~11 s: a 15 s window where the others need 10 s
    results = engines.stt.transcribe_batch([DecodeRequest(a, "en", 1) for a in (audio[3], long, audio[0])])
    texts = [r.text for r in results]
    assert word_error_rate([SENTENCES[3], " ".join(SENTENCES[:3]), SENTENCES[0]], texts) < 0.1, texts
