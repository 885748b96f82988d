"""`sockets`: how one connection's reader and its stream's worker end together."""

import asyncio

import numpy as np

from gpu_server import protocol
from gpu_server.batcher import DecodeBatcher
from gpu_server.metrics import SpeechMetrics
from gpu_server.sockets import ClientGone, Outbox, _serve
from gpu_server.stt import MAX_PENDING_FINALS, SttStream

from .conftest import make_settings, silence


async def test_a_client_gone_while_its_audio_is_held_back_does_not_hang_the_connection(engines, spoken):
    """A fast client sends many utterances; the reader is held back (``SttStream.audio`` waits for room while
    finals pile up), and the client leaves: the worker's next final fails with ClientGone and the worker ends.
    Nothing will ever make room again, so a handler that waited for its reader hung for good and the stream
    stayed counted in ``harper_stt_streams_active`` and the stream limit."""

    async def emit(message: protocol.Message) -> None:
        if isinstance(message, protocol.Final):
            raise ClientGone  # what Outbox raises once the peer is gone

    batcher = DecodeBatcher(engines.stt)
    batcher.start()
    stream = SttStream(transcriber=engines.stt, vad=engines.vad, batcher=batcher, settings=make_settings(),
                       metrics=SpeechMetrics(), emit=emit)
    utterance = np.concatenate([spoken.pcm16k[0], silence(0.8)])
    fed = 0

    async def reader() -> None:  # what `_pump` does with each binary message
        nonlocal fed
        for _ in range(MAX_PENDING_FINALS + 4):
            await stream.audio(utterance.tobytes())
            fed += 1

    try:
        await asyncio.wait_for(_serve(Outbox(None), reader(), stream.run_worker()), 30)  # type: ignore[arg-type]
    finally:
        await batcher.aclose()
    assert fed < MAX_PENDING_FINALS + 4  # the reader was indeed held back when the worker ended
