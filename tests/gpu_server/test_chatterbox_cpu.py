"""Chatterbox end to end on CPU with RANDOMLY INITIALISED weights (marker `slow`; `make test-chatterbox`).

The modules are built directly (T3 with a shallow Llama, S3Gen, the voice encoder), with a character tokenizer
made here; no hub, no checkpoint. This proves the plumbing: the library's calls, the token loop, S3Gen's
streaming with its caches, the watermark over the stream, `/ws/tts` framing, cancel and language routing.
It proves NOTHING about voice quality: random weights speak noise. Quality is `test_chatterbox.py` (marker
`gpu`, real weights) and `bench/gpu.py`.

Needs torch and chatterbox-tts, which only the image's virtualenv has (`make image-venv`); elsewhere it skips.
"""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from gpu_server import client, protocol
from gpu_server.engines import EngineError, Engines

from .conftest import make_settings, serve, token

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch", reason="torch is only in the GPU image's virtualenv (make image-venv)")
pytest.importorskip("chatterbox", reason="chatterbox-tts is only in the GPU image's virtualenv (make image-venv)")

from gpu_server.engines import chatterbox_stream  # noqa: E402
from gpu_server.engines.chatterbox import (  # noqa: E402
    ENGLISH,
    MULTILINGUAL,
    ChatterboxSynthesizer,
    upstream_warnings_quiet,
)
from gpu_server.engines.chatterbox_stream import SAMPLE_RATE, TOKEN_RATE  # noqa: E402

# Two flow-matching steps instead of ten: the same calls and shapes at a fifth of the cost on a shared CPU.
chatterbox_stream.N_CFM_TIMESTEPS = 2

CHARS = [*"abcdefghijklmnopqrstuvwxyz.,!?'-", "\u0301", "\u0303"]  # NFKD accents of Spanish


