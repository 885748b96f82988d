#!/bin/sh
# The GPU image's Python layer: run by Dockerfile.gpu and by `make image-venv`, so the two cannot drift.
# usage: docker/gpu-python.sh PIP PROJECT_DIR
set -eu
pip=$1
project=$2
# The speech extra and Chatterbox's run-time dependencies (the `chatterbox` extra) under the constraints, then
# chatterbox-tts itself without its other pins (gradio and friends).
$pip install -c "$project/constraints-gpu.txt" "$project[speech,chatterbox]"
$pip install --no-deps -c "$project/constraints-gpu.txt" chatterbox-tts
