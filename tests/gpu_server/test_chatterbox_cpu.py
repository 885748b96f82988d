"""Chatterbox end to end on CPU with RANDOMLY INITIALISED, SHRUNK models (marker `slow`; `make test-chatterbox`).

This PROVES THE PLUMBING ONLY, and nothing about voice quality: random weights speak noise, and the models are
made narrow and shallow (`chatterbox_random.SMALL`: one flow block, a 64-channel estimator and vocoder, 2 or 14
Llama layers) and run 2 flow steps instead of 10, so that the whole module runs in a minute or two on a shared
2-core CPU. What it shows: chatterbox-tts 0.1.7's own modules and calls run under our engine (T3's token loop
with CFG and, multilingual, the alignment analyser; S3Gen streamed with its mel and source caches; Perth's
watermark over the stream), every token's audio comes out once, the stitched stream is one signal, `/ws/tts`
sends 20 ms Opus frames at 24 kHz from it, cancel stops it mid-utterance, and languages go to the right model.
Voice quality, latency and real-time speed are `test_chatterbox.py` and `bench/gpu.py` (marker `gpu`, real
weights, `make gpu-check` on a GPU).

Needs torch and chatterbox-tts, which only the image's virtualenv has (`make image-venv`); elsewhere it skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
    CHUNK_TOKENS,
    ENGLISH,
    FIRST_CHUNK_TOKENS,
    MULTILINGUAL,
    ChatterboxSynthesizer,
)
from gpu_server.engines.chatterbox_stream import (  # noqa: E402
    FRAME_SAMPLES,
    MEL_CACHE_FRAMES,
    TOKEN_FRAMES,
    S3GenStream,
    VocoderJoin,
)

from .chatterbox_random import CANGJIE, prompt_wav, random_model  # noqa: E402

TOKEN_SAMPLES = TOKEN_FRAMES * FRAME_SAMPLES  # 960: 40 ms of audio per speech token


@pytest.fixture(scope="module", autouse=True)
def cheap_cpu():
    """Two flow-matching steps instead of ten (the same calls and shapes), and one torch thread: on a shared
    2-core machine torch's second OpenMP worker spin-waits for a core someone else holds (T3's loop ran 8x
    faster on one thread under load). Only for this module: the `gpu` tests collected with it run the real ten."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chatterbox_stream, "N_CFM_TIMESTEPS", 2)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("voices")
    prompt_wav(path / "narrator.wav", 2.0)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory, voices, cheap_cpu) -> ChatterboxSynthesizer:
    tmp = tmp_path_factory.mktemp("chatterbox")
    models = {ENGLISH: random_model(ENGLISH, tmp), MULTILINGUAL: random_model(MULTILINGUAL, tmp)}
    return ChatterboxSynthesizer(models, voices_dir=str(voices), watermark=True, device="cpu")


@pytest.fixture
def sampled(engine, monkeypatch) -> list[int]:
    """Every speech token T3's loop hands to S3Gen during the test (random weights also sample ids >= 6561,
    which upstream drops and which take a step without adding audio)."""
    tokens: list[int] = []
    loop = engine._speech_tokens

    def recording(*args, **kwargs):
        for sampled_token in loop(*args, **kwargs):
            tokens.append(sampled_token)
            yield sampled_token

    monkeypatch.setattr(engine, "_speech_tokens", recording)
    return tokens


@pytest.fixture(scope="module")
def serve_engine(engine):
    """``serve_engine(tts_max_audio_s)``: a real server on this engine (Whisper tiny.en and Silero for STT)."""
    from gpu_server.engines.whisper import WhisperTranscriber
    from gpu_server.vad import SileroVad

    engines = Engines(stt=WhisperTranscriber.load(make_settings(), cuda=False), tts=engine, vad=SileroVad())

    @contextlib.contextmanager
    def start(max_audio_s: float):
        with serve(make_settings(tts_engine="chatterbox", tts_max_audio_s=max_audio_s), lambda _s: engines) as s:
            s.wait_healthy()
            yield s

    return start


@pytest.fixture(scope="module")
def running(serve_engine):
    with serve_engine(1.2) as server:
        yield server


def test_every_sampled_token_comes_out_once_in_streamed_chunks(engine, sampled):
    chunks = list(engine.synthesize("The quick brown fox jumps over the lazy dog.", None, 3.0, "en"))
    audio = np.concatenate(chunks)
    # 75 steps: chunks after 16 and 41 tokens, then the rest; nothing dropped at the end, nothing twice.
    assert len(sampled) > FIRST_CHUNK_TOKENS + CHUNK_TOKENS and len(chunks) >= 3
    assert len(audio) == len(sampled) * TOKEN_SAMPLES
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert len(sampled) <= 3.0 * 25  # the cap counts T3 steps


