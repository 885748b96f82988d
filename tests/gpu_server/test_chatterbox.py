"""Chatterbox streaming on a real GPU with the baked weights (marker `gpu`; skipped without a CUDA device or
without the weights, as on the device machine, which cannot reach the hub).

Run in the image, or through `make gpu-check` (bench/gpu.sh). Weights come from ``GPU_SERVER_CHATTERBOX_MODEL_DIR``
and ``GPU_SERVER_CHATTERBOX_MULTILINGUAL_DIR`` (defaults /models/chatterbox and /models/chatterbox-multilingual,
where Dockerfile.gpu bakes them). The same engine on CPU with random weights is `test_chatterbox_cpu.py`.
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
SPANISH = "Mañana por la mañana quiero ir al mercado a comprar fruta fresca."
# The client starts playing at the first frame with this much buffered ahead; a chunk arriving later than the
# audio before it plus this is an audible gap (bench/gpu.py reports the buffer each run actually needed).
PLAYOUT_BUFFER_S = 0.25


@pytest.fixture(scope="module")
def chatterbox(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="torch is only in the GPU image's virtualenv")
    from gpu_server.engines.chatterbox import ChatterboxSynthesizer, upstream_warnings_quiet

    with upstream_warnings_quiet():  # chatterbox imports Perth, which imports the deprecated pkg_resources
        pytest.importorskip("chatterbox", reason="chatterbox-tts is only installed in the GPU image")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")

    voices = tmp_path_factory.mktemp("voices")
    settings = Settings(tts_engine="chatterbox", device="cuda", voices_dir=str(voices))
    try:
        return ChatterboxSynthesizer.load(settings, cuda=True)
    except EngineError as e:
        pytest.skip(str(e))


def timed_chunks(engine, text, max_audio_s=30.0, voice_id=None, language="en"):
    started = time.monotonic()
    out = []
    for chunk in engine.synthesize(text, voice_id, max_audio_s, language):
        out.append((time.monotonic() - started, chunk))
    return out


def test_first_chunk_is_small_and_the_stream_keeps_ahead_of_playback(chatterbox):
    chunks = timed_chunks(chatterbox, SENTENCE)
    sizes = [len(c) / 24000 for _, c in chunks]
    assert len(chunks) >= 3
    # FIRST_CHUNK_TOKENS less what waits for lookahead (3 tokens), the vocoder's overlap (8 mel frames) and the
    # watermark's right context (0.25 s): 0.11 s.
    assert sizes[0] <= 0.5
    audio = np.concatenate([c for _, c in chunks])
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert 2.5 < len(audio) / 24000 < 15
    # Real-time: each chunk arrives before the audio before it has finished playing.
    played = 0.0
    first_at = chunks[0][0]
    for (at, _), size in zip(chunks[1:], sizes, strict=False):
        played += size
        assert at - first_at <= played + PLAYOUT_BUFFER_S, f"underrun: chunk at {at:.2f}s, {played:.2f}s played"


def test_info_names_the_models_languages_and_watermark(chatterbox):
    info = chatterbox.info()
    assert info["engine"] == "chatterbox" and info["device"] == "cuda" and info["sample_rate"] == 24000
    assert "english" in info["models"] and "en" in info["languages"]
    assert info["watermark"] is True  # the image pins a Perth that has the implicit watermarker
    if "multilingual" in info["models"]:
        assert {"es", "fr", "zh", "ja"} <= set(info["languages"])


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


def test_spanish_is_spoken_by_the_multilingual_model(chatterbox):
    if "multilingual" not in chatterbox.info()["models"]:
        pytest.skip("no multilingual weights (GPU_SERVER_CHATTERBOX_MULTILINGUAL_DIR)")
    from gpu_server.audio import resample
    from gpu_server.engines.whisper import WhisperTranscriber

    audio = np.concatenate([c for _, c in timed_chunks(chatterbox, SPANISH, language="es")])
    assert np.isfinite(audio).all() and 2.0 < len(audio) / 24000 < 12
    whisper = WhisperTranscriber.load(Settings(device="cpu", stt_model="base"), cuda=False)
    text = whisper.transcribe(resample(audio, 24000, 16000), language="es", beam_size=3).text
    assert word_error_rate([SPANISH], [text]) < 0.4, text
    assert "mercado" in text.lower()


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
