"""protocol.py is pure: every message survives encode -> parse unchanged, bad input becomes ProtocolError."""

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpu_server import protocol
from gpu_server.protocol import ErrorCode, ProtocolError

texts = st.text(max_size=200)
times = st.floats(min_value=0, max_value=1e6, allow_nan=False)
ids = st.text(min_size=1, max_size=64)

stt_client = st.one_of(
    st.builds(
        protocol.SttStart,
        sample_rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
        encoding=st.just("pcm_s16le"),
        language=st.sampled_from(["en", "de"]),
        endpoint_ms=st.one_of(st.none(), st.integers(100, 5000)),
    ),
    st.builds(protocol.SttStart, sample_rate=st.sampled_from(protocol.OPUS_SAMPLE_RATES), encoding=st.just("opus")),
    st.just(protocol.SttStop()),
)
stt_server = st.one_of(
    st.just(protocol.Ready()),
    st.builds(protocol.SpeechStarted, t=times),
    st.builds(protocol.Partial, text=texts, start=times, end=times),
    st.builds(protocol.Final, text=texts, start=times, end=times),
    st.builds(protocol.Error, code=st.sampled_from(list(ErrorCode)), message=texts),
    st.just(protocol.Done()),
)
tts_client = st.one_of(
    st.builds(protocol.Speak, id=ids, text=texts, voice_id=st.one_of(st.none(), ids)),
    st.builds(protocol.Cancel, id=st.one_of(st.none(), ids)),
)
tts_server = st.one_of(
    st.builds(protocol.TtsStart, id=ids, sample_rate=st.sampled_from([16000, 24000])),
    st.builds(
        protocol.TtsDone,
        id=ids,
        frames=st.integers(0, 10**6),
        audio_ms=times,
        first_audio_ms=st.one_of(st.none(), times),
        cancelled=st.booleans(),
    ),
    st.builds(protocol.Error, code=st.sampled_from(list(ErrorCode)), message=texts),
)


@given(stt_client)
def test_stt_client_messages_round_trip(message):
    assert protocol.parse_stt_client(protocol.encode(message)) == message


@given(stt_server)
def test_stt_server_messages_round_trip(message):
    assert protocol.parse_stt_server(protocol.encode(message)) == message


@given(tts_client)
def test_tts_client_messages_round_trip(message):
    assert protocol.parse_tts_client(protocol.encode(message)) == message


@given(tts_server)
def test_tts_server_messages_round_trip(message):
    assert protocol.parse_tts_server(protocol.encode(message)) == message


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(min_size=1, max_size=400))
def test_frames_round_trip(seq, timestamp_us, packet):
    data = protocol.pack_frame(seq, timestamp_us, packet)
    assert data[:12] == protocol.FRAME_HEADER.pack(seq, timestamp_us)
    assert protocol.unpack_frame(data) == (seq, timestamp_us, packet)


def test_wire_shapes_match_the_design():
    assert json.loads(protocol.encode(protocol.TtsStart("u1", sample_rate=24000))) == {
        "type": "start", "id": "u1", "codec": "opus", "sample_rate": 24000, "channels": 1, "frame_ms": 20,
    }
    assert json.loads(protocol.encode(protocol.TtsDone("u1", 3, 60.0, 12.5, cancelled=False))) == {
        "type": "done", "id": "u1", "frames": 3, "audio_ms": 60.0, "first_audio_ms": 12.5, "cancelled": False,
    }
    assert json.loads(protocol.encode(protocol.Final("hi", 0.5, 1.0))) == {
        "type": "final", "text": "hi", "start": 0.5, "end": 1.0, "end_of_turn": True,
    }
    assert json.loads(protocol.encode(protocol.Final("hi", 0.5, 1.0, end_of_turn=False)))["end_of_turn"] is False
    # A final from a server that predates the field is an end of turn.
    assert protocol.parse_stt_server('{"type": "final", "text": "hi", "start": 0, "end": 1}').end_of_turn is True
    assert json.loads(protocol.encode(protocol.Cancel())) == {"type": "cancel"}
    assert protocol.parse_stt_client('{"type": "start"}') == protocol.SttStart(16000, "pcm_s16le", "en")


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"type": "dance"}',
        '{"no": "type"}',
        '{"type": "start", "sample_rate": "fast"}',
        '{"type": "start", "sample_rate": 16000, "encoding": "mp3"}',
        '{"type": "start", "sample_rate": 44100, "encoding": "opus"}',
        '{"type": "start", "endpoint_ms": 5}',
        '{"type": "start", "sample_rate": true}',
    ],
)
def test_bad_stt_messages_are_bad_message(raw):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_stt_client(raw)
    assert caught.value.code == ErrorCode.BAD_MESSAGE


