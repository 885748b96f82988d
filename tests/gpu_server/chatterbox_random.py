"""Chatterbox models with RANDOMLY INITIALISED weights, built from chatterbox-tts's own modules: no hub, no
checkpoint, a character tokenizer written here. Random weights speak noise: nothing built here says anything
about voice quality.

- ``size=SMALL`` (`test_chatterbox_cpu.py`): the same classes and calls, fewer and narrower layers, so the
  plumbing runs in seconds on a shared 2-core CPU. What the streaming arithmetic depends on is kept: 25 speech
  tokens/s, 2 mel frames per token, the flow encoder's 3-token lookahead, HiFT's 480x upsampling to 24 kHz,
  T3's width (the conditioning perceiver is fixed at 1024) and, for the multilingual model, the attention layers
  and heads the alignment analyser reads.
- ``size=FULL`` (`bench/gpu.py`): the real dimensions, so the compute and the speed figures are those of the
  real weights.
"""

from __future__ import annotations

import contextlib
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpu_server.engines.chatterbox import MULTILINGUAL, upstream_warnings_quiet
from gpu_server.engines.chatterbox_stream import SAMPLE_RATE

SMALL, FULL = "small", "full"

CANGJIE = ["\u4f60\tonf", "\u597d\tvnd"]  # two entries of the real table's "glyph<TAB>code" form
CHARS = [*"abcdefghijklmnopqrstuvwxyz.,!?'-", "\u0301", "\u0303"]  # NFKD accents of Spanish


def tokenizer_file(path: Path, languages: list[str]) -> str:
    """A character-level tokenizer in the Hugging Face format EnTokenizer and MTLTokenizer read."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]", *(f"[{lang}]" for lang in languages)]
    vocab = {t: i for i, t in enumerate(specials + CHARS + [c.upper() for c in CHARS[:26]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\[[A-Za-z]+\]|."), behavior="isolated")
    tok.save(str(path))
    return str(path)


def hub_cache_cangjie(model_dir: Path, entries: list[str]) -> None:
    """The Chinese Cangjie table where the multilingual tokenizer looks for it (``hf_hub_download(cache_dir=
    <its directory>)``, revision main), laid out as Dockerfile.gpu leaves it: a hub cache, refs/main naming the
    snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = model_dir / "models--ResembleAI--chatterbox"
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "Cangjie5_TC.json").write_text(json.dumps(entries, ensure_ascii=False))


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """As the image runs (HF_HUB_OFFLINE=1): the hub is never asked, the local cache answers or nothing does."""
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


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


def _t3(kind: str, size: str) -> Any:
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.inference.alignment_stream_analyzer import LLAMA_ALIGNED_HEADS
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    hp = T3Config.multilingual() if kind == MULTILINGUAL else T3Config.english_only()
    if size == SMALL:
        # The analyser reads layers 9, 12 and 13 of the multilingual model: it keeps 14 layers, English 2;
        # narrow MLPs either way. The name is per shape, so a FULL model built later is not shrunk.
        layers = 1 + max(layer for layer, _ in LLAMA_ALIGNED_HEADS) if kind == MULTILINGUAL else 2
        name = f"Llama_random_{layers}"
        LLAMA_CONFIGS[name] = {**LLAMA_CONFIGS["Llama_520M"], "num_hidden_layers": layers, "intermediate_size": 256}
        hp.llama_config_name = name
    return T3(hp)


def _shrink_s3gen(s3gen: Any) -> None:
    """Swap the flow's encoder and estimator and the vocoder for narrow, shallow ones of the same classes."""
    from chatterbox.models.s3gen.decoder import ConditionalDecoder
    from chatterbox.models.s3gen.f0_predictor import ConvRNNF0Predictor
    from chatterbox.models.s3gen.hifigan import HiFTGenerator
    from chatterbox.models.s3gen.transformer.upsample_encoder import UpsampleConformerEncoder

    flow = s3gen.flow
    old = flow.encoder
    # Width 512 stays (the pre-lookahead layer and encoder_proj are built for it); one block, narrow MLP.
    flow.encoder = UpsampleConformerEncoder(
        output_size=512, attention_heads=8, linear_units=256, num_blocks=1, input_size=512,
        normalize_before=True, input_layer="linear", pos_enc_layer_type="rel_pos_espnet",
        selfattention_layer_type="rel_selfattn", use_cnn_module=False, macaron_style=False,
    )
    assert flow.encoder.pre_lookahead_layer.pre_lookahead_len == old.pre_lookahead_layer.pre_lookahead_len
    flow.decoder.estimator = ConditionalDecoder(
        in_channels=320, out_channels=80, causal=True, channels=[64], dropout=0.0, attention_head_dim=32,
        n_blocks=1, num_mid_blocks=1, num_heads=2, act_fn="gelu",
    )
    s3gen.mel2wav = HiFTGenerator(
        sampling_rate=SAMPLE_RATE, base_channels=64, upsample_rates=[8, 5, 3], upsample_kernel_sizes=[16, 11, 7],
        source_resblock_kernel_sizes=[7, 7, 11], source_resblock_dilation_sizes=[[1, 3, 5]] * 3,
        f0_predictor=ConvRNNF0Predictor(),
    )


def random_model(
    kind: str, tmp: Path, *, size: str = SMALL, device: str = "cpu", languages: tuple[str, ...] = ("en", "es")
) -> Any:
    """A ``ChatterboxTTS`` (ENGLISH) or ``ChatterboxMultilingualTTS`` (MULTILINGUAL) on ``device``, random
    weights, its built-in voice (upstream's ``conds.pt``) prepared from a synthetic prompt. ``tmp``: scratch.
    """
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.tokenizers import EnTokenizer, MTLTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS
    from chatterbox.tts import ChatterboxTTS

    from gpu_server.engines.chatterbox_models import assemble

    torch.manual_seed(0)
    with upstream_warnings_quiet():
        t3, s3gen, ve = _t3(kind, size), S3Gen(), VoiceEncoder()
        if size == SMALL:
            _shrink_s3gen(s3gen)
        if kind == MULTILINGUAL:
            model_dir = tmp / f"multilingual-{size}"
            model_dir.mkdir(exist_ok=True)
            hub_cache_cangjie(model_dir, CANGJIE)
            with hub_offline():
                tokenizer = MTLTokenizer(tokenizer_file(model_dir / "mtl.json", list(languages)))
            cls = ChatterboxMultilingualTTS
        else:
            tokenizer = EnTokenizer(tokenizer_file(tmp / f"en-{size}.json", []))
            cls = ChatterboxTTS
        model = assemble(cls, t3, s3gen, ve, tokenizer, device, None)
        with torch.inference_mode():
            model.prepare_conditionals(str(prompt_wav(tmp / "builtin.wav")))  # stands in for conds.pt
    return model
