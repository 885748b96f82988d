"""/ws/tts over a real socket: 20 ms Opus frames with the DESIGN.md header, queueing, cancel, limits."""

import asyncio
import threading

import numpy as np
import pytest

from gpu_server import client, protocol
from gpu_server.engines import Engines
from gpu_server.gate import ModelGate
from gpu_server.metrics import SpeechMetrics
from gpu_server.opus import OpusDecoder
from gpu_server.tts import TtsSession

from .conftest import SENTENCES, make_settings, token

LONG_TEXT = " ".join(SENTENCES * 3)


def test_frames_are_20_ms_opus_with_header_sequence_and_timestamps(spoken):
    seq = 0
    for speech in spoken.speeches:
        assert speech.start == protocol.TtsStart(speech.id, sample_rate=24000)
        assert not speech.cancelled and speech.first_audio_ms is not None
        assert speech.audio_ms == len(speech.frames) * 20 > 1000
        decoder = OpusDecoder(24000)
        for index, frame in enumerate(speech.frames):
            # seq counts per connection (across utterances); timestamps restart with each utterance.
            assert (frame.seq, frame.timestamp_us) == (seq, index * 20_000)
            assert len(decoder.decode(frame.packet)) == 480  # exactly 20 ms at 24 kHz
            seq += 1
        assert len(speech.pcm) == len(speech.frames) * 480
        assert np.abs(speech.pcm).max() > 3000  # speech, not silence


async def test_cancel_with_id_stops_that_utterance_and_the_queue_goes_on(server):
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        long_id = await tts.send_speak(LONG_TEXT, id="long")
        await tts.send_speak("Okay, stopping now.", id="next")
        cut = await tts.collect(long_id, 0.0, cancel_after_frames=5)
        after = await tts.collect("next", 0.0)
    assert cut.cancelled
    # The whole text is ~40 s of audio; frames already in flight when cancel arrived are all that came.
    assert 5 <= len(cut.frames) and cut.audio_ms < 8000
    assert not after.cancelled and after.audio_ms > 500
    assert after.frames[0].seq == cut.frames[-1].seq + 1


async def test_cancel_without_id_drops_current_and_queued(server):
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        for i in range(3):
            await tts.send_speak(LONG_TEXT, id=f"u{i}")
        events = []
        async for event in tts.events():
            events.append(event)
            if isinstance(event, client.Frame) and sum(isinstance(e, client.Frame) for e in events) == 3:
                await tts.send_cancel()
            if isinstance(event, protocol.TtsDone) and event.id == "u2":
                break
    dones = {e.id: e for e in events if isinstance(e, protocol.TtsDone)}
    starts = [e.id for e in events if isinstance(e, protocol.TtsStart)]
    assert all(d.cancelled for d in dones.values()) and set(dones) == {"u0", "u1", "u2"}
    assert starts == ["u0"]  # queued ones never started
    assert dones["u1"].frames == dones["u2"].frames == 0


async def test_session_stops_within_one_frame_of_cancel(engines: Engines):
    """At the session seam: no frame is emitted after the cancel has been handled."""
    sent: list[bytes] = []
    messages: list[protocol.Message] = []
    cancelled_at: list[int] = []
    session: TtsSession

    async def emit_frame(data: bytes) -> None:
        sent.append(data)
        if len(sent) == 7:
            await session.cancel(protocol.Cancel("x"))
            cancelled_at.append(len(sent))

    finished = asyncio.Event()

    async def emit(message: protocol.Message) -> None:
        messages.append(message)
        if isinstance(message, protocol.TtsDone):
            finished.set()

    session = TtsSession(
        synthesizer=engines.tts, gate=ModelGate(1), settings=make_settings(), metrics=SpeechMetrics(),
        emit=emit, emit_frame=emit_frame,
    )
    worker = session.run_worker()
    await session.speak(protocol.Speak("x", LONG_TEXT))
    await asyncio.wait_for(finished.wait(), 30)
    worker.cancel()
    assert cancelled_at == [7] and len(sent) == 7
    assert messages[-1] == protocol.TtsDone("x", 7, 140.0, messages[-1].first_audio_ms, cancelled=True)


