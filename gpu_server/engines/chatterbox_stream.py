"""S3Gen (Chatterbox's flow matching + HiFT vocoder) run as one continuous stream over growing speech tokens.

Upstream renders a whole utterance in one ``s3gen.inference`` call. Rendering overlapping windows separately
and crossfading them joins two *different* signals: each call draws fresh flow-matching noise and the vocoder
restarts its excitation phase, so a join dips or phases. This module streams the way CosyVoice2 (where S3Gen
comes from) does, with the library's own pieces:

- **Flow, each mel frame rendered once.** Every call covers the tokens not yet rendered plus up to
  ``CONTEXT_TOKENS`` before them; until the last call the frames of the last ``LOOKAHEAD_TOKENS`` tokens are
  dropped (the flow's encoder looks 3 tokens ahead), so every frame kept had its full right context, and the
  next call renders the held-back tokens with theirs. (The library's own ``finalize=False`` would drop them
  too, but in 0.1.7 it cuts the features and not their mask, and the flow fails on the size mismatch: it has
  only ever run with ``finalize=True``. So the flow always runs finalized and the cut is made here.)
- **Noise fixed per utterance.** The flow's starting noise is drawn once per utterance from a seeded generator
  and passed in whole (``noised_mels`` spanning prompt and speech), each position keeping its value across calls;
  consecutive calls therefore continue the same sample instead of drawing new ones.
- **Vocoder with caches.** HiFT gets the last ``MEL_CACHE_FRAMES`` mel frames again in front of the new ones,
  with their excitation source from the previous call (``cache_source``), so the harmonic phase carries on; the
  audio of those frames, held back from the previous call, is crossfaded (Hamming halves) with the new
  rendering of the same frames (`VocoderJoin`, pure).

Torch is imported by the caller; this module only uses what it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 24000
TOKEN_RATE = 25  # speech tokens per second
MEL_RATE = 50  # mel frames per second: 2 per token
FRAME_SAMPLES = SAMPLE_RATE // MEL_RATE  # 480 samples per mel frame
TOKEN_FRAMES = MEL_RATE // TOKEN_RATE
LOOKAHEAD_TOKENS = 3  # CausalMaskedDiffWithXvec.pre_lookahead_len
CONTEXT_TOKENS = 50  # already-rendered tokens in front of each flow call
MEL_CACHE_FRAMES = 8  # CosyVoice2's mel_cache_len: 160 ms re-vocoded and crossfaded at each join
N_CFM_TIMESTEPS = 10  # S3Token2Wav.flow_inference's default without meanflow


@dataclass(frozen=True)
class FlowWindow:
    """One flow call: tokens ``[start, end)``; keep output frames from ``keep_from``; ``rendered`` after it."""

    start: int
    end: int
    final: bool
    keep_from: int
    rendered: int


def flow_window(rendered: int, n_tokens: int, *, final: bool) -> FlowWindow | None:
    """The next flow call, or None when no token gained its full lookahead since the last one. Pure."""
    upto = n_tokens if final else n_tokens - LOOKAHEAD_TOKENS
    if upto <= rendered and not (final and n_tokens > rendered):
        return None
    start = max(0, rendered - CONTEXT_TOKENS)
    return FlowWindow(start, n_tokens, final, (rendered - start) * TOKEN_FRAMES, max(upto, rendered))


class VocoderJoin:
    """Joins vocoder renderings that overlap by ``overlap`` samples into one stream. Pure numpy.

    ``push(speech, final)``: ``speech`` begins with the ``overlap`` samples held back last time, rendered anew
    (the same mel frames, the same excitation source). Those are crossfaded, the rest goes out, and the last
    ``overlap`` samples are held back again unless ``final``.
    """

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        window = np.hamming(2 * overlap).astype(np.float32)
        self._fade_in, self._fade_out = window[:overlap], window[overlap:]
        self._held: np.ndarray | None = None
        self.emitted = 0

    def push(self, speech: np.ndarray, *, final: bool) -> np.ndarray:
        speech = np.array(speech, dtype=np.float32)
        if self._held is not None:
            n = min(len(self._held), len(speech))
            speech[:n] = speech[:n] * self._fade_in[:n] + self._held[:n] * self._fade_out[:n]
        if final:
            self._held, out = None, speech
        else:
            cut = max(0, len(speech) - self.overlap)
            self._held, out = speech[cut:], speech[:cut]
        self.emitted += len(out)
        return out


class S3GenStream:
    """One utterance through S3Gen: ``push(tokens, final=...)`` returns the audio now ready (float32 24 kHz).

    ``s3gen`` is the library's ``S3Gen``; ``ref`` a voice's S3Gen conditionals (``Conditionals.gen``);
    ``generator`` a seeded ``torch.Generator`` on the model's device (the utterance's noise comes from it).
    """

    def __init__(self, torch: Any, s3gen: Any, ref: dict, *, generator: Any, max_tokens: int) -> None:
        from chatterbox.models.s3gen.s3gen import S3Token2Mel

        self._torch = torch
        self._s3gen = s3gen
        self._flow_forward = S3Token2Mel.forward  # the flow alone; S3Token2Wav.forward would vocode too
        self._ref = ref
        device, dtype = s3gen.device, s3gen.dtype
        prompt_frames = int(ref["prompt_feat"].shape[1])
        self._prompt_noise = torch.randn(1, 80, prompt_frames, generator=generator, device=device, dtype=dtype)
        self._noise = torch.randn(1, 80, (max_tokens + 1) * TOKEN_FRAMES, generator=generator, device=device,
                                  dtype=dtype)
        self._rendered = 0
        self._mel_cache = torch.zeros(1, 80, 0, device=device, dtype=dtype)
        self._source_cache = torch.zeros(1, 1, 0, device=device, dtype=dtype)
        self._join = VocoderJoin(MEL_CACHE_FRAMES * FRAME_SAMPLES)
        self._started = False

    def push(self, tokens: list[int], *, final: bool) -> np.ndarray:
        window = flow_window(self._rendered, len(tokens), final=final)
        if window is None:
            return np.zeros(0, np.float32)
        torch = self._torch
        with torch.inference_mode():
            keep_to = (window.rendered - window.start) * TOKEN_FRAMES
            mel = self._flow(tokens[window.start : window.end], window)[:, :, window.keep_from : keep_to]
            self._rendered = window.rendered
            return self._vocode(mel, final=final)

    def _flow(self, tokens: list[int], window: FlowWindow) -> Any:
        torch = self._torch
        s3gen = self._s3gen
        frames = len(tokens) * TOKEN_FRAMES
        begin = window.start * TOKEN_FRAMES
        noise = torch.cat([self._prompt_noise, self._noise[:, :, begin : begin + frames]], dim=2)
        speech = torch.tensor([tokens], dtype=torch.long, device=s3gen.device)
        # A copy: the library casts the dict's tensors in place, and a voice's dict is shared by streams.
        return self._flow_forward(s3gen, speech, ref_wav=None, ref_sr=None, ref_dict=dict(self._ref),
                                  n_cfm_timesteps=N_CFM_TIMESTEPS, finalize=True, noised_mels=noise)

    def _vocode(self, mel: Any, *, final: bool) -> np.ndarray:
        torch = self._torch
        s3gen = self._s3gen
        mel = torch.cat([self._mel_cache, mel.to(self._mel_cache.dtype)], dim=2)
        if mel.shape[2] == 0:
            return np.zeros(0, np.float32)
        speech, source = s3gen.hift_inference(mel, self._source_cache)
        self._mel_cache = mel[:, :, -MEL_CACHE_FRAMES:]
        self._source_cache = source[:, :, -MEL_CACHE_FRAMES * FRAME_SAMPLES :]
        if not self._started:
            # Upstream's trim_fade: the first 20 ms muted and the next 20 ms faded in (reference spill-over).
            fade = s3gen.trim_fade
            speech[:, : len(fade)] *= fade
            self._started = True
        return self._join.push(speech[0].float().cpu().numpy(), final=final)
