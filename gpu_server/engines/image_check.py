"""``python -m gpu_server.engines.image_check``: what `make image-check` runs in the image's virtualenv.

Imports every engine module and the upstream classes they call, builds S3Gen (the module whose construction
warns, and whose tokenizer layout the pins hold), and prints the versions that resolved. Exit 0 or a traceback.
"""

from __future__ import annotations

import importlib
import json
from importlib import metadata

PACKAGES = ("torch", "torchaudio", "chatterbox-tts", "transformers", "diffusers", "numpy", "s3tokenizer",
            "resemble-perth", "setuptools", "faster-whisper", "ctranslate2", "piper-tts", "av")


def main() -> None:
    from gpu_server.engines.chatterbox import upstream_warnings_quiet

    for name in ("gpu_server.engines.whisper", "gpu_server.engines.piper", "gpu_server.engines.chatterbox",
                 "gpu_server.engines.chatterbox_models", "gpu_server.engines.chatterbox_stream", "gpu_server.app"):
        importlib.import_module(name)
    with upstream_warnings_quiet():
        import perth
        from chatterbox.models.s3gen import S3Gen
        from chatterbox.models.t3.inference.alignment_stream_analyzer import AlignmentStreamAnalyzer  # noqa: F401
        from chatterbox.mtl_tts import SUPPORTED_LANGUAGES, ChatterboxMultilingualTTS  # noqa: F401
        from chatterbox.tts import ChatterboxTTS  # noqa: F401

        s3gen = S3Gen()
    keys = [k for k in s3gen.state_dict() if k.startswith("tokenizer.")]
    assert keys, "S3Gen has no tokenizer weights: s3tokenizer's layout changed"
    assert perth.PerthImplicitWatermarker is not None, "Perth has no implicit watermarker"
    print(json.dumps({"versions": {p: metadata.version(p) for p in PACKAGES},
                      "s3gen_tokenizer_tensors": len(keys), "languages": len(SUPPORTED_LANGUAGES)}, indent=1))


if __name__ == "__main__":
    main()