async def test_frames_arrive_at_most_the_lead_ahead_of_real_time(server):
    """Paced: a client that plays frames as they come holds at most the lead (300 ms) after the first burst,
    never most of the reply (Piper synthesizes it ~20x faster than it plays)."""
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        speech = await tts.speak(" ".join(SENTENCES[:2]))
    first = speech.frames[0].received_at
    ahead = [(k + 1) * 0.02 - (frame.received_at - first) for k, frame in enumerate(speech.frames)]
    lead = make_settings().tts_max_ahead_ms / 1000
    assert speech.audio_ms > 4000
    assert max(ahead) <= lead + 0.02 + 0.15  # the burst and the frame playing, plus delivery jitter
    assert max(ahead[: int(lead / 0.02)]) >= lead * 0.5  # the first burst does come at once


class WrappedPiper:
    """The real Piper voice behind the engine interface, for doubles that change one behaviour."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.sample_rate = engine.sample_rate
        self.short_first_piece = engine.short_first_piece

    def supports_language(self, language) -> bool:
        return self._engine.supports_language(language)

    def voice_ready(self, voice_id, language="en") -> bool:
        return True

    def prepare_voice(self, voice_id, language="en") -> None:
        return None


class BlockingPiper(WrappedPiper):
    """The real Piper voice, except that its second chunk waits in the worker thread until released: a
    synthesis call still running when the cancel comes."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.entered = threading.Event()
        self.release = threading.Event()
        self._chunks = 0

    def synthesize(self, text, voice_id, max_audio_s, language="en"):
        for chunk in self._engine.synthesize(text, voice_id, max_audio_s, language):
            self._chunks += 1
            if self._chunks == 2:
                self.entered.set()
                self.release.wait(30)
            yield chunk


async def test_cancel_sends_done_at_once_without_waiting_for_the_synthesis_in_flight(engines: Engines):
    piper = BlockingPiper(engines.tts)
    sent: list[bytes] = []
    messages: list[protocol.Message] = []
    still_synthesizing: list[bool] = []
    finished = asyncio.Event()
    session: TtsSession

    async def emit_frame(data: bytes) -> None:
        sent.append(data)
        if len(sent) == 3:
            await asyncio.to_thread(piper.entered.wait, 30)  # the second chunk is being synthesized
            await session.cancel(protocol.Cancel("x"))

    async def emit(message: protocol.Message) -> None:
        messages.append(message)
        if isinstance(message, protocol.TtsDone):
            still_synthesizing.append(not piper.release.is_set())
            finished.set()

    session = TtsSession(
        synthesizer=piper, gate=ModelGate(1), settings=make_settings(), metrics=SpeechMetrics(),
        emit=emit, emit_frame=emit_frame,
    )
    worker = session.run_worker()
    await session.speak(protocol.Speak("x", "Okay. " + LONG_TEXT))
    await asyncio.wait_for(finished.wait(), 30)
    piper.release.set()
    await asyncio.sleep(0.2)  # the abandoned chunk comes back from its thread: nothing more may be sent
    worker.cancel()
    assert still_synthesizing == [True]
    assert len(sent) == 3 and messages[-1] == protocol.TtsDone("x", 3, 60.0, messages[-1].first_audio_ms, cancelled=True)


