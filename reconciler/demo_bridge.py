"""``python -m reconciler demo --bridge``: a conversation that starts before its pod is ready.

The companion keeps the local CPU gpu_server warm (``VoicePods(bridge=...)``, ``warm()``), then opens a
session: it is on the bridge at once. A *user* speaks five short sentences into one ``voice.stt()`` stream
at real-time pace (their voice is synthesized beforehand, on the local server, outside the session), and the
companion answers each final with ``voice.speak``. Every line says which server heard or voiced what; the
report says when the first words were heard, when the pod was ready, and at which utterance the stream moved.

The pieces (``synthesize``, ``play``, ``collect``) are what the bridge tests and ``bench/bridge.py`` use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .bridge import BridgedStt, Route, Server, SttEvent
from .bridge_tts import Spoken
from .client import VoicePods

SENTENCES = [
    "Hello there, I would like to book a table.",
    "It is for two people tonight.",
    "Seven in the evening would be perfect.",
    "Could we sit near the window please?",
    "Thank you so much for your help today.",
]
CHUNK_S = 0.02


@dataclass(frozen=True)
class Clip:
    """One sentence as PCM16 mono (little-endian bytes)."""

    text: str
    pcm: bytes
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


async def synthesize(route: Route, texts: list[str]) -> list[Clip]:
    """Voice each text on ``route``'s `/ws/tts` (one connection), decoded to PCM."""
    from gpu_server.client import TtsConnection

    async with TtsConnection(route.endpoints["tts"], route.token()) as tts:
        clips = []
        for text in texts:
            speech = await tts.speak(text)
            clips.append(Clip(text, speech.pcm_bytes(), speech.sample_rate))
        return clips


ClipSource = Clip | Callable[[], Awaitable[Clip]]


async def play(stt: BridgedStt, clips: Sequence[ClipSource], *, gap_s: float = 2.0, lead_s: float = 0.3,
               speed: float = 1.0, before: Callable[[int], Awaitable[None]] | None = None,
               during: Callable[[int, float], Awaitable[None]] | None = None) -> list[tuple[float, float]]:
    """Send ``lead_s`` of silence, then each clip followed by ``gap_s`` of silence, in 20 ms chunks at
    ``speed`` times real time. A clip may be an async function that makes it when its turn comes (the
    companion's own voice, say); that time, and the time ``before(i)`` takes before clip ``i``, are not
    audio: the schedule resumes after them. ``during(i, fraction)`` runs after each chunk of clip ``i``.
    Returns each clip's span on the stream's clock."""
    rate = stt.sample_rate
    step = int(CHUNK_S * rate) * 2
    began = time.monotonic()
    sent = 0  # bytes

    async def send(data: bytes, clip: int | None = None) -> None:
        nonlocal sent
        for i in range(0, len(data), step):
            await asyncio.sleep(max(0.0, began + sent / 2 / rate / speed - time.monotonic()))
            await stt.send(data[i : i + step])
            sent += len(data[i : i + step])
            if clip is not None and during is not None:
                await during(clip, min(1.0, (i + step) / len(data)))

    spans = []
    await send(bytes(int(lead_s * rate) * 2))
    for i, source in enumerate(clips):
        paused = time.monotonic()
        if before is not None:
            await before(i)
        clip = source if isinstance(source, Clip) else await source()
        if clip.sample_rate != rate:
            raise ValueError(f"clip {i} is at {clip.sample_rate} Hz, the stream at {rate} Hz")
        began += max(0.0, time.monotonic() - max(paused, began + sent / 2 / rate / speed))
        start = sent / 2 / rate
        await send(clip.pcm, i)
        spans.append((start, sent / 2 / rate))
        await send(bytes(int(gap_s * rate) * 2))
    return spans


async def collect(stt: BridgedStt, on_event: Callable[[SttEvent], None] | None = None) -> list[SttEvent]:
    events = []
    async for event in stt:
        events.append(event)
        if on_event is not None:
            on_event(event)
    return events


@dataclass
class BridgeDemo:
    mode: str
    warm_s: float
    texts: list[str]
    finals: list[SttEvent] = field(default_factory=list)
    replies: list[Spoken] = field(default_factory=list)
    first_words_ms: float | None = None  # session start -> first text (partial or final) heard
    first_final_ms: float | None = None
    ready_s: float | None = None
    bridged_s: float | None = None
    switched_at: int | None = None
    tts_switched_at: int | None = None
    path: str | None = None
    pod_id: str | None = None

    def as_json(self) -> dict:
        from gpu_server.transcript import word_error_rate

        return {
            "bridge": self.mode, "local_warm_s": round(self.warm_s, 2),
            "first_words_ms": _round(self.first_words_ms), "first_final_ms": _round(self.first_final_ms),
            "pod_ready_s": _round(self.ready_s, 2), "bridged_s": _round(self.bridged_s, 2),
            "switched_at": self.switched_at, "tts_switched_at": self.tts_switched_at, "path": self.path,
            "pod_id": self.pod_id,
            "finals": [{"text": e.text, "server": str(e.server), "utterance": e.utterance} for e in self.finals],
            "replies": [{"text": r.text, "server": str(r.server)} for r in self.replies],
            "wer": round(word_error_rate([" ".join(self.texts)], [" ".join(e.text for e in self.finals)]), 4),
        }


