"""Soak: one STT stream and one TTS stream against a real gpu_server process for many minutes; does memory stay put?

Runs ``python -m gpu_server serve`` as a separate process on a free loopback port (the bundled CPU models unless
GPU_SERVER_* variables say otherwise), then keeps two connections open for ``--minutes``, the way one companion
session uses a pod:

- TTS: speaks a sentence, reads its frames as they come (the server paces them at real time), waits a moment as
  a listener would, and speaks the next.
- STT: streams Piper speech with silence between sentences (so each one ends in a VAD endpoint and a final) in
  20 ms chunks at real time, without a break, and counts the finals.

Every ``--sample-s`` seconds it samples the server's RSS (``/proc/<pid>/status``) and prints a progress line. At
the end: the RSS table, RSS after the warm-up (median of the 2 minutes after ``--warmup-s``, default 120 s: one
sample swings by tens of MB with the buffers in flight) and at the end (median of the last 2 minutes), growth in
%, finals, TTS utterances and errors (``error`` messages, unexpected closes, a traceback, the secret or a token in
the server's output). Exit status 1 if the growth is 5% or more or there was any error.
Ctrl-C stops early and prints the figures so far.

Usage: .venv/bin/python bench/soak.py [--minutes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_server import client, protocol
from gpu_server.audio import resample
from gpu_server.auth import issue_token
from gpu_server.transcript import word_error_rate
from runpod_emulator.runner import allocate_port

SENTENCES = [
    "Could you tell me what the weather will be like tomorrow in Boston?",
    "Please remind me to call my sister when I get home from work.",
    "Turn off the lights in the kitchen and lock the front door.",
    "The meeting has been moved to Thursday afternoon because the manager is away.",
    "I would like a table for two at the Italian place near the station.",
    "Sure, I have added milk, eggs and bread to your shopping list.",
]
STT_RATE = 16000
CHUNK_S = protocol.FRAME_MS / 1000
SILENCE_S = 1.5  # after each sentence fed to STT: well past the 500 ms endpoint
LISTEN_PAUSE_S = 1.0  # between TTS replies
MAX_GROWTH_PCT = 5.0
WINDOW_MIN = 2.0  # RSS after warm-up and at the end: medians over this many minutes of samples


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Figures:
    started: float = field(default_factory=time.monotonic)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (minutes since start, MB)
    finals: int = 0
    finals_expected: int = 0  # sentences fed whose endpoint has passed
    finals_wer: list[float] = field(default_factory=list)
    utterances: int = 0
    tts_audio_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path
    secret: str

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def start_server(log_dir: Path) -> Server:
    port = allocate_port("127.0.0.1")
    secret = secrets.token_urlsafe(24)
    # No pod id: the tokens below name "local"; the soak's own secret, so nothing else's tokens get in.
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_SERVER_POD_ID", "HARPER_POD_ID", "RUNPOD_POD_ID")}
    env |= {"GPU_SERVER_SECRET": secret, "GPU_SERVER_HOST": "127.0.0.1", "GPU_SERVER_LOG_LEVEL": "info"}
    log = log_dir / "gpu_server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gpu_server", "serve", "--port", str(port)],
            env=env, cwd=Path(__file__).parents[1], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the soak only: it stops the streams, then the server
        )
    started = time.monotonic()
    while time.monotonic() - started < 180:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                say(f"gpu_server pid {process.pid} up on port {port} in {time.monotonic() - started:.1f} s")
                return Server(process, port, log, secret)
        if process.poll() is not None:
            raise SystemExit(f"gpu_server exited during start-up; see {log}")
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("gpu_server did not become healthy in 180 s")


async def speak_sentences(server: Server, token: str) -> list[np.ndarray]:
    """Each sentence spoken by the server's own TTS, as int16 at 16 kHz: what the STT stream is fed."""
    pcm = []
    async with client.TtsConnection(server.ws("/ws/tts"), token) as tts:
        for text in SENTENCES:
            speech = await tts.speak(text)
            audio = resample(speech.pcm.astype(np.float32) / 32768, speech.sample_rate, STT_RATE)
            pcm.append((np.clip(audio, -1, 1) * 32767).astype(np.int16))
    return pcm


