"""Chatterbox (resemble-ai, ``chatterbox-tts`` 0.1.x) with real streaming: the GPU text-to-speech engine.

Upstream ``ChatterboxTTS.generate`` samples every speech token with T3 and only then runs S3Gen (flow
matching + HiFT vocoder) over all of them, so the first audio waits for the whole sentence. Here the T3
sampling loop is run as a generator (same maths as ``T3.inference``: CFG pair, repetition penalty,
temperature, min-p, top-p) and S3Gen is run on growing windows of tokens:

- the first chunk is small (``FIRST_CHUNK_TOKENS``; 25 tokens = 1 s of audio) so audio starts early,
  later chunks are larger so the vocoder keeps ahead of playback;
- each chunk is vocoded with up to ``CONTEXT_TOKENS`` already-emitted tokens in front, whose audio is cut
  off again, so the flow model sees the speech it continues;
- S3Gen renders the end of its input as the end of an utterance, so the last ``HOLDBACK_TOKENS`` of a
  non-final chunk are not emitted: the next chunk re-renders them with real right context, and the two
  renderings are joined with a ``CROSSFADE_MS`` linear crossfade (``Stitcher``, pure and CPU-tested);
- when T3 stops (or hits the duration cap) the remainder is vocoded and flushed: no tail is ever dropped.

Voice prompts (``<voices_dir>/<voice_id>.wav``) are turned into conditionals once per voice id and kept;
``voice_id`` None is the built-in voice shipped with the weights (``conds.pt``).

Watermark policy: every emitted chunk goes through Perth's implicit watermarker, as upstream ``generate``
does for whole utterances. Some Perth installs expose no watermarker (resemble-ai/chatterbox#198); then the
engine still serves, without the watermark, and ``info()["watermark"]`` says so.

torch and chatterbox are imported inside ``load`` only: this module is importable on a CPU box.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpu_server.engines import EngineError
from gpu_server.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
TOKEN_RATE = 25  # speech tokens per second of audio
TOKEN_SAMPLES = SAMPLE_RATE // TOKEN_RATE
FIRST_CHUNK_TOKENS = 10
CHUNK_TOKENS = 25
CONTEXT_TOKENS = 50
HOLDBACK_TOKENS = 2
CROSSFADE_MS = 20
_VOICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ChatterboxSynthesizer:
    sample_rate = SAMPLE_RATE

    def __init__(self, model: Any, *, voices_dir: str | None, watermark: bool, device: str) -> None:
        import torch

        self._torch = torch
        self._model = model
        self._device = device
        self._voices_dir = Path(voices_dir) if voices_dir else None
        self._voices: dict[str | None, Any] = {None: model.conds} if model.conds is not None else {}
        self._voice_lock = threading.Lock()
        self._watermarker = model.watermarker if watermark else None
        self._backend = self._make_backend()

    @classmethod
    def load(cls, settings: Settings, *, cuda: bool) -> ChatterboxSynthesizer:
        if not cuda:
            raise EngineError("Chatterbox needs a CUDA GPU; use GPU_SERVER_TTS_ENGINE=piper on CPU")
        try:
            import perth

            if getattr(perth, "PerthImplicitWatermarker", None) is None:
                # ChatterboxTTS() calls it unconditionally; substitute a no-op (see module docstring).
                log.warning("Perth has no implicit watermarker in this install; audio will not be watermarked")
                perth.PerthImplicitWatermarker = _NoWatermark
            from chatterbox.tts import ChatterboxTTS
        except ImportError as e:
            raise EngineError(f"chatterbox-tts is not installed ({e}); it belongs to the GPU image") from e
        model_dir = Path(settings.chatterbox_model_dir)
        if not (model_dir / "t3_cfg.safetensors").exists():
            raise EngineError(f"no Chatterbox weights in {model_dir}; set GPU_SERVER_CHATTERBOX_MODEL_DIR")
        model = ChatterboxTTS.from_local(model_dir, "cuda")
        engine = cls(model, voices_dir=settings.voices_dir, watermark=settings.tts_watermark, device="cuda")
        for voice_id in settings.preload_voices:
            engine.prepare_voice(voice_id)
        for _ in engine.synthesize("Hello.", None, 2.0):  # CUDA kernels and caches warm before users come
            pass
        return engine

    def info(self) -> dict[str, Any]:
        return {
            "engine": "chatterbox",
            "voice": "default",
            "voices": sorted(v for v in self._voices if v is not None),
            "sample_rate": SAMPLE_RATE,
            "device": self._device,
            "watermark": self._watermarker is not None and not isinstance(self._watermarker, _NoWatermark),
        }

    # ---- voices

    def prepare_voice(self, voice_id: str | None) -> None:
        self._conditionals(voice_id)

    def _conditionals(self, voice_id: str | None) -> Any:
        conds = self._voices.get(voice_id)
        if conds is not None:
            return conds
        if voice_id is None:
            raise EngineError("these Chatterbox weights have no built-in voice (conds.pt); pass a voice_id")
        if not _VOICE_ID.match(voice_id) or self._voices_dir is None:
            raise EngineError(f"unknown voice {voice_id!r}")
        prompt = self._voices_dir / f"{voice_id}.wav"
        if not prompt.is_file():
            raise EngineError(f"unknown voice {voice_id!r}: no {prompt.name} in the voices directory")
        with self._voice_lock:
            if voice_id not in self._voices:
                # prepare_conditionals stores its result on the shared model; take it and put the default back.
                saved = self._model.conds
                try:
                    self._model.prepare_conditionals(str(prompt))
                    self._voices[voice_id] = self._model.conds
                finally:
                    self._model.conds = saved
        return self._voices[voice_id]

    # ---- streaming synthesis

    def synthesize(self, text: str, voice_id: str | None, max_audio_s: float) -> Iterator[np.ndarray]:
        torch = self._torch
        from chatterbox.tts import punc_norm

        conds = self._conditionals(voice_id)
        t3 = self._model.t3
        text_tokens = self._model.tokenizer.text_to_tokens(punc_norm(text)).to(self._device)
        text_tokens = torch.cat([text_tokens, text_tokens], dim=0)  # conditional + unconditional (CFG)
        text_tokens = torch.nn.functional.pad(text_tokens, (1, 0), value=t3.hp.start_text_token)
        text_tokens = torch.nn.functional.pad(text_tokens, (0, 1), value=t3.hp.stop_text_token)
        max_tokens = max(1, min(int(max_audio_s * TOKEN_RATE), t3.hp.max_speech_tokens))

        tokens: list[int] = []
        stitcher = Stitcher()
        next_cut = FIRST_CHUNK_TOKENS
        # No inference_mode around the yields: it is thread-local, and each chunk of this generator may be
        # pulled by a different worker thread. Each model call below enters it for itself.
        for token in self._speech_tokens(conds.t3, text_tokens, max_tokens):
            tokens.append(token)
            if len(tokens) >= next_cut:
                next_cut = len(tokens) + CHUNK_TOKENS
                chunk = self._render(stitcher, tokens, conds.gen, final=False)
                if len(chunk):
                    yield chunk
        if tokens:
            chunk = self._render(stitcher, tokens, conds.gen, final=True)
            if len(chunk):
                yield chunk

    def _render(self, stitcher: Stitcher, tokens: list[int], ref: dict, *, final: bool) -> np.ndarray:
        torch = self._torch
        start = stitcher.context_start()
        with torch.inference_mode():
            window = torch.tensor(tokens[start:], dtype=torch.long, device=self._device)
            wav, _ = self._model.s3gen.inference(speech_tokens=window, ref_dict=ref)
        return self._watermark(stitcher.join(wav.squeeze(0).float().cpu().numpy(), start, len(tokens), final=final))

    def _watermark(self, chunk: np.ndarray) -> np.ndarray:
        if self._watermarker is None or not len(chunk):
            return chunk
        try:
            return np.asarray(self._watermarker.apply_watermark(chunk, sample_rate=SAMPLE_RATE), dtype=np.float32)
        except Exception as e:  # a chunk too short for Perth's analysis: send it unmarked rather than drop it
            log.debug("watermark skipped on a %d-sample chunk: %s", len(chunk), e)
            return chunk

    def _make_backend(self) -> Any:
        from chatterbox.models.t3.inference.t3_hf_backend import T3HuggingfaceBackend

        t3 = self._model.t3
        return T3HuggingfaceBackend(
            config=t3.cfg, llama=t3.tfmr, speech_enc=t3.speech_emb, speech_head=t3.speech_head
        )

    def _speech_tokens(
        self,
        t3_cond: Any,
        text_tokens: Any,
        max_tokens: int,
        *,
        temperature: float = 0.8,
        cfg_weight: float = 0.5,
        repetition_penalty: float = 1.2,
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

        t3 = self._model.t3
        with torch.inference_mode():
            embeds, _ = t3.prepare_input_embeds(
                t3_cond=t3_cond,
                text_tokens=text_tokens,
                speech_tokens=t3.hp.start_speech_token * torch.ones_like(text_tokens[:, :1]),
                cfg_weight=cfg_weight,
            )
            bos = torch.tensor([[t3.hp.start_speech_token]], dtype=torch.long, device=self._device)
            bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
            output = self._backend(
                inputs_embeds=torch.cat([embeds, torch.cat([bos_embed, bos_embed])], dim=1),
                past_key_values=None,
                use_cache=True,
                output_hidden_states=True,
                return_dict=True,
            )
        generated = bos
        repetition = RepetitionPenaltyLogitsProcessor(penalty=float(repetition_penalty))
        min_p_warper = MinPLogitsWarper(min_p=min_p)
        top_p_warper = TopPLogitsWarper(top_p=top_p)
        for step in range(max_tokens):
            with torch.inference_mode():
                logits = output.logits[:, -1, :]
                cond, uncond = logits[0:1], logits[1:2]
                logits = cond + cfg_weight * (cond - uncond)
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
                output = self._backend(
                    inputs_embeds=torch.cat([embed, embed]),
                    past_key_values=output.past_key_values,
                    output_hidden_states=True,
                    return_dict=True,
                )


class Stitcher:
    """Joins S3Gen renderings of overlapping token windows into one gapless, click-free stream. Pure.

    Each rendering covers tokens ``[context_start(), n_tokens)``. ``join`` returns the new audio to emit:
    everything past what was already emitted, minus the last ``HOLDBACK_TOKENS`` unless ``final``,
    with its first ``CROSSFADE_MS`` crossfaded (linearly: both sides are renderings of the same speech,
    so equal-gain keeps the level) into the previous rendering's held-back audio.
    """

    def __init__(self) -> None:
        self.emitted = 0  # samples of the utterance already returned
        self._tail = np.zeros(0, np.float32)  # previous rendering past `emitted`
        n = SAMPLE_RATE * CROSSFADE_MS // 1000
        self._fade_in = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)

    def context_start(self) -> int:
        return max(0, self.emitted // TOKEN_SAMPLES - CONTEXT_TOKENS)

    def join(self, wav: np.ndarray, context_start: int, n_tokens: int, *, final: bool) -> np.ndarray:
        # Where `emitted` falls in this rendering, scaled in case S3Gen's length is off by a few samples.
        per_token = len(wav) / max(1, n_tokens - context_start)
        offset = round((self.emitted / TOKEN_SAMPLES - context_start) * per_token)
        fresh = np.array(wav[offset:], dtype=np.float32)
        n = min(len(self._tail), len(fresh), len(self._fade_in))
        if n:
            fade = self._fade_in[:n]
            fresh[:n] = self._tail[:n] * (1.0 - fade) + fresh[:n] * fade
        keep = len(fresh) if final else max(0, round((n_tokens - context_start - HOLDBACK_TOKENS) * per_token) - offset)
        chunk, self._tail = fresh[:keep], fresh[keep:]
        self.emitted += len(chunk)
        return chunk


class _NoWatermark:
    def apply_watermark(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        return wav
