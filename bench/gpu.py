"""GPU figures for Chatterbox and Whisper, one table (run by bench/gpu.sh on a CUDA machine).

- Chatterbox: the baked weights if GPU_SERVER_CHATTERBOX_MODEL_DIR holds them, else RANDOMLY INITIALISED modules
  of the real sizes (the compute is the same, so speed figures are honest; the audio is noise). First audio
  (synthesize called -> first chunk), RTF (wall time over audio time), and concurrent streams: N utterances at
  once, the largest N whose every chunk arrives before the audio before it has finished playing.
- Whisper: large-v3-turbo where the image bakes it, else the bundled multilingual base. Decode latency of a
  5 s utterance (beam 3), RTF, and concurrent real-time streams through the batcher's batch call.
"""

from __future__ import annotations

import argparse
import os
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


def chatterbox(settings: Settings):
    from gpu_server.engines.chatterbox import ENGLISH, ChatterboxSynthesizer

    if Path(settings.chatterbox_model_dir, "t3_cfg.safetensors").exists():
        english_only = settings.model_copy(update={"chatterbox_multilingual_dir": ""})
        return ChatterboxSynthesizer.load(english_only, cuda=True), "weights"
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS

    from tests.gpu_server import test_chatterbox_cpu as cpu

    LLAMA_CONFIGS["Llama_test"] = LLAMA_CONFIGS["Llama_520M"]  # full size: random_model's name, real shape
    cpu.chatterbox_stream.N_CFM_TIMESTEPS = 10
    model = cpu.random_model(ENGLISH, Path(tempfile.mkdtemp()))
    model.t3.to("cuda"), model.s3gen.to("cuda"), model.ve.to("cuda")
    model.conds = model.conds.to("cuda")
    model.device = "cuda"
    return ChatterboxSynthesizer({ENGLISH: model}, voices_dir=None, watermark=True, device="cuda"), "random"


def run_tts(engine, results: list, seconds: float) -> None:
    t0 = time.perf_counter()
    arrivals, played = [], 0.0
    for chunk in engine.synthesize(TEXT, None, seconds):
        arrivals.append((time.perf_counter() - t0, played))
        played += len(chunk) / 24000
    wall = time.perf_counter() - t0
    first = arrivals[0][0]
    late = any(at - first > before + 0.05 for at, before in arrivals[1:])
    results.append((first, wall / max(played, 1e-9), not late))


def tts_concurrency(engine, max_n: int) -> int:
    best = 0
    for n in range(1, max_n + 1):
        results: list = []
        threads = [threading.Thread(target=run_tts, args=(engine, results, 8.0)) for _ in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        if not all(ok for *_, ok in results):
            break
        best = n
    return best


def main(args: argparse.Namespace) -> None:
    from gpu_server.engines.whisper import WhisperTranscriber

    settings = Settings(device="cuda")
    rows = []
    engine, kind = chatterbox(settings)
    for _ in range(2):
        run_tts(engine, [], 2.0)  # warm
    results: list = []
    for _ in range(args.runs):
        run_tts(engine, results, 8.0)
    rows.append((f"Chatterbox ({kind})", "first audio", f"{np.median([r[0] for r in results]) * 1000:.0f} ms"))
    rows.append((f"Chatterbox ({kind})", "RTF", f"{np.median([r[1] for r in results]):.3f}"))
    rows.append((f"Chatterbox ({kind})", "concurrent real-time", str(tts_concurrency(engine, args.max_streams))))

    stt_model = None if Path(settings.gpu_stt_model).exists() else "base"
    whisper = WhisperTranscriber.load(settings.model_copy(update={"stt_model": stt_model}), cuda=True)
    name = whisper.info()["model"]
    audio = (np.random.default_rng(0).standard_normal(16000 * 5) * 0.05).astype(np.float32)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        whisper.transcribe(audio, language="en", beam_size=3)
        times.append(time.perf_counter() - t0)
    rows.append((name, "final decode (5 s)", f"{np.median(times) * 1000:.0f} ms"))
    rows.append((name, "RTF", f"{np.median(times) / 5:.3f}"))
    streams = 0
    for n in (1, 2, 4, 8, 16, 32):
        t0 = time.perf_counter()
        whisper.transcribe_batch([DecodeRequest(audio, "en", 1)] * n)  # one partial per stream
        if time.perf_counter() - t0 > 0.4:  # a partial every 400 ms per stream must keep up
            break
        streams = n
    rows.append((name, "concurrent real-time (partials)", f">= {streams}"))
    print(f"\n{'model':40s} {'figure':32s} value   [{os.environ.get('HOSTNAME', '')}]")
    for model, figure, value in rows:
        print(f"{model:40s} {figure:32s} {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-streams", type=int, default=6)
    main(parser.parse_args())
