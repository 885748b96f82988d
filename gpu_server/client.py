"""Async clients for `/ws/tts` and `/ws/stt`, for the controller's demo, the tests, the bench and a
companion server. Imports only websockets, numpy and PyAV's libopus (through `gpu_server.opus`), never the engines.

One-shot helpers:

- ``await speak(url, token, text) -> Speech``: the frames as received, the decoded PCM (int16 numpy,
  ``Speech.sample_rate``) and timings (``first_audio_ms`` as the client saw it).
- ``await transcribe(url, token, pcm, sample_rate, realtime=True) -> Transcript``: streams PCM16 in
  20 ms chunks (at real-time pace unless told otherwise), sends ``stop``, returns partials and finals with
  their receive times, and latencies measured against the send time of the audio they refer to.

Connections, for anything longer-lived (barge-in, several utterances, live audio):
``async with TtsConnection(url, token) as tts`` and ``async with SttConnection(url, token) as stt``.

Turns: a ``final`` with ``end_of_turn: false`` is one part of a long turn (the speaker went on past
``max_utterance_s``; the server cut at a pause so that text does not wait for the end): more finals of the
same turn follow. An assistant answers at a final with ``end_of_turn: true`` (a VAD endpoint or ``stop``),
with the text of every final since the previous end of turn (``Transcript.turns`` joins them).

TTS pacing: frames come at most ~300 ms (``GPU_SERVER_TTS_MAX_AHEAD_MS``) ahead of real time after a first
burst of that size, so a client that plays frames as they arrive is silenced by a ``cancel`` within that.

Times are ``time.monotonic()`` seconds unless a name ends in ``_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gpu_server import protocol
from gpu_server.opus import OpusDecoder, OpusPacketizer

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class SpeechServerError(Exception):
    """The server answered with an ``error`` message where the call needed something else."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Connection:
    def __init__(self, url: str, token: str | None = None, *, open_timeout: float = 10.0) -> None:
        self.url = url
        self._token = token
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("not connected: use 'async with'")
        return self._ws

    async def __aenter__(self) -> Any:
        self._ws = await connect(
            self.url,
            additional_headers=_headers(self._token),
            open_timeout=self._open_timeout,
            max_size=MAX_MESSAGE_BYTES,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code


# ---------------------------------------------------------------- TTS


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    timestamp_us: int
    packet: bytes
    received_at: float


@dataclass
class Speech:
    id: str
    sample_rate: int
    frames: list[Frame]
    pcm: np.ndarray  # int16, mono
    sent_at: float
    first_audio_ms: float | None  # client-side: speak sent -> first frame received
    server_first_audio_ms: float | None
    audio_ms: float
    cancelled: bool
    done_at: float
    start: protocol.TtsStart | None = None

    def pcm_bytes(self) -> bytes:
        return self.pcm.astype("<i2").tobytes()

    @property
    def total_ms(self) -> float:
        return (self.done_at - self.sent_at) * 1000


class TtsConnection(_Connection):
    """One `/ws/tts` connection. ``speak`` waits for its utterance; ``send_*`` and ``events`` are the raw
    protocol for callers that interleave (barge-in)."""

    async def send_speak(
        self, text: str, *, id: str | None = None, voice_id: str | None = None, language: str | None = None
    ) -> str:
        id = id or uuid.uuid4().hex[:12]
        await self.ws.send(protocol.encode(protocol.Speak(id=id, text=text, voice_id=voice_id, language=language)))
        return id

    async def send_cancel(self, id: str | None = None) -> None:
        await self.ws.send(protocol.encode(protocol.Cancel(id=id)))

    async def events(self) -> AsyncIterator[protocol.Message | Frame]:
        """Server messages and frames as they arrive, until the connection closes (see ``close_code``)."""
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    seq, ts, packet = protocol.unpack_frame(raw)
                    yield Frame(seq, ts, packet, time.monotonic())
                else:
                    yield protocol.parse_tts_server(raw)

    async def speak(
        self, text: str, *, id: str | None = None, voice_id: str | None = None, language: str | None = None
    ) -> Speech:
        sent_at = time.monotonic()
        id = await self.send_speak(text, id=id, voice_id=voice_id, language=language)
        return await self.collect(id, sent_at)

    async def collect(self, id: str, sent_at: float, *, cancel_after_frames: int | None = None) -> Speech:
        """Receive the utterance ``id`` up to its ``done``; optionally send ``cancel`` after N frames."""
        start: protocol.TtsStart | None = None
        frames: list[Frame] = []
        async with contextlib.aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, Frame):
                    frames.append(event)
                    if cancel_after_frames is not None and len(frames) == cancel_after_frames:
                        await self.send_cancel(id)
                elif isinstance(event, protocol.TtsStart) and event.id == id:
                    start = event
                elif isinstance(event, protocol.Error) and start is None:
                    raise SpeechServerError(event.code, event.message)
                elif isinstance(event, protocol.TtsDone) and event.id == id:
                    rate = start.sample_rate if start else 24000
                    return Speech(
                        id=id,
                        sample_rate=rate,
                        frames=frames,
                        pcm=decode_frames(frames, rate),
                        sent_at=sent_at,
                        first_audio_ms=(frames[0].received_at - sent_at) * 1000 if frames else None,
                        server_first_audio_ms=event.first_audio_ms,
                        audio_ms=event.audio_ms,
                        cancelled=event.cancelled,
                        done_at=time.monotonic(),
                        start=start,
                    )
        raise ConnectionError(f"/ws/tts closed before utterance {id!r} was done (code {self.ws.close_code})")


