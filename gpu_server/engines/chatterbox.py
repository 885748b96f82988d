"""Chatterbox (resemble-ai, ``chatterbox-tts`` 0.1.7) with real streaming: the GPU text-to-speech engine.

Upstream ``generate`` samples every speech token with T3 and only then runs S3Gen over all of them, so the first
audio waits for the whole sentence. Here T3's sampling loop runs as a generator (the maths of ``T3.inference``:
CFG pair, alignment analyser on the multilingual model, repetition penalty, temperature, min-p, top-p) and the
tokens go through S3Gen as one continuous stream (`chatterbox_stream.S3GenStream`): the first chunk after
``FIRST_CHUNK_TOKENS`` tokens, then every ``CHUNK_TOKENS``; when T3 stops (or hits the duration cap) the rest is
rendered with ``finalize=True``: no tail is ever dropped.

Languages: English uses the English checkpoint (``ChatterboxTTS``); other languages the multilingual one
(``ChatterboxMultilingualTTS``, 23 languages, ``language_id`` through its tokenizer), loaded when
``chatterbox_multilingual_dir`` holds it. With only the multilingual model, it serves English too.

Voices: ``<voices_dir>/<voice_id>.wav`` prompts become conditionals once per (model, voice) and are kept;
``voice_id`` None is the checkpoint's built-in voice (``conds.pt``). A voice is prepared completely, under the
voice lock and in inference mode (no autograd graph kept), including the T3 prompt embedding that upstream adds
to the conditionals in place on first use, before any stream can read it.

Watermark: Perth's implicit watermark, as upstream ``generate`` applies it, but over the stream continuously
(`watermark.StreamWatermarker`) rather than per chunk. Some Perth installs expose no watermarker
(resemble-ai/chatterbox#198); then the engine serves without it and ``info()["watermark"]`` says so.

torch and chatterbox are imported inside ``load`` only: this module is importable on a CPU box without them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpu_server.engines import EngineError
from gpu_server.engines.chatterbox_stream import SAMPLE_RATE, TOKEN_RATE, S3GenStream
from gpu_server.engines.watermark import StreamWatermarker
from gpu_server.settings import Settings

log = logging.getLogger(__name__)

FIRST_CHUNK_TOKENS = 16  # 13 tokens rendered (3 wait for their lookahead), 8 mel frames held: ~0.36 s of audio
CHUNK_TOKENS = 25  # one second of speech per later chunk
ENGLISH, MULTILINGUAL = "english", "multilingual"
_VOICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Per checkpoint, as upstream's generate() defaults them.
_REPETITION_PENALTY = {ENGLISH: 1.2, MULTILINGUAL: 2.0}


@contextlib.contextmanager
def upstream_warnings_quiet() -> Iterator[None]:
    """Building the models warns about upstream's own choices (diffusers' LoRACompatibleLinear deprecation,
    Perth's pkg_resources import): not actionable here, and fatal under ``-W error``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LoRACompatibleLinear")
        warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*weight_norm.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*weight_norm.*", category=UserWarning)
        # librosa.load (voice prompts) imports audioread, which imports modules Python 3.13 drops.
        warnings.filterwarnings("ignore", message=r"'(aifc|audioop|sunau)' is deprecated", category=DeprecationWarning)
        yield


