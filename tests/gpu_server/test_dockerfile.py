"""Dockerfile.gpu cannot be built here (no Docker, no GPU); check what can be checked without building."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from gpu_server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and heredoc bodies attached."""
    lines = path.read_text().splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line += "\n" + "\n".join(body)
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


DOCKERFILE = instructions(ROOT / "Dockerfile.gpu")


def args_of(keyword: str) -> list[str]:
    return [rest for kw, rest in DOCKERFILE if kw == keyword]


def test_cuda_base_and_port():
    assert args_of("FROM")[0].startswith("nvidia/cuda:") and "cudnn" in args_of("FROM")[0]
    assert args_of("EXPOSE") == ["8000"]
    assert args_of("HEALTHCHECK") and "/health" in args_of("HEALTHCHECK")[0]


def test_every_copy_source_exists():
    copies = args_of("COPY")
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"


def test_chatterbox_is_installed_without_deps_and_weights_are_baked_where_settings_look():
    runs = "\n".join(args_of("RUN"))
    # The Python layer is docker/gpu-python.sh, which `make image-venv` runs too.
    assert "docker/gpu-python.sh pip ." in runs
    script = (ROOT / "docker" / "gpu-python.sh").read_text()
    assert "--no-deps" in script and "chatterbox-tts" in script and "[speech,chatterbox]" in script
    assert re.search(r"^chatterbox-tts==0\.1\.7$", (ROOT / "constraints-gpu.txt").read_text(), re.M)
    assert f'local_dir="{defaults_multilingual()}"' in runs and "Cangjie5_TC.json" in runs
    defaults = Settings(_env_file=None)
    assert f'local_dir="{defaults.gpu_stt_model}"' in runs and "large-v3-turbo" in runs
    assert f'local_dir="{defaults.chatterbox_model_dir}"' in runs
    env = " ".join(args_of("ENV"))
    assert "HF_HUB_OFFLINE=1" in env  # nothing is fetched at run time


def defaults_multilingual() -> str:
    return Settings(_env_file=None).chatterbox_multilingual_dir


def test_entry_point_module_imports_and_runs():
    cmd = args_of("CMD")[-1]
    argv = json.loads(cmd)  # exec form, e.g. ["python", "-m", "gpu_server", "serve"]
    assert argv[:3] == ["python", "-m", "gpu_server"] and argv[3] == "serve"
    done = subprocess.run([sys.executable, *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