async def tts_loop(server: Server, token: str, figures: Figures, stop: asyncio.Event) -> None:
    async with client.TtsConnection(server.ws("/ws/tts"), token) as tts:
        index = 0
        while not stop.is_set():
            try:
                speech = await tts.speak(SENTENCES[index % len(SENTENCES)])
            except client.SpeechServerError as e:
                figures.errors.append(f"tts error: {e}")
                continue
            if speech.cancelled or speech.audio_ms < 1000:
                figures.errors.append(f"tts utterance {speech.id}: cancelled={speech.cancelled} {speech.audio_ms} ms")
            figures.utterances += 1
            figures.tts_audio_s += speech.audio_ms / 1000
            index += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LISTEN_PAUSE_S)


async def stt_loop(server: Server, token: str, pcm: list[np.ndarray], figures: Figures, stop: asyncio.Event) -> None:
    silence = np.zeros(int(SILENCE_S * STT_RATE), np.int16)
    async with client.SttConnection(server.ws("/ws/stt"), token) as stt:
        await stt.send_start(sample_rate=STT_RATE)

        async def receive() -> None:
            async for raw in stt.ws:
                message = protocol.parse_stt_server(raw) if isinstance(raw, str) else None
                if isinstance(message, protocol.Error):
                    figures.errors.append(f"stt error: {message.code}: {message.message}")
                elif isinstance(message, protocol.Final) and message.text:
                    figures.finals += 1
                    fed = pending.pop(0) if pending else ""
                    figures.finals_wer.append(word_error_rate([fed], [message.text]))

        pending: list[str] = []  # sentences fed, oldest first, awaiting their final
        receiver = asyncio.create_task(receive(), name="soak-stt-receiver")
        began, sent_s, index = time.monotonic(), 0.0, 0
        try:
            while not stop.is_set():
                sentence = index % len(pcm)
                pending.append(SENTENCES[sentence])
                audio = np.concatenate([pcm[sentence], silence])
                step = int(CHUNK_S * STT_RATE)
                for i in range(0, len(audio), step):
                    # Absolute schedule: sleep jitter does not add up over the soak.
                    await asyncio.sleep(max(0.0, began + sent_s - time.monotonic()))
                    await stt.send_audio(audio[i : i + step].tobytes())
                    sent_s += CHUNK_S
                    if receiver.done():
                        raise ConnectionError(f"/ws/stt closed mid-soak (code {stt.ws.close_code})")
                figures.finals_expected += 1
                index += 1
            await stt.send_stop()
            await asyncio.wait_for(receiver, 60)
            if stt.ws.close_code != 1000:
                figures.errors.append(f"/ws/stt closed with {stt.ws.close_code}")
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver


