"""GPU figures for Chatterbox and Whisper, one table (run by bench/gpu.sh, `make gpu-check`, on a CUDA machine).

- Chatterbox: the baked weights if GPU_SERVER_CHATTERBOX_MODEL_DIR holds them, else RANDOMLY INITIALISED modules
  of the real sizes (`tests/gpu_server/chatterbox_random.py`, FULL: the compute is that of the real weights, so
  the speed figures are honest; the audio is noise, and random T3 all but never samples its stop token, so an
  utterance runs to its cap). Per utterance of ``--seconds`` of audio: first audio (synthesize called -> first
  chunk), RTF (wall time over audio time), and the playout buffer it needed: the most any chunk arrived after
  the audio before it had finished playing, counting from the first chunk (0: a client that plays from the
  first chunk never starves). Concurrent streams: N utterances at once, the largest N that each need at most
  ``PLAYOUT_BUFFER_S`` (the budget `tests/gpu_server/test_chatterbox.py` asserts).
- Whisper: large-v3-turbo where the image bakes it, else the bundled multilingual base; only where faster-whisper
  is installed (the image's virtualenv; not the device tool's wheels). Final decode of 5 s (beam 3), RTF, and
  the batch of concurrent streams' partials decoded inside 400 ms (one per stream per 400 ms keeps them live).

``--cpu-dry-run``: the same code on CPU with the SMALL random models and tiny runs, to prove the script before a
GPU is spent on it; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_server.engines import DecodeRequest
from gpu_server.settings import Settings

TEXT = "Sure, I can help you with that. Your next meeting starts in ten minutes, so let's get going."
PLAYOUT_BUFFER_S = 0.25


def chatterbox(settings: Settings, device: str, size: str):
    from gpu_server.engines.chatterbox import ENGLISH, ChatterboxSynthesizer

    if device == "cuda" and Path(settings.chatterbox_model_dir, "t3_cfg.safetensors").exists():
        english_only = settings.model_copy(update={"chatterbox_multilingual_dir": ""})
        return ChatterboxSynthesizer.load(english_only, cuda=True), "weights"
    from tests.gpu_server.chatterbox_random import random_model

    model = random_model(ENGLISH, Path(tempfile.mkdtemp()), size=size, device=device)
    engine = ChatterboxSynthesizer({ENGLISH: model}, voices_dir=None, watermark=True, device=device)
    return engine, f"random {size}"


def run_tts(engine, results: list, seconds: float) -> None:
    t0 = time.perf_counter()
    arrivals, played = [], 0.0
    for chunk in engine.synthesize(TEXT, None, seconds):
        arrivals.append((time.perf_counter() - t0, played))
        played += len(chunk) / 24000
    wall = time.perf_counter() - t0
    first = arrivals[0][0]
    buffer = max([0.0] + [at - first - before for at, before in arrivals[1:]])
    results.append({"first": first, "rtf": wall / max(played, 1e-9), "buffer": buffer})


def tts_concurrency(engine, max_n: int, seconds: float) -> int:
    best = 0
    for n in range(1, max_n + 1):
        results: list = []
        threads = [threading.Thread(target=run_tts, args=(engine, results, seconds)) for _ in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        if len(results) < n or max(r["buffer"] for r in results) > PLAYOUT_BUFFER_S:
            break
        best = n
    return best


def whisper_rows(settings: Settings, cuda: bool, runs: int) -> list[tuple[str, str, str]]:
    if importlib.util.find_spec("faster_whisper") is None:
        return [("Whisper", "not measured here", "(no faster-whisper in this Python: the image's virtualenv has it)")]
    from gpu_server.engines.whisper import WhisperTranscriber

    stt_model = None if cuda and Path(settings.gpu_stt_model).exists() else "base"
    whisper = WhisperTranscriber.load(settings.model_copy(update={"stt_model": stt_model}), cuda=cuda)
    name = whisper.info()["model"]
    audio = (np.random.default_rng(0).standard_normal(16000 * 5) * 0.05).astype(np.float32)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        whisper.transcribe(audio, language="en", beam_size=3)
        times.append(time.perf_counter() - t0)
    streams = 0
    for n in (1, 2, 4, 8, 16, 32):
        t0 = time.perf_counter()
        whisper.transcribe_batch([DecodeRequest(audio, "en", 1)] * n)  # one partial per stream
        if time.perf_counter() - t0 > 0.4:  # a partial every 400 ms per stream must keep up
            break
        streams = n
    return [
        (name, "final decode (5 s, beam 3)", f"{np.median(times) * 1000:.0f} ms"),
        (name, "RTF", f"{np.median(times) / 5:.3f}"),
        (name, "concurrent streams (partials)", f">= {streams}"),
    ]


def main(args: argparse.Namespace) -> None:
    import torch

    dry = args.cpu_dry_run
    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device (use --cpu-dry-run to check the script on CPU)")
    if dry:
        from gpu_server.engines import chatterbox_stream

        chatterbox_stream.N_CFM_TIMESTEPS = 2
        args.runs, args.max_streams, args.seconds = 1, 1, 1.0
    settings = Settings(device=device)
    engine, kind = chatterbox(settings, device, "small" if dry else "full")
    for _ in range(2):
        run_tts(engine, [], 2.0)  # warm: CUDA kernels, allocator, Perth
    results: list = []
    for _ in range(args.runs):
        run_tts(engine, results, args.seconds)
    label = f"Chatterbox ({kind})"

    def median(key: str) -> float:
        return float(np.median([r[key] for r in results]))

    rows = [
        (label, f"first audio ({args.seconds:g} s utterance)", f"{median('first') * 1000:.0f} ms"),
        (label, "RTF", f"{median('rtf'):.3f}"),
        (label, "playout buffer needed", f"{max(r['buffer'] for r in results) * 1000:.0f} ms"),
        (label, f"concurrent streams (buffer <= {PLAYOUT_BUFFER_S * 1000:.0f} ms)",
         str(tts_concurrency(engine, args.max_streams, args.seconds))),
    ]
    rows += whisper_rows(settings, not dry, args.runs)
    where = torch.cuda.get_device_name() if not dry else f"CPU DRY RUN ({platform.processor() or 'cpu'}): meaningless"
    print(f"\n{'model':44s} {'figure':42s} value    [{where}; torch {torch.__version__}; "
          f"{os.environ.get('HOSTNAME', '')}]")
    for model, figure, value in rows:
        print(f"{model:44s} {figure:42s} {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-streams", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per utterance (random T3 runs to it)")
    parser.add_argument("--cpu-dry-run", action="store_true")
    main(parser.parse_args())
