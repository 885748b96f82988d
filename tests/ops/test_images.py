"""The Dockerfiles, read as far as is possible without Docker.

Every COPY/ADD source exists and is not hidden by .dockerignore, the command's module imports, a
HEALTHCHECK is declared. For the controller image the COPY lines are replayed into a temporary directory
and the daemon's modules are imported (and the database migrated) from there alone, without the rest of
the repository and without any speech library: that is what the image will have.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from runpod_emulator.runner import allocate_port

from .repo import ROOT

DOCKERFILES = [p for p in (ROOT / "Dockerfile.controller", ROOT / "Dockerfile.gpu") if p.exists()]
# Third-party packages of the speech extras; the controller image must run without any of them.
SPEECH_PACKAGES = {"numpy", "faster_whisper", "ctranslate2", "onnxruntime", "soxr", "av", "piper",
                   "torch", "torchaudio", "chatterbox", "transformers"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and heredoc bodies skipped."""
    instructions: list[Instruction] = []
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\"):
            following = next(lines)
            if not following.lstrip().startswith("#"):
                line = line.rstrip()[:-1] + " " + following.strip()
        keyword, _, args = line.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        if "<<" in args:  # RUN <<EOF ... EOF: the body is not instructions
            delimiter = args.split("<<", 1)[1].split()[0].lstrip("-").strip("'\"")
            for body in lines:
                if body.strip() == delimiter:
                    break
    return instructions


