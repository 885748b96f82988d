#!/bin/sh
# The GPU image's Python layer: run by Dockerfile.gpu and by `make image-venv`, so the two cannot drift.
# usage: docker/gpu-python.sh PIP PROJECT_DIR
set -eu
pip=$1
project=$2
# The speech extra and Chatterbox's run-time dependencies (the `chatterbox` extra, plus pykakasi for the
# multilingual tokenizer's Japanese) under the constraints, then chatterbox-tts itself without its other pins.
$pip install -c "$project/constraints-gpu.txt" "$project[speech,chatterbox]" pykakasi
$pip install --no-deps -c "$project/constraints-gpu.txt" chatterbox-tts
# Every requirement holds except the three chatterbox-tts declares that we leave out on purpose:
# - gradio: upstream's demo UI;
# - pyloudnorm: imported only by chatterbox.tts_turbo, which we do not serve;
# - spacy-pkuseg: its constructor downloads a model from GitHub, and the multilingual tokenizer builds it at
#   load time, so installed it would make an offline pod fail to start. Absent, upstream segments Chinese
#   by character (its own ImportError fallback).
broken=$($pip check 2>&1 | grep -v -E \
  -e '^chatterbox-tts [0-9.]+ requires (gradio|pyloudnorm|spacy-pkuseg), which is not installed\.$' \
  -e '^No broken requirements found\.$' || true)
if [ -n "$broken" ]; then
  echo "docker/gpu-python.sh: the image's Python layer does not hold together:" >&2
  echo "$broken" >&2
  exit 1
fi