def _round(value: float | None, digits: int = 0) -> float | None:
    return None if value is None else round(value, digits)


async def bridge_demo(url: str, token: str, mode: str, *, progress=print, gap_s: float = 2.0) -> BridgeDemo:
    pods = VoicePods(url, token, bridge=mode, heartbeat_s=5.0)
    try:
        progress("keeping the local CPU gpu_server warm (the bridge)...")
        warm_s = await pods.warm()
        progress(f"  warm after {warm_s:.1f}s; synthesizing the user's {len(SENTENCES)} sentences on it")
        clips = await synthesize(pods.local.route(Server.BRIDGE), SENTENCES)
        demo = BridgeDemo(mode, warm_s, SENTENCES)
        started = time.monotonic()

        def stamp() -> str:
            return f"[{time.monotonic() - started:5.1f}s]"

        async with pods.session(f"demo-bridge-{os.getpid()}-{int(time.time())}") as voice:
            progress(f"{stamp()} session open on the {voice.server} (lease {voice.lease.id}: {voice.lease.state})")
            replies: asyncio.Queue[str | None] = asyncio.Queue()

            def on_event(event: SttEvent) -> None:
                if event.type in ("partial", "final") and event.text and demo.first_words_ms is None:
                    demo.first_words_ms = (event.at - started) * 1000
                if event.type == "final" and event.text:
                    if demo.first_final_ms is None:
                        demo.first_final_ms = (event.at - started) * 1000
                    demo.finals.append(event)
                    progress(f"{stamp()} heard #{event.utterance} on the {event.server}: {event.text}")
                    replies.put_nowait(f"You said: {event.text}")

            async def reply() -> None:
                while (text := await replies.get()) is not None:
                    spoken = await voice.speak(text)
                    demo.replies.append(spoken)
                    progress(f"{stamp()} reply #{spoken.number} voiced by the {spoken.server} "
                             f"({spoken.speech.audio_ms:.0f} ms of audio)")

            async def watch_ready() -> None:
                if await voice.wait_for_pod():
                    progress(f"{stamp()} pod {voice.lease.pod_id} ready via {voice.path}")
                else:
                    progress(f"{stamp()} no pod came: the session stays on the local server")

            watcher = asyncio.create_task(watch_ready(), name="demo-watch-ready")
            replier = asyncio.create_task(reply(), name="demo-replies")
            try:
                async with voice.stt(sample_rate=clips[0].sample_rate) as stt:
                    listener = asyncio.create_task(collect(stt, on_event), name="demo-listen")
                    await play(stt, clips, gap_s=gap_s)
                    await stt.finish()
                    await listener
                replies.put_nowait(None)
                await replier
            finally:
                for task in (watcher, replier):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            demo.ready_s, demo.bridged_s = voice.ready_s, voice.bridged_s
            demo.switched_at, demo.tts_switched_at = voice.switched_at, voice.tts_switched_at
            demo.path, demo.pod_id = voice.path, voice.lease.pod_id if voice.lease else None
        return demo
    finally:
        await pods.aclose()


def print_bridge_report(demo: BridgeDemo) -> None:
    result = demo.as_json()
    print()
    words = f"{demo.first_words_ms:.0f} ms" if demo.first_words_ms is not None else "never"
    first_server = demo.finals[0].server if demo.finals else "-"
    ready = f"{demo.ready_s:.1f} s via {demo.path}" if demo.ready_s is not None else "never (stayed local)"
    moved = f"utterance {demo.switched_at}" if demo.switched_at else "never"
    print(f"  first words heard after {words} on the {first_server}; first final after "
          f"{demo.first_final_ms or 0:.0f} ms")
    print(f"  pod ready after {ready}; STT switched at {moved}"
          + (f" ({demo.bridged_s:.1f} s on the bridge)" if demo.bridged_s is not None else ""))
    if demo.replies:
        voiced = ", ".join(f"#{r.number} {r.server}" for r in demo.replies)
        print(f"  replies voiced by: {voiced}")
    print(f"  word error rate over the {len(demo.texts)} utterances: {result['wer'] * 100:.1f}%")