def tokenizer_file(path: Path, languages: list[str]) -> str:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]", *(f"[{lang}]" for lang in languages)]
    vocab = {t: i for i, t in enumerate(specials + CHARS + [c.upper() for c in CHARS[:26]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\[[A-Za-z]+\]|."), behavior="isolated")
    tok.save(str(path))
    return str(path)


def prompt_wav(path: Path, seconds: float = 2.0) -> Path:
    """A voice prompt: a gliding harmonic tone with syllable-like bursts (the encoders only need audio)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    audio = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2) * 0.2
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((audio * 32767).astype(np.int16).tobytes())
    return path


def random_model(kind: str, tmp: Path):
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.tokenizers import EnTokenizer, MTLTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS
    from chatterbox.tts import ChatterboxTTS

    from gpu_server.engines.chatterbox_models import assemble

    # The real width (the conditioning perceiver is fixed at 1024), fewer layers: 14 keep the three attention
    # heads the multilingual alignment analyser reads (layers 9, 12, 13).
    layers = 14 if kind == MULTILINGUAL else 2
    LLAMA_CONFIGS["Llama_test"] = {**LLAMA_CONFIGS["Llama_520M"], "num_hidden_layers": layers, "intermediate_size": 512}
    hp = T3Config.multilingual() if kind == MULTILINGUAL else T3Config.english_only()
    hp.llama_config_name = "Llama_test"
    torch.manual_seed(0)
    with upstream_warnings_quiet():
        t3, s3gen, ve = T3(hp), S3Gen(), VoiceEncoder()
        if kind == MULTILINGUAL:
            tokenizer = MTLTokenizer(tokenizer_file(tmp / "mtl.json", ["en", "es"]))
            cls = ChatterboxMultilingualTTS
        else:
            tokenizer = EnTokenizer(tokenizer_file(tmp / "en.json", []))
            cls = ChatterboxTTS
        model = assemble(cls, t3, s3gen, ve, tokenizer, "cpu", None)
        with torch.inference_mode():
            model.prepare_conditionals(str(prompt_wav(tmp / "builtin.wav")))  # stands in for conds.pt
    return model


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("voices")
    prompt_wav(path / "narrator.wav", 2.0)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory, voices) -> ChatterboxSynthesizer:
    tmp = tmp_path_factory.mktemp("chatterbox")
    models = {ENGLISH: random_model(ENGLISH, tmp), MULTILINGUAL: random_model(MULTILINGUAL, tmp)}
    return ChatterboxSynthesizer(models, voices_dir=str(voices), watermark=True, device="cpu")


@pytest.fixture(scope="module")
def running(engine):
    from gpu_server.engines.whisper import WhisperTranscriber
    from gpu_server.vad import SileroVad

    settings = make_settings(tts_engine="chatterbox", tts_max_audio_s=1.2)
    engines = Engines(stt=WhisperTranscriber.load(make_settings(), cuda=False), tts=engine, vad=SileroVad())
    with serve(settings, lambda _s: engines) as server:
        server.wait_healthy()
        yield server


def chunks_of(engine, text, seconds, language="en", voice_id=None) -> list[np.ndarray]:
    return list(engine.synthesize(text, voice_id, seconds, language))


def test_stream_is_whole_and_its_joins_are_continuous(engine):
    chunks = chunks_of(engine, "The quick brown fox jumps over the lazy dog.", 2.0)
    audio = np.concatenate(chunks)
    assert len(chunks) >= 3 and np.isfinite(audio).all()
    # Random T3 rarely samples its stop token: the cap decides, and every token's audio is there (no tail
    # dropped, nothing rendered twice): 25 tokens/s at 960 samples each.
    assert len(audio) == int(2.0 * TOKEN_RATE) * SAMPLE_RATE // TOKEN_RATE
    steps = np.abs(np.diff(audio))
    joins = np.cumsum([len(c) for c in chunks])[:-1]
    assert steps[joins - 1].max() <= np.quantile(steps, 0.999) * 1.5 + 1e-6, "a click at a chunk join"


def test_each_language_goes_to_its_model_and_others_are_refused(engine):
    assert engine.supports_language("es") and engine.supports_language("en") and not engine.supports_language("xx")
    spanish = np.concatenate(chunks_of(engine, "Hola, ¿qué tal?", 0.8, language="es"))
    assert 0 < len(spanish) <= 0.8 * SAMPLE_RATE + 960
    with pytest.raises(EngineError, match="xx"):
        chunks_of(engine, "Hello", 1.0, language="xx")
    assert engine.info()["models"] == [ENGLISH, MULTILINGUAL] and "es" in engine.info()["languages"]


def test_voices_are_prepared_once_completely(engine):
    engine.prepare_voice("narrator")
    conds = engine._voices[(ENGLISH, "narrator")]
    # Complete before publication: nothing left for T3 to add in place, and no autograd graph kept.
    assert conds.t3.cond_prompt_speech_emb is not None
    assert not conds.t3.speaker_emb.requires_grad and conds.t3.speaker_emb.grad_fn is None
    engine.prepare_voice("narrator")
    assert engine._voices[(ENGLISH, "narrator")] is conds
    with pytest.raises(EngineError):
        engine.prepare_voice("../etc/passwd")


async def test_ws_tts_streams_20_ms_opus_frames_at_24_khz(running):
    async with client.TtsConnection(running.ws("/ws/tts"), token()) as tts:
        speech = await tts.speak("Hello there, how are you today?", voice_id="narrator")
        spanish = await tts.speak("Buenos días.", language="es")
    for s in (speech, spanish):
        assert s.start.sample_rate == 24000 and s.start.codec == "opus" and s.start.frame_ms == 20
        assert not s.cancelled and len(s.frames) > 10
        assert len(s.pcm) == 480 * len(s.frames)  # each packet decodes to exactly 20 ms at 24 kHz
        assert [f.timestamp_us for f in s.frames] == [i * 20_000 for i in range(len(s.frames))]
        assert s.audio_ms == 20 * len(s.frames)
    assert [f.seq for f in speech.frames + spanish.frames] == list(range(len(speech.frames) + len(spanish.frames)))
    assert 1100 <= speech.audio_ms <= 1260  # the 1.2 s cap (tts_max_audio_s), padded to whole frames


async def test_cancel_mid_utterance_stops_the_stream(running):
    async with client.TtsConnection(running.ws("/ws/tts"), token()) as tts:
        id = await tts.send_speak("A long sentence that would go on for the whole budget of audio.")
        speech = await tts.collect(id, 0.0, cancel_after_frames=3)
        after = await tts.speak("Next.")
    assert speech.cancelled and 3 <= len(speech.frames) < 60
    assert not after.cancelled and len(after.frames) > 0


async def test_unsupported_language_is_an_error_at_speak(running):
    async with client.TtsConnection(running.ws("/ws/tts"), token()) as tts:
        await tts.ws.send(json.dumps({"type": "speak", "id": "x", "text": "Bonjour", "language": "xx"}))
        message = protocol.parse_tts_server(await asyncio.wait_for(tts.ws.recv(), 30))
    assert isinstance(message, protocol.Error) and "'xx'" in message.message