class SlowToFinish(WrappedPiper):
    """The real Piper voice, except that after its first piece's audio the engine takes its time to say it
    has no more (the model is busy with other connections)."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.finishing = threading.Event()
        self.release = threading.Event()
        self._pieces = 0

    def synthesize(self, text, voice_id, max_audio_s, language="en"):
        self._pieces += 1
        yield from self._engine.synthesize(text, voice_id, max_audio_s, language)
        if self._pieces == 1:
            self.finishing.set()
            self.release.wait(30)


async def test_the_first_audio_does_not_wait_to_learn_that_its_piece_is_over(engines: Engines):
    """The first piece ("The kitchen lights", cut mid-sentence, so its trailing silence is trimmed) is sent
    while the engine is still asked whether more of it is coming."""
    piper = SlowToFinish(engines.tts)
    sent_while_finishing: list[bool] = []
    finished = asyncio.Event()

    async def emit_frame(data: bytes) -> None:
        sent_while_finishing.append(piper.finishing.is_set() and not piper.release.is_set())
        if sent_while_finishing.count(True) == 3:
            piper.release.set()  # held back until the end of the piece is known, no frame would ever come

    async def emit(message: protocol.Message) -> None:
        if isinstance(message, protocol.TtsDone):
            finished.set()

    session = TtsSession(
        synthesizer=piper, gate=ModelGate(1), settings=make_settings(), metrics=SpeechMetrics(),
        emit=emit, emit_frame=emit_frame,
    )
    worker = session.run_worker()
    await session.speak(protocol.Speak("x", "The kitchen lights are now turned off."))
    await asyncio.wait_for(finished.wait(), 30)
    worker.cancel()
    assert sent_while_finishing.count(True) == 3 and len(sent_while_finishing) > 50


async def test_limits_give_clear_errors_and_the_connection_keeps_working(server):
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        with pytest.raises(client.SpeechServerError) as caught:
            await tts.speak("word " * 1000)  # over max_text_chars (2000)
        assert caught.value.code == "too_large"
        for raw in ("{not json", '{"type": "speak", "text": "no id"}'):
            await tts.ws.send(raw)
            assert protocol.parse_tts_server(await tts.ws.recv()).code == "bad_message"
        await tts.ws.send(b"\x00\x01binary")
        assert protocol.parse_tts_server(await tts.ws.recv()).code == "bad_message"
        speech = await tts.speak("Still here.")
    assert speech.audio_ms > 300 and not speech.cancelled


async def test_generated_audio_is_capped_per_request(start_server):
    with start_server(tts_max_audio_s=2.0) as capped:
        async with client.TtsConnection(capped.ws("/ws/tts"), token()) as tts:
            await tts.send_speak(LONG_TEXT, id="long")
            events = []
            async for event in tts.events():
                events.append(event)
                if isinstance(event, protocol.TtsDone):
                    break
    errors = [e for e in events if isinstance(e, protocol.Error)]
    assert [e.code for e in errors] == ["too_large"] and "2 s" in errors[0].message
    done = events[-1]
    assert not done.cancelled and 1500 <= done.audio_ms <= 2100


def test_the_stream_rate_is_chatterbox_own_24000_and_the_setting_for_piper(engines):
    class Native24k:  # what the session reads of a Chatterbox synthesizer
        sample_rate = 24000

    def session(synthesizer, rate):
        return TtsSession(synthesizer=synthesizer, gate=ModelGate(1), settings=make_settings(tts_sample_rate=rate),
                          metrics=SpeechMetrics(), emit=None, emit_frame=None)

    assert session(Native24k(), 16000).sample_rate == 24000
    assert engines.tts.sample_rate == 22050  # Piper
    assert session(engines.tts, 16000).sample_rate == 16000 and session(engines.tts, 24000).sample_rate == 24000


@pytest.mark.parametrize("noise", [None, 0.0])
def test_piper_noise_at_zero_makes_the_same_text_the_same_audio(noise):
    """Tests and benches compare transcripts of synthesized speech: with Piper's noise at 0 (what
    tests/conftest.py sets) one text is one waveform, so a word error found once is found every time."""
    from gpu_server.engines.piper import PiperSynthesizer

    # None: the voice's own noise (0.667 / 0.8), stated here because the test session's environment sets 0.
    scale, w_scale = (0.667, 0.8) if noise is None else (noise, noise)
    piper = PiperSynthesizer.load(make_settings(piper_noise_scale=scale, piper_noise_w_scale=w_scale))
    text = "Seven in the evening would be perfect."
    renders = [np.concatenate(list(piper.synthesize(text, None, 10))) for _ in range(3)]
    same = [len(r) == len(renders[0]) and np.array_equal(r, renders[0]) for r in renders[1:]]
    assert same == ([True, True] if noise == 0.0 else [False, False])


class Recording(WrappedPiper):
    """The real Piper voice, whole texts as one piece (as for Chatterbox), recording the order in which the
    model is asked for each text's first chunk."""

    def __init__(self, engine, *, short_first_piece: bool = False) -> None:
        super().__init__(engine)
        self.short_first_piece = short_first_piece
        self.order: list[str] = []

    def synthesize(self, text, voice_id, max_audio_s, language="en"):
        self.order.append(text)
        yield from self._engine.synthesize(text, voice_id, max_audio_s, language)