@pytest.mark.parametrize("raw", ['{"type": "speak", "text": "hi"}', '{"type": "speak", "id": "", "text": "x"}',
                                 '{"type": "speak", "id": "a", "text": 5}', '{"type": "cancel", "id": 7}'])
def test_bad_tts_messages_are_bad_message(raw):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_tts_client(raw)
    assert caught.value.code == ErrorCode.BAD_MESSAGE


def test_short_frame_is_bad_audio():
    with pytest.raises(ProtocolError) as caught:
        protocol.unpack_frame(b"\x00" * 12)
    assert caught.value.code == ErrorCode.BAD_AUDIO


# ---- whatever a peer sends, the parsers answer a message or a ProtocolError, never another exception

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
# Every client field set to a value of every JSON type, beside the right message types: wrong types per field.
client_fields = ["type", "sample_rate", "encoding", "language", "endpoint_ms", "id", "text", "voice_id"]
client_objects = st.dictionaries(
    st.sampled_from(client_fields) | st.text(max_size=8),
    json_values | st.sampled_from(["start", "stop", "speak", "cancel", "opus", "pcm_s16le", "en", ""]),
    max_size=6,
)
server_objects = st.dictionaries(
    st.sampled_from(["type", "text", "start", "end", "words", "code", "message", "id", "sample_rate", "frames",
                     "audio_ms", "first_audio_ms", "cancelled", "t", "end_of_turn"]),
    json_values | st.sampled_from(["ready", "partial", "final", "error", "done", "start", "speech_started"]),
    max_size=8,
)
PARSERS = [protocol.parse_stt_client, protocol.parse_tts_client, protocol.parse_stt_server, protocol.parse_tts_server]


def parses_or_refuses(raw: str | bytes) -> None:
    for parse in PARSERS:
        try:
            message = parse(raw)
        except ProtocolError as e:
            assert e.code in set(ErrorCode) and e.message
        else:
            assert isinstance(message, protocol.Message)


@given(st.text() | st.binary())
def test_parsers_refuse_arbitrary_text_and_bytes_with_protocol_errors_only(raw):
    parses_or_refuses(raw)


@given(json_values | client_objects | server_objects)
def test_parsers_refuse_any_json_value_and_wrongly_typed_fields_with_protocol_errors_only(value):
    parses_or_refuses(json.dumps(value))


@pytest.mark.parametrize("raw", ["[" * 100_000, '{"a":' * 50_000, '{"type": "speak", "id": ' + "[" * 100_000])
def test_deeply_nested_json_is_a_bad_message_not_a_recursion_error(raw):
    """Found by the WebSocket fuzzer: 100 kB of '[' (well under the message size limit) made json.loads raise
    RecursionError, which no handler caught: the connection died with 1011 and a traceback in the log."""
    for parse in PARSERS:
        with pytest.raises(ProtocolError) as caught:
            parse(raw)
        assert caught.value.code == ErrorCode.BAD_MESSAGE


@given(st.binary(max_size=64))
def test_unpack_frame_round_trips_or_refuses_cleanly(data):
    try:
        seq, timestamp_us, packet = protocol.unpack_frame(data)
    except ProtocolError as e:
        assert e.code == ErrorCode.BAD_AUDIO and len(data) <= protocol.FRAME_HEADER.size
    else:
        assert packet and protocol.pack_frame(seq, timestamp_us, packet) == data


@given(st.integers(), st.integers(), st.binary(max_size=16))
def test_pack_frame_takes_only_what_the_header_can_carry(seq, timestamp_us, packet):
    try:
        data = protocol.pack_frame(seq, timestamp_us, packet)
    except struct.error:
        assert not (0 <= seq < 2**32 and 0 <= timestamp_us < 2**64)
    else:
        assert protocol.unpack_frame(data) == (seq, timestamp_us, packet) if packet else len(data) == 12
