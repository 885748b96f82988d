"""Chatterbox streaming on a real GPU with the baked weights (marker `gpu`; skipped without them).

Run on a pod or the device machine: ``pytest -m gpu tests/gpu_server/test_chatterbox.py``. Weights come
from ``GPU_SERVER_CHATTERBOX_MODEL_DIR`` (default /models/chatterbox, where Dockerfile.gpu bakes them).
"""

import asyncio
import time
import wave

import numpy as np
import pytest

from gpu_server import client
from gpu_server.engines import EngineError, Engines
from gpu_server.settings import Settings
from gpu_server.transcript import word_error_rate

pytestmark = pytest.mark.gpu

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest."


@pytest.fixture(scope="module")
def chatterbox(tmp_path_factory):
    pytest.importorskip("chatterbox", reason="chatterbox-tts is only installed in the GPU image")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from gpu_server.engines.chatterbox import ChatterboxSynthesizer

    voices = tmp_path_factory.mktemp("voices")
    settings = Settings(tts_engine="chatterbox", device="cuda", voices_dir=str(voices))
    try:
        return ChatterboxSynthesizer.load(settings, cuda=True)
    except EngineError as e:
        pytest.skip(str(e))


def timed_chunks(engine, text, max_audio_s=30.0, voice_id=None):
    started = time.monotonic()
    out = []
    for chunk in engine.synthesize(text, voice_id, max_audio_s):
        out.append((time.monotonic() - started, chunk))
    return out


def test_first_chunk_is_small_and_the_stream_keeps_ahead_of_playback(chatterbox):
    chunks = timed_chunks(chatterbox, SENTENCE)
    sizes = [len(c) / 24000 for _, c in chunks]
    assert len(chunks) >= 3
    assert sizes[0] <= 0.5  # FIRST_CHUNK_TOKENS minus holdback: ~0.3 s
    audio = np.concatenate([c for _, c in chunks])
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert 2.5 < len(audio) / 24000 < 15
    # Real-time: each chunk arrives before the audio before it has finished playing.
    played = 0.0
    first_at = chunks[0][0]
    for (at, _), size in zip(chunks[1:], sizes, strict=False):
        played += size
        assert at - first_at <= played + 0.25, f"underrun: chunk at {at:.2f}s, {played:.2f}s played"


def test_joins_are_smooth_and_the_remainder_is_flushed(chatterbox, tmp_path):
    chunks = [c for _, c in timed_chunks(chatterbox, SENTENCE)]
    audio = np.concatenate(chunks)
    steps = np.abs(np.diff(audio))
    boundaries = np.cumsum([len(c) for c in chunks])[:-1]
    # A click is a jump far above what the speech itself does; crossfaded joins stay in range.
    assert steps[boundaries - 1].max() <= np.quantile(steps, 0.999) * 1.5
    # The last words are there: Whisper on CPU hears the whole sentence, up to "forest".
    from gpu_server.audio import resample
    from gpu_server.engines.whisper import WhisperTranscriber

    whisper = WhisperTranscriber.load(Settings(device="cpu"), cuda=False)
    text = whisper.transcribe(resample(audio, 24000, 16000), language="en", beam_size=3).text
    assert word_error_rate([SENTENCE], [text]) < 0.2, text
    assert "forest" in text.lower()


def test_duration_cap_stops_generation(chatterbox):
    audio = np.concatenate([c for _, c in timed_chunks(chatterbox, SENTENCE * 4, max_audio_s=1.0)])
    assert len(audio) <= 1.0 * 24000 + 960  # 25 tokens, plus the vocoder's rounding


def test_voices_are_prepared_once_and_unknown_voices_refused(chatterbox):
    with pytest.raises(EngineError):
        chatterbox.prepare_voice("no-such-voice")
    chatterbox.prepare_voice(None)  # the built-in voice
    # A cloned voice from a prompt on disk: our own speech, saved as a wav.
    prompt = np.concatenate([c for _, c in timed_chunks(chatterbox, SENTENCE * 2)])[: 24000 * 8]
    with wave.open(str(chatterbox._voices_dir / "narrator.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(24000)
        f.writeframes((prompt * 32767).astype(np.int16).tobytes())
    t0 = time.monotonic()
    chatterbox.prepare_voice("narrator")
    first = time.monotonic() - t0
    t0 = time.monotonic()
    chatterbox.prepare_voice("narrator")
    assert time.monotonic() - t0 < first / 10  # cached
    assert "narrator" in chatterbox.info()["voices"]
    assert len(np.concatenate([c for _, c in timed_chunks(chatterbox, "Hello there.", voice_id="narrator")])) > 0


def test_ws_tts_streams_chatterbox_as_20_ms_opus(chatterbox):
    from gpu_server.engines.whisper import WhisperTranscriber
    from gpu_server.vad import SileroVad

    from .conftest import make_settings, serve, token

    settings = make_settings(tts_engine="chatterbox")
    engines = Engines(stt=WhisperTranscriber.load(Settings(device="cpu"), cuda=False), tts=chatterbox, vad=SileroVad())
    with serve(settings, lambda _s: engines) as running:
        running.wait_healthy()
        speech = asyncio.run(client.speak(running.ws("/ws/tts"), token(), SENTENCE))
    assert speech.sample_rate == 24000 and not speech.cancelled
    assert [f.seq for f in speech.frames] == list(range(len(speech.frames)))
    assert len(speech.pcm) == 480 * len(speech.frames)
    assert speech.first_audio_ms is not None and speech.first_audio_ms < 2000
