"""The pod-log stream of ``GET /v2/pods/{id}/logs``: Server-Sent Events that stay open, as RunPod's do.

The stream first sends the backfill (the last ``tail`` lines, default 100, or what follows ``since`` /
``Last-Event-ID``), one event per line:

    id: 2026-06-01T12:02:03Z/000000000042
    data: {"ts": "2026-06-01T12:02:03Z", "source": "container", "line": "Model loaded."}

then follows the pod: new lines as they are written (looked for every ``POLL_S``), a ``: keep-alive``
comment every ``KEEPALIVE_S`` of silence, and the end of the stream when the pod is terminated. A client that
wants only the tail reads until a short quiet spell and closes the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from runpod_emulator.emulator import Emulator
from runpod_emulator.podlogs import LogLine, LogSource

POLL_S = 0.2
KEEPALIVE_S = 15.0


def stream_logs(
    emulator: Emulator,
    pod_id: str,
    backfill: list[LogLine],
    seen_seq: int,
    source: LogSource | None,
    headers: dict[str, str],
) -> StreamingResponse:
    """``seen_seq``: the last sequence number the backfill was chosen from; the live part starts after it."""

    async def events() -> AsyncIterator[str]:
        last_seq = seen_seq
        for line in backfill:
            yield line.sse()
        quiet_since = time.monotonic()  # wall-clock pacing: a real client waits in real time
        while True:
            await asyncio.sleep(POLL_S)
            lines = await emulator.pod_logs_after(pod_id, last_seq, source)
            if lines is None:
                return  # the pod was terminated
            for line in lines:
                yield line.sse()
                last_seq = line.seq
            if lines:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