def words(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD from the build context."""
    result = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        parts = words(ins.args)
        flags = [p for p in parts if p.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue  # from another stage, not the context
        paths = [p for p in parts if not p.startswith("--")]
        result.append((paths[:-1], paths[-1]))
    return result


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, loosely: the last matching pattern wins; a match on a parent directory excludes."""
    result = False
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/")) for c in candidates):
            result = not negate
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build(dockerfile: Path) -> None:
    patterns = dockerignore_patterns()
    problems = []
    sources = [src for srcs, _ in copies(parse(dockerfile)) for src in srcs]
    assert sources, "no COPY from the build context"
    for src in sources:
        matches = list(ROOT.glob(src))
        if not matches:
            problems.append(f"{src} does not exist")
        for match in matches:
            if ignored(str(match.relative_to(ROOT)), patterns):
                problems.append(f"{src} is excluded by .dockerignore")
    assert problems == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_command_module_imports_and_healthcheck_is_declared(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    health = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert health and not health[-1].args.upper().startswith("NONE"), "no HEALTHCHECK"
    command = [i for i in instructions if i.keyword in ("CMD", "ENTRYPOINT")][-1]
    argv = words(command.args)
    assert argv[:2] == ["python", "-m"], f"expected `python -m <module>`, got {argv}"
    module = argv[2]
    assert (ROOT / module / "__main__.py").exists()
    importable = f"{module}.cli" if (ROOT / module / "cli.py").exists() else module
    result = subprocess.run([sys.executable, "-c", f"import {importable}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------- the controller image

CONTROLLER = ROOT / "Dockerfile.controller"


def test_controller_image_is_slim_non_root_and_keeps_state_on_a_volume() -> None:
    instructions = parse(CONTROLLER)
    by_keyword: dict[str, list[str]] = {}
    for ins in instructions:
        by_keyword.setdefault(ins.keyword, []).append(ins.args)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    installs = [run for run in by_keyword["RUN"] if "pip install" in run]
    assert installs and all("[" not in run for run in installs), "the controller installs no extras"
    assert by_keyword["USER"][-1] not in ("root", "0")
    assert by_keyword["EXPOSE"] == ["8080"]
    assert "/data" in " ".join(by_keyword["VOLUME"])
    assert any("HARPER_DATABASE_URL=sqlite+aiosqlite:////data/harper.db" in env for env in by_keyword["ENV"])
    assert "/healthz" in by_keyword["HEALTHCHECK"][-1]
    assert words(by_keyword["CMD"][-1]) == ["python", "-m", "reconciler", "run", "--host", "0.0.0.0"]


def stage(dockerfile: Path, root: Path) -> Path:
    """Replay the COPY lines under `root` (as the image's filesystem); returns the WORKDIR there."""
    workdir = PurePosixPath("/")
    for ins in parse(dockerfile):
        if ins.keyword == "WORKDIR":
            workdir = workdir / ins.args
        if ins.keyword not in ("COPY", "ADD"):
            continue
        (sources, dest), = copies([ins])
        target = root / str(workdir / dest).lstrip("/")
        for src in sources:
            for match in ROOT.glob(src):
                if match.is_dir():
                    shutil.copytree(match, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    into = target / match.name if dest.endswith("/") or dest in (".", "./") else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(match, into)
    return root / str(workdir).lstrip("/")


# Run with -S (no site: no editable-install finder that would reach back into the repository) and this
# environment's site-packages appended, i.e. the staged code first, then the third-party packages.
PROLOGUE = "import sys; sys.path.append({purelib!r}); sys.path.insert(0, {app!r})\n"

IMPORTS = """
import importlib, json
for name in ("reconciler.cli", "reconciler.app", "runpod_emulator.server", "runpod_emulator.simulated"):
    importlib.import_module(name)
try:
    import gpu_server.protocol
    isolated = False
except ModuleNotFoundError:
    isolated = True
print(json.dumps({
    "files": {m: sys.modules[m].__file__ for m in ("reconciler", "gpu_server", "gpu_server.auth", "runpod_emulator")},
    "loaded": sorted({m.split(".")[0] for m in sys.modules}),
    "isolated": isolated,
}))
"""


@pytest.fixture(scope="module")
def controller_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage(CONTROLLER, tmp_path_factory.mktemp("controller-image"))


def run_staged(app: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    prologue = PROLOGUE.format(purelib=sysconfig.get_paths()["purelib"], app=str(app))
    return subprocess.run([sys.executable, "-S", "-c", prologue + code, *args], cwd=app, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(app)})


def test_controller_image_imports_the_daemon_without_speech_packages(controller_app: Path) -> None:
    result = run_staged(controller_app, IMPORTS)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["isolated"], "the staged gpu_server must hold only what the Dockerfile copies"
    assert all(path.startswith(str(controller_app)) for path in report["files"].values()), report["files"]
    assert sorted(SPEECH_PACKAGES & set(report["loaded"])) == []


def test_controller_image_finds_its_migrations(controller_app: Path, tmp_path: Path) -> None:
    db = tmp_path / "harper.db"
    code = "import runpy; sys.argv = ['reconciler', *sys.argv[1:]]; runpy.run_module('reconciler', run_name='__main__')"
    result = run_staged(controller_app, code, "migrate", "--database-url", f"sqlite+aiosqlite:///{db}")
    assert result.returncode == 0, result.stderr
    assert "newest schema" in result.stdout and db.exists()


def test_the_dockerignore_reading_excludes_directories_and_honours_negation() -> None:
    assert ignored("tests/ops/test_images.py", ["tests"])
    assert ignored("gpu_server/__pycache__/auth.cpython-311.pyc", ["**/__pycache__"])
    assert not ignored("gpu_server/auth.py", ["**/__pycache__", "*.egg-info"])
    assert not ignored("README.md", ["*.md", "!README.md"])


def test_controller_image_serves_healthz_and_metrics_with_simulated_pods(controller_app: Path, tmp_path: Path) -> None:
    """The README's dry run (local mode, simulated pods) from the staged image: what HEALTHCHECK probes."""
    port = allocate_port("127.0.0.1")
    code = "import runpy; sys.argv = ['reconciler', *sys.argv[1:]]; runpy.run_module('reconciler', run_name='__main__')"
    prologue = PROLOGUE.format(purelib=sysconfig.get_paths()["purelib"], app=str(controller_app))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HARPER_LOCAL_RUNNER": "simulated",
           "HARPER_PORT": str(port), "HARPER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'harper.db'}",
           "HARPER_LOCAL_STATE_DIR": str(tmp_path / "local"), "HARPER_RECONCILE_INTERVAL_S": "0.5"}
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-S", "-c", prologue + code, "run", "--host", "127.0.0.1"],
                                  cwd=controller_app, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, metrics = time.monotonic() + 60, ""
        while time.monotonic() < deadline and 'harper_reconcile_total{result="ok"}' not in metrics:
            assert daemon.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as health:
                    assert health.status == 200
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    metrics = response.read().decode()
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        assert 'harper_reconcile_total{result="ok"}' in metrics, log.read_text()
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            raise
    assert daemon.returncode == 0, log.read_text()