async def replies_while_the_model_is_busy(engines: Engines, texts: list[str]) -> tuple[Recording, list[list]]:
    """Each text spoken on its own connection, all asked while the only model slot is held; the slot is
    freed once every reply has queued. Returns the engine (its ``order``) and each connection's messages
    seen while the slot was held."""
    piper, gate = Recording(engines.tts), ModelGate(1)
    hold = threading.Event()
    blocker = asyncio.create_task(gate.run(hold.wait, 30))
    await asyncio.sleep(0.05)
    seen: list[list] = [[] for _ in texts]
    finished = [asyncio.Event() for _ in texts]
    workers = []
    for i, text in enumerate(texts):

        async def emit(message: protocol.Message, i: int = i) -> None:
            seen[i].append(message)
            if isinstance(message, protocol.TtsDone):
                finished[i].set()

        async def emit_frame(data: bytes) -> None:
            return None

        session = TtsSession(
            synthesizer=piper, gate=gate, settings=make_settings(), metrics=SpeechMetrics(), emit=emit,
            emit_frame=emit_frame,
        )
        workers.append(session.run_worker())
        await session.speak(protocol.Speak(f"r{i}", text))
        await asyncio.sleep(0.05)  # each one asks the model in the order given
    async with asyncio.timeout(10):
        while gate.waiting < len(texts):  # noqa: ASYNC110 (the gate has no event to wait on)
            await asyncio.sleep(0.01)
    held = [list(messages) for messages in seen]
    hold.set()
    await blocker
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in finished)), 60)
    for worker in workers:
        worker.cancel()
    return piper, held


async def test_among_new_replies_the_shortest_first_piece_is_synthesized_first(engines: Engines):
    """Many replies starting at once: in arrival order the short one would wait for the long one; shortest
    first lowers the median first audio."""
    long = "The meeting has been moved to Thursday afternoon because the manager is away."
    piper, _ = await replies_while_the_model_is_busy(engines, [long, "Okay."])
    assert piper.order == ["Okay.", long]


async def test_a_reply_starts_without_queueing_for_the_model_when_its_voice_is_ready(engines: Engines):
    """Piper's voice is always ready: ``start`` comes while the model is busy, not after a turn at it."""
    _, held = await replies_while_the_model_is_busy(engines, ["Okay."])
    assert held == [[protocol.TtsStart("r0", sample_rate=24000)]]


class Busy(ModelGate):
    """A real gate that reports other callers waiting for the model, as it does when replies start at once."""

    waiting = 3


@pytest.mark.parametrize("gate", [ModelGate, Busy])
async def test_with_others_waiting_the_second_piece_is_a_phrase_too(engines: Engines, gate):
    """A first piece of half a second needs its next audio within half a second: while the model is shared,
    the second piece is cut at a phrase boundary; with the model free it stays a whole sentence."""
    piper = Recording(engines.tts, short_first_piece=True)
    finished = asyncio.Event()

    async def emit(message: protocol.Message) -> None:
        if isinstance(message, protocol.TtsDone):
            finished.set()

    async def emit_frame(data: bytes) -> None:
        return None

    session = TtsSession(
        synthesizer=piper, gate=gate(2), settings=make_settings(), metrics=SpeechMetrics(), emit=emit,
        emit_frame=emit_frame,
    )
    worker = session.run_worker()
    await session.speak(protocol.Speak("x", "Sure, I can help you with that right away."))
    await asyncio.wait_for(finished.wait(), 30)
    worker.cancel()
    rest = ["I can help you", "with that right away."] if gate is Busy else ["I can help you with that right away."]
    assert piper.order == ["Sure,", *rest]