class ChatterboxSynthesizer:
    sample_rate = SAMPLE_RATE
    # Each piece is a separate render whose first 40 ms are muted and faded (upstream's trim_fade), and T3 has
    # no fixed cost a short piece would save: whole sentences, no short first clause (that suits Piper).
    short_first_piece = False

    def __init__(self, models: dict[str, Any], *, voices_dir: str | None, watermark: bool, device: str) -> None:
        import torch

        if not models:
            raise EngineError("no Chatterbox model to serve")
        self._torch = torch
        self._models = models
        self._device = device
        self._voices_dir = Path(voices_dir) if voices_dir else None
        self._voices: dict[tuple[str, str | None], Any] = {}
        self._voice_lock = threading.Lock()
        any_model = next(iter(models.values()))
        self._watermarker = any_model.watermarker if watermark else None
        self._backends = {kind: self._make_backend(model) for kind, model in models.items()}
        self._capture = None
        if MULTILINGUAL in models:
            from chatterbox.models.t3.inference.alignment_stream_analyzer import LLAMA_ALIGNED_HEADS

            from gpu_server.engines.chatterbox_models import AttentionCapture

            self._capture = AttentionCapture(models[MULTILINGUAL].t3.tfmr, [layer for layer, _ in LLAMA_ALIGNED_HEADS])
        for kind, model in models.items():
            if model.conds is not None:
                self._voices[(kind, None)] = self._finish_conditionals(model, model.conds)

    @classmethod
    def load(cls, settings: Settings, *, cuda: bool) -> ChatterboxSynthesizer:
        if not cuda:
            raise EngineError("Chatterbox needs a CUDA GPU; use GPU_SERVER_TTS_ENGINE=piper on CPU")
        try:
            with upstream_warnings_quiet():
                import perth

                if getattr(perth, "PerthImplicitWatermarker", None) is None:
                    # The model classes call it unconditionally; substitute a no-op (see module docstring).
                    log.warning("Perth has no implicit watermarker in this install; audio will not be watermarked")
                    perth.PerthImplicitWatermarker = _NoWatermark
                from gpu_server.engines import chatterbox_models
        except ImportError as e:
            raise EngineError(f"chatterbox-tts is not installed ({e}); it belongs to the GPU image") from e
        models: dict[str, Any] = {}
        with upstream_warnings_quiet():
            if settings.chatterbox_model_dir:
                models[ENGLISH] = chatterbox_models.load_english(settings.chatterbox_model_dir, "cuda")
            if settings.chatterbox_multilingual_dir:
                models[MULTILINGUAL] = chatterbox_models.load_multilingual(settings.chatterbox_multilingual_dir, "cuda")
        engine = cls(models, voices_dir=settings.voices_dir, watermark=settings.tts_watermark, device="cuda")
        for voice_id in settings.preload_voices:
            engine.prepare_voice(voice_id)
        for language in engine.warm_languages():  # CUDA kernels and caches warm before users come
            for _ in engine.synthesize("Hello.", None, 2.0, language):
                pass
        return engine

    def info(self) -> dict[str, Any]:
        return {
            "engine": "chatterbox",
            "voice": "default",
            "models": sorted(self._models),
            "languages": self.languages(),
            "voices": sorted({v for _, v in self._voices if v is not None}),
            "sample_rate": SAMPLE_RATE,
            "device": self._device,
            "watermark": self._watermarker is not None and not isinstance(self._watermarker, _NoWatermark),
        }

    # ---- languages

    def languages(self) -> list[str]:
        found = {"en"} if ENGLISH in self._models else set()
        if MULTILINGUAL in self._models:
            from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

            found |= set(SUPPORTED_LANGUAGES)
        return sorted(found)

    def supports_language(self, language: str) -> bool:
        return language.lower() in self.languages()

    def warm_languages(self) -> list[str]:
        return ["en"] if ENGLISH in self._models else ["es"]

    def _kind(self, language: str) -> str:
        language = language.lower()
        if not self.supports_language(language):
            raise EngineError(f"language {language!r} is not served here; Chatterbox speaks {self.languages()}")
        return ENGLISH if language == "en" and ENGLISH in self._models else MULTILINGUAL

    # ---- voices

    def voice_ready(self, voice_id: str | None, language: str = "en") -> bool:
        # False for a language not served: prepare_voice then says so.
        return self.supports_language(language) and (self._kind(language), voice_id) in self._voices

    def prepare_voice(self, voice_id: str | None, language: str = "en") -> None:
        self._conditionals(self._kind(language), voice_id)

    def _conditionals(self, kind: str, voice_id: str | None) -> Any:
        conds = self._voices.get((kind, voice_id))
        if conds is not None:
            return conds
        if voice_id is None:
            raise EngineError("these Chatterbox weights have no built-in voice (conds.pt); pass a voice_id")
        if not _VOICE_ID.match(voice_id) or self._voices_dir is None:
            raise EngineError(f"unknown voice {voice_id!r}")
        prompt = self._voices_dir / f"{voice_id}.wav"
        if not prompt.is_file():
            raise EngineError(f"unknown voice {voice_id!r}: no {prompt.name} in the voices directory")
        model = self._models[kind]
        with self._voice_lock:
            if (kind, voice_id) not in self._voices:
                # prepare_conditionals leaves its result on the shared model; take it, put the default back,
                # and publish it only once it is complete.
                saved = model.conds
                try:
                    with self._torch.inference_mode(), upstream_warnings_quiet():
                        model.prepare_conditionals(str(prompt))
                    conds = model.conds
                finally:
                    model.conds = saved
                self._voices[(kind, voice_id)] = self._finish_conditionals(model, conds)
        return self._voices[(kind, voice_id)]

    def _finish_conditionals(self, model: Any, conds: Any) -> Any:
        """Everything upstream would compute on first use, computed now (T3 adds the prompt's speech
        embedding to the conditionals in place; S3Gen casts the reference tensors in place)."""
        with self._torch.inference_mode():
            model.t3.prepare_conditioning(conds.t3)
            s3gen = model.s3gen
            # Two mel frames per prompt token, as S3Gen's flow assumes (upstream's embed_ref trims only one way);
            # the streaming arithmetic counts on it.
            gen = conds.gen
            tokens = min(gen["prompt_token"].shape[1], gen["prompt_feat"].shape[1] // 2)
            gen["prompt_token"] = gen["prompt_token"][:, :tokens]
            gen["prompt_token_len"] = self._torch.tensor([tokens], device=gen["prompt_token"].device)
            gen["prompt_feat"] = gen["prompt_feat"][:, : 2 * tokens]
            for key, value in list(conds.gen.items()):
                if self._torch.is_tensor(value) and value.is_floating_point():
                    conds.gen[key] = value.to(device=s3gen.device, dtype=s3gen.dtype)
        return conds

    # ---- streaming synthesis

    def synthesize(
        self, text: str, voice_id: str | None, max_audio_s: float, language: str = "en"
    ) -> Iterator[np.ndarray]:
        torch = self._torch
        kind = self._kind(language)
        model = self._models[kind]
        conds = self._conditionals(kind, voice_id)
        t3 = model.t3
        with torch.inference_mode():
            text_tokens = self._text_tokens(kind, model, text, language.lower())
        max_tokens = max(1, min(int(max_audio_s * TOKEN_RATE), t3.hp.max_speech_tokens))
        # One seed per utterance: every flow call of this utterance starts from the same noise (see S3GenStream).
        generator = torch.Generator(device=self._device).manual_seed(secrets.randbits(62))
        with torch.inference_mode():
            stream = S3GenStream(torch, model.s3gen, conds.gen, generator=generator, max_tokens=max_tokens)
        marker = StreamWatermarker(self._watermarker.apply_watermark, SAMPLE_RATE) if self._watermarker else None
        tokens: list[int] = []
        next_cut = FIRST_CHUNK_TOKENS
        # No inference_mode around the yields: it is thread-local, and each chunk of this generator may be
        # pulled by a different worker thread. Each model call below enters it for itself.
        for token in self._speech_tokens(kind, conds.t3, text_tokens, max_tokens):
            tokens.append(token)
            if len(tokens) >= next_cut:
                next_cut = len(tokens) + CHUNK_TOKENS
                chunk = stream.push(tokens, final=False)
                chunk = marker.push(chunk) if marker is not None else chunk
                if len(chunk):
                    yield chunk
        if tokens:
            chunk = stream.push(tokens, final=True)
            chunk = marker.push(chunk, final=True) if marker is not None else chunk
            if len(chunk):
                yield chunk

    def _text_tokens(self, kind: str, model: Any, text: str, language: str) -> Any:
        torch = self._torch
        if kind == ENGLISH:
            from chatterbox.tts import punc_norm

            tokens = model.tokenizer.text_to_tokens(punc_norm(text))
        else:
            from chatterbox.mtl_tts import punc_norm

            tokens = model.tokenizer.text_to_tokens(punc_norm(text), language_id=language)
        tokens = tokens.to(self._device)
        tokens = torch.cat([tokens, tokens], dim=0)  # conditional + unconditional (CFG)
        hp = model.t3.hp
        tokens = torch.nn.functional.pad(tokens, (1, 0), value=hp.start_text_token)
        return torch.nn.functional.pad(tokens, (0, 1), value=hp.stop_text_token)

    @staticmethod
    def _make_backend(model: Any) -> Any:
        from chatterbox.models.t3.inference.t3_hf_backend import T3HuggingfaceBackend

        t3 = model.t3
        return T3HuggingfaceBackend(config=t3.cfg, llama=t3.tfmr, speech_enc=t3.speech_emb, speech_head=t3.speech_head)

    def _speech_tokens(
        self,
        kind: str,
        t3_cond: Any,
        text_tokens: Any,
        max_tokens: int,
        *,
        temperature: float = 0.8,
        cfg_weight: float = 0.5,
        min_p: float = 0.05,
        top_p: float = 1.0,
    ) -> Iterator[int]:
        """``T3.inference`` as a generator: one speech token at a time, until stop or ``max_tokens``."""
        torch = self._torch
        from transformers.generation.logits_process import (
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TopPLogitsWarper,
        )

        t3 = self._models[kind].t3
        backend = self._backends[kind]
        capture = self._capture if kind == MULTILINGUAL else None
        with torch.inference_mode():
            embeds, len_cond = t3.prepare_input_embeds(
                t3_cond=t3_cond,
                text_tokens=text_tokens,
                speech_tokens=t3.hp.start_speech_token * torch.ones_like(text_tokens[:, :1]),
                cfg_weight=cfg_weight,
            )
            analyzer = _analyzer(t3, (len_cond, len_cond + text_tokens.size(-1))) if capture else None
            bos = torch.tensor([[t3.hp.start_speech_token]], dtype=torch.long, device=self._device)
            bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
            output = backend(
                inputs_embeds=torch.cat([embeds, torch.cat([bos_embed, bos_embed])], dim=1),
                past_key_values=None,
                use_cache=True,
                output_attentions=capture is not None,
                output_hidden_states=True,
                return_dict=True,
            )
            attentions = capture.take() if capture else None  # this thread's pass, read before any yield
        generated = bos
        repetition = RepetitionPenaltyLogitsProcessor(penalty=_REPETITION_PENALTY[kind])
        min_p_warper = MinPLogitsWarper(min_p=min_p)
        top_p_warper = TopPLogitsWarper(top_p=top_p)
        for step in range(max_tokens):
            with torch.inference_mode():
                logits = output.logits[:, -1, :]
                cond, uncond = logits[0:1], logits[1:2]
                logits = cond + cfg_weight * (cond - uncond)
                if analyzer is not None:
                    from chatterbox.models.t3.inference.alignment_stream_analyzer import LLAMA_ALIGNED_HEADS

                    analyzer.last_aligned_attns = [attentions[layer][head] for layer, head in LLAMA_ALIGNED_HEADS]
                    logits = analyzer.step(logits, next_token=int(generated[0, -1]))
                logits = repetition(generated, logits) / temperature
                logits = top_p_warper(generated, min_p_warper(generated, logits))
                next_token = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
                token = int(next_token.item())
            if token == t3.hp.stop_speech_token:
                return
            if token < t3.hp.start_speech_token:  # only real speech tokens (< 6561) reach the vocoder
                yield token
            with torch.inference_mode():
                generated = torch.cat([generated, next_token], dim=1)
                embed = t3.speech_emb(next_token) + t3.speech_pos_emb.get_fixed_embedding(step + 1)
                output = backend(
                    inputs_embeds=torch.cat([embed, embed]),
                    past_key_values=output.past_key_values,
                    output_attentions=capture is not None,
                    output_hidden_states=True,
                    return_dict=True,
                )
                attentions = capture.take() if capture else None


def _analyzer(t3: Any, text_slice: tuple[int, int]) -> Any:
    """Upstream's ``AlignmentStreamAnalyzer`` (stops runaway tails, repetitions) without its own hooks: the
    attentions come from `AttentionCapture`, per thread."""
    from chatterbox.models.t3.inference.alignment_stream_analyzer import AlignmentStreamAnalyzer

    class _Analyzer(AlignmentStreamAnalyzer):
        def _add_attention_spy(self, *_args: Any) -> None:
            pass

    return _Analyzer(t3.tfmr, None, text_tokens_slice=text_slice, alignment_layer_idx=9,
                     eos_idx=t3.hp.stop_speech_token)


class _NoWatermark:
    def apply_watermark(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        return wav