def decode_frames(frames: list[Frame], sample_rate: int) -> np.ndarray:
    decoder = OpusDecoder(sample_rate)
    chunks = [decoder.decode(f.packet) for f in frames]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


async def speak(
    url: str, token: str | None, text: str, *, voice_id: str | None = None, language: str | None = None
) -> Speech:
    async with TtsConnection(url, token) as tts:
        return await tts.speak(text, voice_id=voice_id, language=language)


# ---------------------------------------------------------------- STT


@dataclass(frozen=True, slots=True)
class Received:
    message: protocol.Message
    at: float


@dataclass(frozen=True, slots=True)
class Heard:
    """A partial or final: its text, its span on the stream's audio clock, and when it was received."""

    text: str
    start: float
    end: float
    at: float
    end_of_turn: bool = True  # finals only: False for a part of a long turn that goes on


@dataclass
class Transcript:
    events: list[Received]
    # chunk_sends[i] = (audio seconds sent so far, monotonic time that chunk was sent)
    chunk_sends: list[tuple[float, float]] = field(default_factory=list)
    audio_end_at: float | None = None
    close_code: int | None = None

    def _heard(self, kind: type[protocol.Partial] | type[protocol.Final]) -> list[Heard]:
        return [
            Heard(e.message.text, e.message.start, e.message.end, e.at, getattr(e.message, "end_of_turn", True))
            for e in self.events
            if isinstance(e.message, kind) and e.message.text
        ]

    @property
    def partials(self) -> list[Heard]:
        return self._heard(protocol.Partial)

    @property
    def finals(self) -> list[Heard]:
        return self._heard(protocol.Final)

    @property
    def errors(self) -> list[protocol.Error]:
        return [e.message for e in self.events if isinstance(e.message, protocol.Error)]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals).strip()

    @property
    def turns(self) -> list[str]:
        """The text of each turn: the finals up to and including each ``end_of_turn``, joined."""
        turns, parts = [], []
        for final in self.finals:
            parts.append(final.text)
            if final.end_of_turn:
                turns.append(" ".join(parts))
                parts = []
        return turns + ([" ".join(parts)] if parts else [])

    def sent_at(self, audio_s: float) -> float:
        """When the chunk holding the audio at ``audio_s`` (stream seconds) was sent."""
        for covered, at in self.chunk_sends:
            if covered >= audio_s - 1e-6:
                return at
        return self.chunk_sends[-1][1] if self.chunk_sends else 0.0

    @property
    def final_latencies_ms(self) -> list[float]:
        """Per final: receive time minus the send time of its last speech (``end``)."""
        return [(f.at - self.sent_at(f.end)) * 1000 for f in self.finals]

    @property
    def final_latency_ms(self) -> float | None:
        """Last final's receive time minus the time the last audio chunk was sent."""
        if not self.finals or self.audio_end_at is None:
            return None
        return (self.finals[-1].at - self.audio_end_at) * 1000

    @property
    def first_partial_ms(self) -> float | None:
        """First partial's receive time minus the send time of the speech onset the server's VAD found."""
        onsets = [e.message.t for e in self.events if isinstance(e.message, protocol.SpeechStarted)]
        partials = self.partials
        return (partials[0].at - self.sent_at(onsets[0])) * 1000 if partials and onsets else None


