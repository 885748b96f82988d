#!/usr/bin/env bash
# The first GPU run, as one command (`make gpu-check`, or through the device tool): the `gpu` tests, then
# first-audio latency, real-time factor and concurrent real-time streams of Chatterbox and Whisper, one table.
# Uses the image's virtualenv (.venv-image, `make image-venv`) unless PYTHON is set. Fails at once without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-image/bin/python}
if ! timeout 60 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)"; then
  echo "gpu-check: no CUDA device visible to torch ($PY); run it on a GPU machine (nothing was measured)" >&2
  exit 2
fi
"$PY" -m pip install --quiet pytest pytest-asyncio pytest-timeout hypothesis
timeout 900 "$PY" -m pytest -p no:cacheprovider -m gpu tests/gpu_server -q
timeout 900 "$PY" bench/gpu.py "$@"
