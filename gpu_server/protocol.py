"""Wire format of `/ws/stt` and `/ws/tts`: JSON text messages and binary audio frames, both directions.

Pure: no sockets, no models. The WebSocket handlers and `gpu_server.client` call `parse_*` on what they
receive and `encode` on what they send; everything in between works on the frozen dataclasses below.
The contract is DESIGN.md "gpu_server protocol"; names and fields here must stay exactly as written there.

Errors: ``ProtocolError(code, message)`` for anything a peer sent that we cannot act on. Its ``code`` is
one of ``ErrorCode`` and goes back to the peer verbatim in an ``error`` message.

Two details DESIGN.md leaves open, decided here:

- A TTS frame's ``timestamp_us`` is the media time of its first sample, counted from the start of its
  utterance (RTP-style), while ``seq`` counts frames per connection. A client can therefore spot both a
  lost frame (seq gap) and an utterance boundary (timestamp back to 0).
- A ``speak`` that is cancelled while still queued never gets a ``start``: only a ``done`` with
  ``cancelled: true`` and ``frames: 0``, so every accepted id is answered by exactly one ``done``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

FRAME_HEADER = struct.Struct(">IQ")  # seq (uint32), timestamp_us (uint64)
FRAME_MS = 20
TTS_CODEC = "opus"

# Close codes: 4401 mirrors HTTP 401 in the private-use range; 1013 is the standard "try again later".
CLOSE_UNAUTHORIZED = 4401
CLOSE_TRY_AGAIN_LATER = 1013

STT_ENCODINGS = ("pcm_s16le", "opus")
# Rates libopus can decode natively; PCM accepts any rate in the range below (resampled with soxr).
OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000
MIN_ENDPOINT_MS, MAX_ENDPOINT_MS = 100, 5000


class ErrorCode(StrEnum):
    BAD_MESSAGE = "bad_message"  # not JSON, unknown type, missing or wrong field
    BAD_AUDIO = "bad_audio"  # bytes that are not audio in the announced encoding
    TOO_LARGE = "too_large"  # message, text or generated audio over a hard cap
    BUSY = "busy"  # stream or queue limit reached
    UNAUTHORIZED = "unauthorized"  # also signalled by close code 4401
    LOADING = "loading"  # models not loaded yet
    INTERNAL = "internal"  # our fault; the message says what failed


class ProtocolError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every JSON message; ``type`` is the wire discriminator of each subclass."""

    type: ClassVar[str] = ""


# ---- /ws/stt, client -> server


@dataclass(frozen=True, slots=True)
class SttStart(Message):
    type: ClassVar[str] = "start"
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    language: str = "en"
    endpoint_ms: int | None = None  # our extension: per-connection end-of-utterance silence


@dataclass(frozen=True, slots=True)
class SttStop(Message):
    type: ClassVar[str] = "stop"


# ---- /ws/stt, server -> client


@dataclass(frozen=True, slots=True)
class Ready(Message):
    type: ClassVar[str] = "ready"


@dataclass(frozen=True, slots=True)
class SpeechStarted(Message):
    type: ClassVar[str] = "speech_started"
    t: float


@dataclass(frozen=True, slots=True)
class Partial(Message):
    type: ClassVar[str] = "partial"
    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Final(Message):
    type: ClassVar[str] = "final"
    text: str
    start: float
    end: float
    words: list[dict[str, Any]] | None = None
    # False when a long turn is sent in parts and the speaker is still talking: more finals of this turn
    # follow. True at a VAD endpoint and on stop.
    end_of_turn: bool = True


@dataclass(frozen=True, slots=True)
class Done(Message):
    type: ClassVar[str] = "done"


@dataclass(frozen=True, slots=True)
class Error(Message):
    type: ClassVar[str] = "error"
    code: str
    message: str


# ---- /ws/tts, client -> server


@dataclass(frozen=True, slots=True)
class Speak(Message):
    type: ClassVar[str] = "speak"
    id: str
    text: str
    voice_id: str | None = None
    language: str | None = None  # None: English; else a language the loaded TTS model speaks


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    type: ClassVar[str] = "cancel"
    id: str | None = None


# ---- /ws/tts, server -> client


@dataclass(frozen=True, slots=True)
class TtsStart(Message):
    type: ClassVar[str] = "start"
    id: str
    sample_rate: int
    codec: str = TTS_CODEC
    channels: int = 1
    frame_ms: int = FRAME_MS


