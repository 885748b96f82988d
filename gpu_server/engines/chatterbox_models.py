"""Loading Chatterbox checkpoints (English and multilingual) the way chatterbox-tts 0.1.7's ``from_local`` does,
plus the checks it leaves out, and the attention capture the multilingual model's alignment analyser reads.

- ``load_english(dir)`` / ``load_multilingual(dir)``: the files Dockerfile.gpu bakes (`ENGLISH_FILES`,
  `MULTILINGUAL_FILES`). Upstream loads S3Gen with ``strict=False``: a tokenizer whose layout changed would
  keep random weights without a word. Here every missing key other than the two buffers upstream itself
  names (``S3Token2Wav.ignore_state_dict_missing``) is an error.
- The multilingual tokenizer looks the Chinese Cangjie table up in a hub cache under its own directory
  (``hf_hub_download(cache_dir=<dir>)``); the image lays it out that way, and ``HF_HUB_OFFLINE`` keeps it local.
- ``AttentionCapture``: upstream's ``AlignmentStreamAnalyzer`` hooks three attention layers for the life of the
  model, and its hooks record whichever stream ran last. One hook per layer is installed once here, recording
  into thread-local storage; each utterance reads what its own forward pass produced.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from gpu_server.engines import EngineError

ENGLISH_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json", "conds.pt")
MULTILINGUAL_FILES = ("ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt", "grapheme_mtl_merged_expanded_v1.json",
                      "conds.pt", "Cangjie5_TC.json")
MULTILINGUAL_CHECKPOINT = "t3_mtl23ls_v2.safetensors"


def _require(model_dir: Path, files: tuple[str, ...], setting: str) -> None:
    missing = [f for f in files if f.endswith((".safetensors", ".pt", ".json")) and f != "Cangjie5_TC.json"
               and not (model_dir / f).exists()]
    if missing:
        raise EngineError(f"no Chatterbox weights in {model_dir} (missing {', '.join(missing)}); set {setting}")


def load_s3gen_strictly(s3gen: Any, state: dict) -> None:
    result = s3gen.load_state_dict(state, strict=False)
    allowed = tuple(getattr(s3gen, "ignore_state_dict_missing", ()))
    missing = [k for k in result.missing_keys if not k.endswith(allowed)]
    if missing:
        raise EngineError(f"S3Gen checkpoint does not fit this chatterbox-tts/s3tokenizer: {len(missing)} weights "
                          f"missing, e.g. {missing[:3]}; pin the versions in constraints-gpu.txt")


def load_english(model_dir: str | Path, device: str) -> Any:
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import ChatterboxTTS, Conditionals
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    _require(model_dir, ENGLISH_FILES, "GPU_SERVER_CHATTERBOX_MODEL_DIR")
    ve = VoiceEncoder()
    ve.load_state_dict(load_file(model_dir / "ve.safetensors"))
    t3 = T3()
    state = load_file(model_dir / "t3_cfg.safetensors")
    t3.load_state_dict(state["model"][0] if "model" in state else state)
    s3gen = S3Gen()
    load_s3gen_strictly(s3gen, load_file(model_dir / "s3gen.safetensors"))
    conds = None
    if (model_dir / "conds.pt").exists():
        conds = Conditionals.load(model_dir / "conds.pt", map_location=torch.device(device))
    return assemble(ChatterboxTTS, t3, s3gen, ve, EnTokenizer(str(model_dir / "tokenizer.json")), device, conds)


def load_multilingual(model_dir: str | Path, device: str) -> Any:
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.tokenizers import MTLTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS, Conditionals
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    _require(model_dir, MULTILINGUAL_FILES, "GPU_SERVER_CHATTERBOX_MULTILINGUAL_DIR")
    where = torch.device(device)
    ve = VoiceEncoder()
    ve.load_state_dict(torch.load(model_dir / "ve.pt", map_location=where, weights_only=True))
    t3 = T3(T3Config.multilingual())
    state = load_file(model_dir / MULTILINGUAL_CHECKPOINT)
    t3.load_state_dict(state["model"][0] if "model" in state else state)
    s3gen = S3Gen()
    load_s3gen_strictly(s3gen, torch.load(model_dir / "s3gen.pt", map_location=where, weights_only=True))
    tokenizer = MTLTokenizer(str(model_dir / "grapheme_mtl_merged_expanded_v1.json"))
    conds = None
    if (model_dir / "conds.pt").exists():
        conds = Conditionals.load(model_dir / "conds.pt", map_location=where)
    return assemble(ChatterboxMultilingualTTS, t3, s3gen, ve, tokenizer, device, conds)


def assemble(cls: Any, t3: Any, s3gen: Any, ve: Any, tokenizer: Any, device: str, conds: Any) -> Any:
    """The library's model object from modules already built (loaded, or random in the CPU tests)."""
    for module in (t3, s3gen, ve):
        module.to(device).eval()
    if conds is not None:
        conds = conds.to(device)
    return cls(t3, s3gen, ve, tokenizer, device, conds=conds)


class AttentionCapture:
    """Records, per thread, the attention weights of the layers upstream's alignment analyser reads."""

    def __init__(self, tfmr: Any, layers: list[int]) -> None:
        self._local = threading.local()
        self._layers = sorted(set(layers))
        # As upstream's analyser does: attention weights exist only with eager attention.
        if getattr(tfmr.config, "_attn_implementation", None) != "eager":
            tfmr.config._attn_implementation = "eager"
        tfmr.config.output_attentions = True
        for layer in self._layers:
            tfmr.layers[layer].self_attn.register_forward_hook(self._hook(layer))

    def _hook(self, layer: int) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
                store = getattr(self._local, "attentions", None)
                if store is None:
                    store = self._local.attentions = {}
                store[layer] = output[1][0].detach().cpu()  # (heads, T0, Ti) of the conditional half

        return record

    def take(self) -> dict[int, Any]:
        """What this thread's last forward pass recorded (then forgotten)."""
        store = getattr(self._local, "attentions", None) or {}
        self._local.attentions = {}
        return store