class SttConnection(_Connection):
    """One `/ws/stt` connection: send ``start``, audio and ``stop``; read messages with receive times."""

    def __init__(self, url: str, token: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, token, **kwargs)
        self.received: list[Received] = []

    async def send_start(
        self,
        *,
        sample_rate: int = 16000,
        encoding: str = "pcm_s16le",
        language: str = "en",
        endpoint_ms: int | None = None,
    ) -> None:
        start = protocol.SttStart(sample_rate, encoding, language, endpoint_ms)
        await self.ws.send(protocol.encode(start))

    async def send_audio(self, data: bytes) -> None:
        await self.ws.send(data)

    async def send_stop(self) -> None:
        await self.ws.send(protocol.encode(protocol.SttStop()))

    async def receive_all(self) -> list[Received]:
        """Collect messages until the connection closes (after ``done``; see ``close_code``)."""
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                if isinstance(raw, str):
                    self.received.append(Received(protocol.parse_stt_server(raw), time.monotonic()))
        return self.received


def chunk_pcm(
    pcm: np.ndarray | bytes, sample_rate: int, chunk_ms: int = protocol.FRAME_MS, encoding: str = "pcm_s16le"
) -> list[bytes]:
    """Audio as the messages to send: PCM16 chunks of ``chunk_ms``, or one 20 ms Opus packet each."""
    samples = np.frombuffer(pcm, "<i2") if isinstance(pcm, bytes | bytearray) else np.asarray(pcm, np.int16)
    if encoding == "opus":
        packetizer = OpusPacketizer(sample_rate)
        return packetizer.push(samples) + packetizer.flush()
    step = sample_rate * chunk_ms // 1000
    return [samples[i : i + step].astype("<i2").tobytes() for i in range(0, len(samples), step)]


async def transcribe(
    url: str,
    token: str | None,
    pcm: np.ndarray | bytes,
    sample_rate: int = 16000,
    *,
    chunk_ms: int = protocol.FRAME_MS,
    realtime: bool = True,
    encoding: str = "pcm_s16le",
    language: str = "en",
    endpoint_ms: int | None = None,
    stop: bool = True,
    linger_s: float = 1.0,
    timeout_s: float = 60.0,
) -> Transcript:
    """Stream ``pcm`` (int16 mono) into `/ws/stt` and collect everything the server says about it.

    With ``stop`` (the default) it waits for the server's ``done``; without, it listens ``linger_s`` more
    seconds after the last chunk (long enough for an endpoint's final) and hangs up.
    """
    chunks = chunk_pcm(pcm, sample_rate, chunk_ms if encoding != "opus" else protocol.FRAME_MS, encoding)
    chunk_s = (chunk_ms if encoding != "opus" else protocol.FRAME_MS) / 1000
    total_s = (len(pcm) // 2 if isinstance(pcm, bytes | bytearray) else len(pcm)) / sample_rate
    result = Transcript(events=[])
    async with SttConnection(url, token) as stt:
        receiver = asyncio.create_task(stt.receive_all(), name="stt-client-receiver")
        await stt.send_start(sample_rate=sample_rate, encoding=encoding, language=language, endpoint_ms=endpoint_ms)
        began = time.monotonic()
        for i, chunk in zip(itertools.count(), chunks):
            if realtime:
                # Absolute schedule: sleeping jitter does not accumulate over a long stream.
                await asyncio.sleep(max(0.0, began + i * chunk_s - time.monotonic()))
            await stt.send_audio(chunk)
            result.chunk_sends.append((min(total_s, (i + 1) * chunk_s), time.monotonic()))
        result.audio_end_at = time.monotonic()
        if stop:
            await stt.send_stop()
        try:
            await asyncio.wait_for(asyncio.shield(receiver), timeout_s if stop else linger_s)
        except TimeoutError:
            pass
        finally:
            if not receiver.done():
                await stt.ws.close()
                await receiver
        result.events = list(stt.received)
        result.close_code = stt.ws.close_code
    return result
