"""protocol.py is pure: every message survives encode -> parse unchanged, bad input becomes ProtocolError."""

import json

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
