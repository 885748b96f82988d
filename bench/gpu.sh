#!/usr/bin/env bash
# The first GPU run, as one command (`make gpu-check`; through the device tool, `bash bench/gpu.sh` with .whl
# carried): the `gpu` tests, then bench/gpu.py's table of first-audio latency, RTF and concurrent real-time
# streams for Chatterbox and Whisper. Fails at once, exit 2, without a CUDA device. Arguments go to bench/gpu.py.
#
# Its Python: $PYTHON if set; else the image's virtualenv (.venv-image, `make image-venv`: a pod or a GPU box
# with a registry); else the wheels of `make gpu-wheels` (.whl/) laid over the machine's python3, as on the
# device tool's machine (torch and transformers there, no registry; no server stack and no weights, so the gpu
# tests are left out and Whisper is not measured).
set -uo pipefail
cd "$(dirname "$0")/.."
tests=1
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv-image/bin/python ]; then
  PY=.venv-image/bin/python
elif [ -d .whl ]; then
  site=${GPU_SITE:-/tmp/gpu-site}
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu-check: the wheels in .whl/ did not install" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  PY=python3
  tests=0
else
  echo "gpu-check: no Python for it: make image-venv (needs a registry) or make gpu-wheels (for the device tool)" >&2
  exit 2
fi
if ! timeout 120 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)"; then
  echo "gpu-check: no CUDA device visible to torch ($PY); nothing was measured" >&2
  exit 2
fi
# CTranslate2 (Whisper) finds cuBLAS and cuDNN in the nvidia-* wheels beside torch, as the image's base has them.
nvidia_libs=$("$PY" -c "import glob, os, nvidia; print(':'.join(sorted({os.path.dirname(p) for d in nvidia.__path__ \
for p in glob.glob(os.path.join(d, '*', 'lib', '*.so*'))})))" 2>/dev/null || true)
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
status=0
if [ "$tests" = 1 ]; then
  "$PY" -c "import pytest, pytest_asyncio, pytest_timeout" 2>/dev/null \
    || "$PY" -m pip install --quiet pytest pytest-asyncio pytest-timeout hypothesis
  timeout 900 "$PY" -m pytest -p no:cacheprovider -m gpu tests/gpu_server -q -rs || status=$?
else
  echo "gpu-check: gpu tests left out (no server stack or weights in this Python); bench only"
fi
timeout 900 "$PY" bench/gpu.py "$@" || status=$?
exit "$status"
