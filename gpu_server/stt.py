"""``SttStream``: the streaming speech-to-text pipeline of one `/ws/stt` connection.

Flow: audio bytes (PCM16 at any rate, or raw Opus packets) -> float32 16 kHz (soxr) -> Silero VAD, one
probability per 32 ms -> `vad.Endpointer` -> utterances (`utterance.Utterance`) -> Whisper, from two tasks
per connection that never let decodes pile up; decodes of all connections are batched together by
`batcher.DecodeBatcher`. Out come `protocol` messages through the ``emit`` callback.

What is decoded, and when:

- **at pauses** (``candidates``): once the speaker has been silent ~200 ms (or ~130 ms when the undecided
  tail is over ``COMMIT_AFTER_S`` long), the tail up to that pause is decoded with the final's beam. If
  the silence lasts to the endpoint, that is the final's tail, ready the moment the endpoint fires. If
  speech resumes, it is committed (see `utterance`; unless shorter than ``MIN_COMMIT_S``): the tail
  starts after it, so the decode left at the endpoint stays short however long the utterance.
- **partials**: every ``partial_interval_ms`` of new speech, the tail is re-decoded greedily. Words two
  consecutive partials agree on (LocalAgreement-2) are forced as the decoder prefix of the next one. A
  partial carries the committed text plus that hypothesis. If the model is busy, due partials merge.
- **finals**: at each VAD endpoint (``endpoint_ms`` of silence) and on ``stop``: the committed text plus
  the tail, ``end_of_turn: true``. A turn longer than ``max_utterance_s`` is also sent in parts as it goes:
  finals with ``end_of_turn: false``, each cut at the first committed sentence end of its last
  ``SPLIT_LOOKBACK_S``, or at ``max_utterance_s`` at the best committed pause there (forcing a commit at
  the best VAD pause if there is none). Finals overtake queued partials of every connection (`batcher`).

Nothing is decoded outside VAD speech; utterances with less than ``min_speech_ms`` of speech are dropped;
decoded text passes `transcript.is_hallucination` and Whisper's no_speech/log-prob rule. Memory is
bounded: the buffer holds the undecided tail (<= ``max_utterance_s``) plus a short pre-roll, and a client
that outruns the decoder is slowed down (its reads pause) instead of queueing unbounded finals.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from gpu_server import protocol
from gpu_server.audio import AudioBuffer, StreamResampler, pcm16_to_float
from gpu_server.batcher import DecodeBatcher
from gpu_server.engines import DecodeRequest, Transcriber, Transcription
from gpu_server.gate import BACKGROUND, URGENT
from gpu_server.metrics import SpeechMetrics
from gpu_server.opus import OpusDecoder
from gpu_server.protocol import ErrorCode, ProtocolError
from gpu_server.settings import Settings
from gpu_server.transcript import agreed_prefix, is_hallucination, join_segments
from gpu_server.utterance import Segment, Utterance
from gpu_server.vad import SAMPLE_RATE, WINDOW, EndpointConfig, Endpointer, SileroVad, SpeechEnd, SpeechStart

PREROLL_S = 0.3  # audio kept before the VAD onset: Silero fires a little after the first phoneme
TAIL_S = 0.2  # audio kept after the last speech window: word endings are quiet
EARLY_FINAL_MS = 200  # silence after which the tail is decoded as the likely final
COMMIT_PAUSE_MS = 100  # a shorter pause is enough to commit at once the tail is this long:
COMMIT_AFTER_S = 3.0
MIN_COMMIT_S = 4.0  # shorter stretches stay in the tail: a phrase decoded alone, without the words before, is misheard
SPLIT_LOOKBACK_S = 10.0  # a long turn is cut at the best pause of its last seconds
MAX_PENDING_FINALS = 4
# Decode the VAD for chunks up to this many windows on the event loop (~0.1 ms each); longer ones in a thread.
_INLINE_VAD_WINDOWS = 4

Emit = Callable[[protocol.Message], Awaitable[None]]


@dataclass
class Candidate:
    """The tail of ``utterance`` from ``start`` (its commit point then) to ``end``, decoded at a pause."""

    utterance: Utterance
    start: int
    end: int
    speech_end: int  # the last speech it covers
    forced: bool = False  # cut inside speech to split a long turn: committed as soon as it is decoded
    result: Transcription | None = None  # None while the decode runs
    resumed: int | None = None  # where speech resumed after it, once it has


@dataclass(frozen=True)
class FinalJob:
    utterance: Utterance
    start: int  # the final's start (the utterance's, when it was closed or split)
    end: int
    speech_end: int
    due_at: float  # monotonic time the end of the utterance was known (endpoint, stop or split)
    audio_start: int = 0
    audio: np.ndarray | None = None  # the tail from audio_start to end; None for a split (already decoded)
    head: tuple[Segment, ...] = ()  # a split's committed text

    @property
    def end_of_turn(self) -> bool:
        return self.audio is not None


class SttStream:
    def __init__(
        self,
        *,
        transcriber: Transcriber,
        vad: SileroVad,
        batcher: DecodeBatcher,
        settings: Settings,
        metrics: SpeechMetrics,
        emit: Emit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stt = transcriber
        self._batcher = batcher
        self._settings = settings
        self._metrics = metrics
        self._emit = emit
        self._clock = clock
        self._config = protocol.SttStart()
        self._configured = False
        self._refused: str | None = None  # the language of a refused start, until a start is accepted
        self._audio_seen = False
        self._opus: OpusDecoder | None = None
        self._resampler = StreamResampler(16000, SAMPLE_RATE)
        self._vad = vad.stream()
        self._endpointer = Endpointer(EndpointConfig(settings.vad_threshold, settings.endpoint_ms))
        self._buffer = AudioBuffer(int((settings.max_utterance_s + PREROLL_S + 2) * SAMPLE_RATE))
        self._utterance: Utterance | None = None
        self._utterances = 0
        self._last_arrival = clock()
        self._jobs: deque[FinalJob] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self._candidate: Candidate | None = None
        self._force_cut: int | None = None  # a long turn needs a commit up to here
        self._wake_final = asyncio.Event()
        self._wake_partial = asyncio.Event()
        self._progress = asyncio.Event()  # set at each commit and final: the tail got shorter
        self._stopping = False
        self._worker: asyncio.Task[None] | None = None

    @property
    def _tail_s(self) -> float:
        """Undecided audio of the open utterance."""
        utt = self._utterance
        return 0.0 if utt is None else (self._buffer.end - utt.committed_end) / SAMPLE_RATE

    @property
    def buffered_seconds(self) -> float:
        """Audio held in memory; bounded by ``max_utterance_s`` plus a pre-roll however long the stream."""
        return (self._buffer.end - self._buffer.start) / SAMPLE_RATE

    # ---- messages from the client

    async def start(self, config: protocol.SttStart) -> None:
        if self._configured or self._audio_seen:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "start must be the first message, and sent once")
        if not self._stt.supports_language(config.language):
            # Refused, not defaulted: audio sent after this gets an error until a start is accepted, so speech
            # in one language is never transcribed as another.
            self._refused = config.language
            model = self._stt.info().get("model", "this model")
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"language {config.language!r} is not supported by {model}; send a start with a language it serves",
            )
        self._refused = None
        self._config = config
        self._configured = True
        endpoint_ms = config.endpoint_ms or self._settings.endpoint_ms
        self._endpointer = Endpointer(EndpointConfig(self._settings.vad_threshold, endpoint_ms))
        self._resampler = StreamResampler(config.sample_rate, SAMPLE_RATE)
        if config.encoding == "opus":
            self._opus = OpusDecoder(config.sample_rate)
        await self._emit(protocol.Ready())

    async def audio(self, data: bytes) -> None:
        if self._stopping:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "audio after stop")
        if self._refused is not None:
            message = f"no audio is taken after language {self._refused!r} was refused"
            raise ProtocolError(ErrorCode.BAD_MESSAGE, message)
        if not self._configured and not self._audio_seen:
            await self._emit(protocol.Ready())  # defaults apply: 16 kHz PCM16, English
        self._audio_seen = True
        samples = self._decode(data)
        self._metrics.stt_audio_seconds.inc(len(samples) / self._config.sample_rate)
        if len(samples) * SAMPLE_RATE // self._config.sample_rate <= _INLINE_VAD_WINDOWS * WINDOW:
            audio, probs = self._ingest(samples)
        else:
            audio, probs = await asyncio.to_thread(self._ingest, samples)
        self._last_arrival = self._clock()
        self._buffer.append(audio)
        await self._advance(probs)
        await self._room.wait()  # backpressure: stop reading while finals are piling up
        while self._tail_s > self._settings.max_utterance_s + 1 and not self._stopping:
            # Audio faster than real time outran the commits that bound the tail: wait for the next one.
            self._progress.clear()
            await self._progress.wait()

    async def stop(self) -> None:
        """Flush the last utterance as a final, wait for every final, then send ``done``."""
        if self._stopping:
            return
        self._stopping = True
        tail = self._resampler.flush()
        self._buffer.append(tail)
        if self._utterance is not None and self._endpointer.in_speech:
            end = self._buffer.end
            self._close_utterance(end, speech_end=min(end, self._endpointer.last_speech_end))
        self._wake_final.set()
        if self._worker is not None:
            await self._worker
        await self._emit(protocol.Done())

    def run_worker(self) -> asyncio.Task[None]:
        self._worker = asyncio.create_task(self._work(), name="stt-decoder")
        return self._worker

    # ---- audio in

    def _decode(self, data: bytes) -> np.ndarray:
        if self._opus is not None:
            try:
                return pcm16_to_float(self._opus.decode(data))
            except OpusDecoder.Error as e:
                raise ProtocolError(ErrorCode.BAD_AUDIO, f"not an Opus packet ({e})") from e
        if len(data) % 2:
            raise ProtocolError(ErrorCode.BAD_AUDIO, "pcm_s16le audio must have an even number of bytes")
        return pcm16_to_float(data)

    def _ingest(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        audio = self._resampler.push(samples)
        return audio, self._vad.push(audio)

    async def _advance(self, probs: np.ndarray) -> None:
        ep = self._endpointer
        for prob in probs:
            event = ep.push(float(prob))
            utt = self._utterance
            if isinstance(event, SpeechStart):
                self._utterances += 1
                start = max(self._buffer.start, event.sample - int(PREROLL_S * SAMPLE_RATE))
                self._utterance = Utterance(self._utterances, start, partial_end=start)
                await self._emit(protocol.SpeechStarted(t=protocol.seconds(event.sample / SAMPLE_RATE)))
            elif isinstance(event, SpeechEnd) and utt is not None:
                end = min(ep.samples, event.sample + int(TAIL_S * SAMPLE_RATE))
                self._close_utterance(end, speech_end=event.sample)
            elif ep.in_speech and utt is not None:
                candidate = self._candidate
                if candidate is not None and candidate.utterance is utt and candidate.resumed is None:
                    if ep.last_speech_end > candidate.speech_end:
                        candidate.resumed = ep.last_speech_end - WINDOW
                        self._settle()
                length_s = (ep.samples - utt.start) / SAMPLE_RATE
                if length_s >= self._settings.max_utterance_s - SPLIT_LOOKBACK_S:
                    self._split_long_turn(must=length_s >= self._settings.max_utterance_s)
        self._schedule()
        if self._utterance is None:
            self._buffer.trim_before(self._buffer.end - int(PREROLL_S * SAMPLE_RATE))
        else:
            self._buffer.trim_before(self._utterance.committed_end)

    def _split_long_turn(self, *, must: bool) -> None:
        """Send the turn so far, up to a committed pause in the last ``SPLIT_LOOKBACK_S`` before
        ``max_utterance_s``, as a final that is not the end of the turn: at the first sentence end there,
        or (``must``: the turn reached ``max_utterance_s``) at the best pause there."""
        utt, ep = self._utterance, self._endpointer
        assert utt is not None
        lookback = utt.start + int((self._settings.max_utterance_s - SPLIT_LOOKBACK_S) * SAMPLE_RATE)
        keep = utt.split_point(after=lookback, sentence_end=not must)
        if keep is None and not must:
            return
        if keep is None:
            # No commit in the last seconds (the tail runs on without a pause long enough): commit the tail
            # up to its longest VAD pause there, or up to here if there is none, and split once that lands.
            if self._force_cut is None:
                pauses = [(b - a, (a + b) // 2) for a, b in ep.pauses if b > max(lookback, utt.committed_end)]
                self._force_cut = max(pauses)[1] if pauses else ep.samples
                self._wake_final.set()
            return
        start = utt.start
        head = utt.split(keep)
        ep.restart_utterance(utt.start)
        self._jobs.append(FinalJob(utt, start, utt.start, utt.start, self._clock(), head=tuple(head)))
        self._wake_final.set()

    def _close_utterance(self, end: int, *, speech_end: int) -> None:
        utt = self._utterance
        assert utt is not None
        self._utterance = None
        self._force_cut = None
        self._progress.set()
        speech_ms = self._endpointer.speech_windows * WINDOW * 1000 / SAMPLE_RATE
        if speech_ms < self._settings.min_speech_ms and utt.partials_sent == 0 and not utt.segments:
            return  # a click or a cough: not worth a decode, and never worth a text
        audio_start = utt.committed_end
        audio = self._buffer.slice(audio_start, end)
        self._jobs.append(FinalJob(utt, utt.start, end, speech_end, self._clock(), audio_start, audio))
        if len(self._jobs) >= MAX_PENDING_FINALS:
            self._room.clear()
        self._wake_final.set()

    def _schedule(self) -> None:
        if self._candidate_due() is not None:
            self._wake_final.set()
        if self._partial_due():
            self._wake_partial.set()

    @property
    def _partial_interval(self) -> int:
        return self._settings.partial_interval_ms * SAMPLE_RATE // 1000

    @property
    def _in_trailing_silence(self) -> bool:
        """Long enough after the last speech to decode the early final (and stop partials)."""
        ep = self._endpointer
        return ep.trailing_silence_ms >= min(EARLY_FINAL_MS, ep.config.endpoint_ms * 0.4)

    def _candidate_due(self) -> Candidate | None:
        """The decode at a pause (or the forced commit) due now; None if none is due or it is done."""
        utt, ep = self._utterance, self._endpointer
        if utt is None or not ep.in_speech:
            return None
        if self._force_cut is not None:
            if self._force_cut > utt.committed_end:
                cut = self._force_cut
                return Candidate(utt, utt.committed_end, cut, min(cut, ep.last_speech_end), forced=True)
            self._force_cut = None  # a commit got there first
        tail_s = (ep.last_speech_end - utt.committed_end) / SAMPLE_RATE
        pause = self._in_trailing_silence or (
            tail_s >= COMMIT_AFTER_S and ep.trailing_silence_ms >= COMMIT_PAUSE_MS
        )
        if not pause:
            return None
        c = self._candidate
        if c is not None and c.utterance is utt and c.start == utt.committed_end and c.speech_end == ep.last_speech_end:
            return None  # decoded (or decoding) already
        # Cut well inside the pause: Silero notices the next word a window or two late, and a cut at the
        # pause's far edge could take its first phoneme.
        after = min(TAIL_S * SAMPLE_RATE, ep.trailing_silence_ms * SAMPLE_RATE / 1000 * 0.6)
        end = min(self._buffer.end, ep.last_speech_end + int(after))
        return Candidate(utt, utt.committed_end, end, ep.last_speech_end)

    def _settle(self) -> None:
        """Commit the decoded candidate if speech went on after it (or it was forced); drop it if stale."""
        c = self._candidate
        if c is None or c.result is None:
            return
        utt = c.utterance
        if c.start != utt.committed_end:
            self._candidate = None
            return
        if c.resumed is not None and not c.forced and c.end - c.start < MIN_COMMIT_S * SAMPLE_RATE:
            self._candidate = None  # too short to stand alone: it stays in the tail
            return
        if c.forced or c.resumed is not None:
            pause_ms = 0.0 if c.resumed is None else (c.resumed - c.speech_end) * 1000 / SAMPLE_RATE
            utt.commit(Segment(self._text(c.result), c.start, c.end, pause_ms))
            self._endpointer.forget_pauses_before(c.end)
            self._progress.set()
            self._candidate = None
            if c.forced:
                self._force_cut = None

    # ---- decoding workers

    async def _work(self) -> None:
        """Finals and decodes at pauses here, partials in a task beside it: a final never waits for a
        partial of its own stream, and a partial that comes back after its tail changed is dropped."""
        partials = asyncio.create_task(self._partial_loop(), name="stt-partials")
        try:
            await self._final_loop()
        finally:
            partials.cancel()
            try:
                await partials
            except asyncio.CancelledError:
                pass

    async def _final_loop(self) -> None:
        while True:
            await self._wake_final.wait()
            self._wake_final.clear()
            while True:
                if self._jobs:
                    await self._finalize(self._jobs.popleft())
                    if len(self._jobs) < MAX_PENDING_FINALS:
                        self._room.set()
                elif (candidate := self._candidate_due()) is not None:
                    await self._decode_candidate(candidate)
                else:
                    break
            if self._stopping and not self._jobs:
                return

    async def _partial_loop(self) -> None:
        while True:
            await self._wake_partial.wait()
            self._wake_partial.clear()
            while self._partial_due():
                await self._partial()

    def _partial_due(self) -> bool:
        utt, ep = self._utterance, self._endpointer
        if utt is None or not ep.in_speech or self._stopping or self._in_trailing_silence:
            return False
        return ep.last_speech_end - utt.partial_end >= self._partial_interval

    async def _transcribe(self, audio: np.ndarray, *, final: bool, prefix: str = "") -> Transcription:
        beam = self._settings.final_beam_size if final else 1
        request = DecodeRequest(audio, self._config.language, beam, prefix or None)
        return await self._batcher.transcribe(request, priority=URGENT if final else BACKGROUND)

    def _accept(self, result: Transcription) -> bool:
        s = self._settings
        if result.no_speech_prob > s.no_speech_threshold and result.avg_logprob < s.logprob_threshold:
            return False  # Whisper's own silence rule
        return not is_hallucination(result.text, result.no_speech_prob, result.avg_logprob)

    def _text(self, result: Transcription) -> str:
        return result.text if self._accept(result) else ""

    async def _decode_candidate(self, candidate: Candidate) -> None:
        self._candidate = candidate
        audio = self._buffer.slice(candidate.start, candidate.end)
        candidate.result = await self._transcribe(audio, final=True)
        self._settle()

    async def _finalize(self, job: FinalJob) -> None:
        utt = job.utterance
        if job.audio is None:  # a split: its text is committed already
            text = join_segments([s.text for s in job.head])
            if not text:
                return
        else:
            tail: Transcription | None = None
            c = self._candidate
            if c is not None and c.utterance is utt:
                self._candidate = None
                if c.result is not None and c.start == utt.committed_end:
                    if c.speech_end == job.speech_end:
                        tail = c.result  # the early final: the silence after it lasted to the endpoint
                    elif c.speech_end < job.speech_end:
                        c.resumed = c.resumed if c.resumed is not None else c.speech_end
                        self._candidate = c
                        self._settle()
            if tail is None:
                audio = job.audio[max(0, utt.committed_end - job.audio_start) :]
                tail = await self._transcribe(audio, final=True)
            text = utt.text_with(self._text(tail))
            if not text and utt.partials_sent == 0:
                return  # nothing was shown for this utterance, and nothing will be
        await self._emit(
            protocol.Final(
                text=text,
                start=protocol.seconds(job.start / SAMPLE_RATE),
                end=protocol.seconds(job.speech_end / SAMPLE_RATE),
                end_of_turn=job.end_of_turn,
            )
        )
        if job.end_of_turn:  # a split is sent the moment it is decided: it would only dilute the histogram
            self._metrics.stt_final_latency.observe(max(0.0, self._clock() - job.due_at))

    async def _partial(self) -> None:
        utt, ep = self._utterance, self._endpointer
        assert utt is not None
        end = min(self._buffer.end, ep.samples)
        utt.partial_end = ep.last_speech_end
        arrival = self._last_arrival
        start, first = utt.committed_end, utt.start
        audio = self._buffer.slice(start, end)
        result = await self._transcribe(audio, final=False, prefix=utt.prefix)
        if self._utterance is not utt or utt.committed_end != start or utt.start != first:
            return  # a commit or split landed meanwhile: this hypothesis no longer lines up with the tail
        if not self._accept(result):
            return
        # An unchanged text is still sent: its new `end` tells the client we are keeping up.
        # Commit only what two hypotheses agree on, and never un-commit: the prefix was forced anyway.
        agreed = agreed_prefix(utt.previous, result.text)
        if len(agreed) > len(utt.prefix):
            utt.prefix = agreed
        utt.previous = result.text
        utt.partials_sent += 1
        await self._emit(
            protocol.Partial(
                text=utt.text_with(result.text),
                start=protocol.seconds(utt.start / SAMPLE_RATE),
                end=protocol.seconds(end / SAMPLE_RATE),
            )
        )
        self._metrics.stt_partial_latency.observe(max(0.0, self._clock() - arrival))