@dataclass(frozen=True, slots=True)
class TtsDone(Message):
    type: ClassVar[str] = "done"
    id: str
    frames: int
    audio_ms: float
    first_audio_ms: float | None
    cancelled: bool


STT_CLIENT: dict[str, type[Message]] = {m.type: m for m in (SttStart, SttStop)}
STT_SERVER: dict[str, type[Message]] = {m.type: m for m in (Ready, SpeechStarted, Partial, Final, Error, Done)}
TTS_CLIENT: dict[str, type[Message]] = {m.type: m for m in (Speak, Cancel)}
TTS_SERVER: dict[str, type[Message]] = {m.type: m for m in (TtsStart, TtsDone, Error)}

# Fields whose value is left out of the JSON when None (DESIGN.md marks them optional with "?").
_OPTIONAL = frozenset({"words", "voice_id", "endpoint_ms", "id", "language"})  # "id": a cancel of everything


def encode(message: Message) -> str:
    body: dict[str, Any] = {"type": message.type}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if value is None and field.name in _OPTIONAL:
            continue
        body[field.name] = value
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _decode(text: str | bytes, table: dict[str, type[Message]]) -> Message:
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message is not valid JSON") from e
    except RecursionError as e:  # "[[[[..." a few kB deep, well under the size limit
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message is nested too deeply to be a protocol message") from e
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message must be a JSON object")
    kind = body.get("type")
    cls = table.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type {kind!r}; expected one of {sorted(table)}")
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        # Unknown fields are ignored so that newer peers can add fields without breaking older ones.
        return cls(**{k: v for k, v in body.items() if k in known})
    except TypeError as e:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{kind!r} message is missing a required field") from e


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_stt_client(text: str | bytes) -> SttStart | SttStop:
    msg = _decode(text, STT_CLIENT)
    if isinstance(msg, SttStart):
        _require(_is_int(msg.sample_rate), "sample_rate must be an integer")
        _require(msg.encoding in STT_ENCODINGS, f"encoding must be one of {list(STT_ENCODINGS)}")
        if msg.encoding == "opus":
            _require(msg.sample_rate in OPUS_SAMPLE_RATES, f"opus sample_rate must be one of {list(OPUS_SAMPLE_RATES)}")
        else:
            _require(
                MIN_SAMPLE_RATE <= msg.sample_rate <= MAX_SAMPLE_RATE,
                f"sample_rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}",
            )
        _require(isinstance(msg.language, str) and 0 < len(msg.language) <= 16, "language must be a short string")
        if msg.endpoint_ms is not None:
            _require(
                _is_int(msg.endpoint_ms) and MIN_ENDPOINT_MS <= msg.endpoint_ms <= MAX_ENDPOINT_MS,
                f"endpoint_ms must be an integer between {MIN_ENDPOINT_MS} and {MAX_ENDPOINT_MS}",
            )
    return msg  # type: ignore[return-value]


def parse_tts_client(text: str | bytes) -> Speak | Cancel:
    msg = _decode(text, TTS_CLIENT)
    if isinstance(msg, Speak):
        _require(isinstance(msg.id, str) and 0 < len(msg.id) <= 128, "id must be a non-empty string")
        _require(isinstance(msg.text, str), "text must be a string")
        _require(msg.voice_id is None or isinstance(msg.voice_id, str), "voice_id must be a string")
        _require(msg.language is None or (isinstance(msg.language, str) and 0 < len(msg.language) <= 16),
                 "language must be a short string")
    elif isinstance(msg, Cancel):
        _require(msg.id is None or isinstance(msg.id, str), "id must be a string")
    return msg  # type: ignore[return-value]


def parse_stt_server(text: str | bytes) -> Message:
    return _decode(text, STT_SERVER)


def parse_tts_server(text: str | bytes) -> Message:
    return _decode(text, TTS_SERVER)


def pack_frame(seq: int, timestamp_us: int, packet: bytes) -> bytes:
    return FRAME_HEADER.pack(seq, timestamp_us) + packet


def unpack_frame(data: bytes) -> tuple[int, int, bytes]:
    if len(data) <= FRAME_HEADER.size:
        raise ProtocolError(ErrorCode.BAD_AUDIO, f"a frame needs a {FRAME_HEADER.size}-byte header and a packet")
    seq, timestamp_us = FRAME_HEADER.unpack_from(data)
    return seq, timestamp_us, bytes(data[FRAME_HEADER.size :])


def seconds(value: float) -> float:
    """Times on the wire: seconds on the stream's audio clock, to the millisecond."""
    return round(value, 3) if math.isfinite(value) else 0.0