def test_the_streamed_rendering_is_one_signal(engine):
    """S3Gen streamed in windows against one render of all tokens, same utterance seed: the flow continues one
    sample (noise fixed per utterance, each frame rendered once), and at each vocoder join the held audio and
    its re-rendering agree (mel and excitation-source caches), so the crossfade joins a signal to itself."""
    model = engine._models[ENGLISH]
    ref = engine._voices[(ENGLISH, None)].gen
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 6561, 70)]
    overlaps: list[tuple[np.ndarray, np.ndarray]] = []

    class Join(VocoderJoin):
        def push(self, speech, *, final):
            if self._held is not None:
                overlaps.append((self._held.copy(), np.array(speech[: len(self._held)], np.float32)))
            return super().push(speech, final=final)

    def render(cuts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        stream = S3GenStream(torch, model.s3gen, ref, generator=torch.Generator().manual_seed(7), max_tokens=70)
        stream._join = Join(MEL_CACHE_FRAMES * FRAME_SAMPLES)
        mels: list = []
        vocode = stream._vocode

        def keep_mel(mel, *, final):
            mels.append(mel.clone())
            return vocode(mel, final=final)

        stream._vocode = keep_mel
        audio = np.concatenate([stream.push(tokens[:n], final=n == len(tokens)) for n in cuts])
        return torch.cat(mels, dim=2)[0].numpy(), audio

    whole_mel, whole = render([70])
    overlaps.clear()
    mel, audio = render([16, 41, 66, 70])
    assert mel.shape == whole_mel.shape == (80, 70 * TOKEN_FRAMES)
    assert len(audio) == len(whole) == 70 * TOKEN_SAMPLES
    # Measured: 0.19 (the streamed windows lack right context beyond the 3-token lookahead); a stream that
    # draws fresh noise per call, as the first version did, is another sample altogether: 1.1.
    assert relative_difference(mel, whole_mel) < 0.5
    assert len(overlaps) == 3
    for held, again in overlaps:
        assert len(held) == MEL_CACHE_FRAMES * FRAME_SAMPLES
        middle = slice(len(held) // 4, -len(held) // 4)
        # Measured: 0.013 in the middle of the overlap; without the source cache (excitation restarted) 0.087.
        assert relative_difference(again[middle], held[middle]) < 0.04


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def test_each_language_goes_to_its_model_and_others_are_refused(engine, sampled):
    assert engine.supports_language("es") and engine.supports_language("en") and not engine.supports_language("xx")
    spanish = np.concatenate(list(engine.synthesize("Hola, ¿qué tal?", None, 0.8, "es")))
    assert len(spanish) == len(sampled) * TOKEN_SAMPLES and 0 < len(sampled) <= 20
    with pytest.raises(EngineError, match="xx"):
        list(engine.synthesize("Hello", None, 1.0, "xx"))
    info = engine.info()
    assert info["models"] == [ENGLISH, MULTILINGUAL] and {"en", "es", "zh"} <= set(info["languages"])
    # The Cangjie table (Chinese) was found offline in the hub-cache layout Dockerfile.gpu lays out.
    tokenizer = engine._models[MULTILINGUAL].tokenizer
    assert tokenizer.cangjie_converter.word2cj == dict(entry.split("\t") for entry in CANGJIE)


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
    # The multilingual model's alignment analyser may end a random-weight utterance early (it forces the stop
    # token on what looks like a repetition or a long tail): Spanish needs only some frames.
    assert len(speech.frames) > 10 and len(spanish.frames) > 0
    for s in (speech, spanish):
        assert s.start.sample_rate == 24000 and s.start.codec == "opus" and s.start.frame_ms == 20
        assert not s.cancelled
        assert len(s.pcm) == 480 * len(s.frames)  # each packet decodes to exactly 20 ms at 24 kHz
        assert [f.timestamp_us for f in s.frames] == [i * 20_000 for i in range(len(s.frames))]
        assert s.audio_ms == 20 * len(s.frames) <= 1220  # the 1.2 s cap (tts_max_audio_s), in whole frames
        assert np.abs(s.pcm).max() > 0
    assert [f.seq for f in speech.frames + spanish.frames] == list(range(len(speech.frames) + len(spanish.frames)))


async def test_cancel_mid_utterance_stops_sampling_and_sending(serve_engine, sampled):
    with serve_engine(6.0) as server:  # uncancelled: 150 T3 steps, about 120 tokens, 240 frames
        async with client.TtsConnection(server.ws("/ws/tts"), token()) as tts:
            id = await tts.send_speak("A long sentence that would go on for the whole budget of audio.")
            speech = await tts.collect(id, 0.0, cancel_after_frames=3)
            stopped_at = len(sampled)
            id = await tts.send_speak("Next.")
            after = await tts.collect(id, 0.0, cancel_after_frames=1)
    # The frame on its way when the cancel was read may still arrive; the stream stops there, and the engine's
    # generator was closed at the next chunk boundary (16, then 41 tokens), not run to the cap.
    assert speech.cancelled and 3 <= len(speech.frames) < 10
    assert stopped_at <= FIRST_CHUNK_TOKENS + CHUNK_TOKENS
    assert after.start is not None and len(after.frames) >= 1  # the connection speaks on


async def test_unsupported_language_is_an_error_at_speak(running):
    async with client.TtsConnection(running.ws("/ws/tts"), token()) as tts:
        await tts.ws.send(json.dumps({"type": "speak", "id": "x", "text": "Bonjour", "language": "xx"}))
        message = protocol.parse_tts_server(await asyncio.wait_for(tts.ws.recv(), 30))
    assert isinstance(message, protocol.Error) and "'xx'" in message.message