async def sample_loop(server: Server, figures: Figures, stop: asyncio.Event, every_s: float) -> None:
    while True:
        figures.rss.append((figures.minutes(), server.rss_mb()))
        say(
            f"[{figures.minutes():6.1f} min] rss {figures.rss[-1][1]:7.1f} MB  finals {figures.finals}/"
            f"{figures.finals_expected}  tts utterances {figures.utterances}  errors {len(figures.errors)}"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return


def log_problems(server: Server, tokens: list[str]) -> list[str]:
    text = server.log.read_text(errors="replace")
    problems = []
    needles = [("Traceback", "a traceback"), (server.secret, "the pod secret"), *((t, "a token") for t in tokens)]
    for needle, what in needles:
        if needle in text:
            problems.append(f"server log contains {what}")
    problems += [f"server log: {line}" for line in text.splitlines() if " ERROR " in line][:5]
    return problems


def window_mb(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """Median RSS of the samples taken in [start, end) minutes: one sample swings by tens of MB with the
    decode and synthesis buffers in flight; a leak moves the whole window."""
    inside = [mb for minute, mb in samples if start <= minute < end]
    return float(np.median(inside)) if inside else float("nan")


def report(figures: Figures, warmup_min: float, idle_mb: float | None, interrupted: bool) -> int:
    say("\n minute   RSS MB")
    for minute, mb in figures.rss:
        say(f" {minute:6.1f}  {mb:7.1f}")
    last = figures.rss[-1][0] if figures.rss else 0.0
    after_warmup = window_mb(figures.rss, warmup_min, warmup_min + WINDOW_MIN)
    end = window_mb(figures.rss, max(warmup_min, last - WINDOW_MIN + 1e-9), last + 1)
    growth = (end - after_warmup) / after_warmup * 100
    wer = float(np.median(figures.finals_wer)) if figures.finals_wer else float("nan")
    say("")
    say(f"ran                 {figures.minutes():.1f} min{' (interrupted)' if interrupted else ''}")
    say(f"RSS after warm-up   {after_warmup:.1f} MB (median of minutes {warmup_min:g} to {warmup_min + WINDOW_MIN:g})")
    say(f"RSS at end          {end:.1f} MB (median of the last {WINDOW_MIN:g} minutes)")
    say(f"growth              {growth:+.2f} %  (limit {MAX_GROWTH_PCT:g} %)")
    say(f"RSS peak            {max((mb for _, mb in figures.rss), default=float('nan')):.1f} MB")
    if idle_mb is not None:
        say(f"RSS idle at end     {idle_mb:.1f} MB (both streams closed)")
    say(f"STT finals          {figures.finals} for {figures.finals_expected} sentences fed (median WER {wer:.2f})")
    say(f"TTS utterances      {figures.utterances} ({figures.tts_audio_s / 60:.1f} min of audio)")
    say(f"errors              {len(figures.errors)}")
    for error in figures.errors[:10]:
        say(f"  {error}")
    failed = bool(figures.errors) or not (growth < MAX_GROWTH_PCT)
    say("FAIL" if failed else "PASS")
    return 1 if failed else 0


async def soak(args: argparse.Namespace) -> int:
    figures = Figures()
    stop = asyncio.Event()
    interrupted = False
    idle_mb: float | None = None

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        say("interrupted: stopping the streams")
        stop.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupt)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = start_server(Path(tmp))
        tokens = [issue_token(server.secret, f"soak-{kind}", "local", time.time() + args.minutes * 60 + 3600)
                  for kind in ("stt", "tts")]
        try:
            pcm = await speak_sentences(server, tokens[1])
            figures.started = time.monotonic()
            tasks = [
                asyncio.create_task(stt_loop(server, tokens[0], pcm, figures, stop), name="soak-stt"),
                asyncio.create_task(tts_loop(server, tokens[1], figures, stop), name="soak-tts"),
                asyncio.create_task(sample_loop(server, figures, stop, args.sample_s), name="soak-rss"),
            ]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.minutes * 60)
            stop.set()
            for task, result in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
                if isinstance(result, BaseException):
                    figures.errors.append(f"{task.get_name()} failed: {result!r}")
            try:
                async with httpx.AsyncClient() as http:
                    streams = (await http.get(f"http://127.0.0.1:{server.port}/health")).json().get("streams")
            except httpx.HTTPError as e:
                streams = f"no answer from /health ({e!r})"
            if streams != {"stt": 0, "tts": 0}:
                figures.errors.append(f"streams still open after the soak: {streams}")
            await asyncio.sleep(2)
            idle_mb = server.rss_mb()
        finally:
            server.process.terminate()
            server.process.wait(timeout=30)
        figures.errors += log_problems(server, tokens)
    return report(figures, args.warmup_s / 60, idle_mb, interrupted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--warmup-s", type=float, default=120.0, help="RSS baseline taken after this (default 120)")
    parser.add_argument("--sample-s", type=float, default=30.0, help="RSS sample interval (default 30)")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
