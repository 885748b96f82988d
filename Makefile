# Every target sets itself up first: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-all demo run bench lint clean

# The virtualenv is rebuilt when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) with .[speech,postgres,dev] (first time takes a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	@$(PY) -m pip install --progress-bar on -e '.[speech,postgres,dev]'
	@touch $(STAMP)
	@echo "==> $(VENV) ready"

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	@$(PY) -m reconciler demo-local

run: $(STAMP)
	$(PY) -m reconciler run

bench: $(STAMP)
	$(PY) bench/controller.py
	$(PY) bench/speech.py

clean:
	rm -rf $(VENV) .pytest_cache harper.db harper.db-*

# ---- the GPU image's Python layer, proven without Docker or a GPU (see README "The GPU image")
IMAGE_VENV := .venv-image
IMAGE_STAMP := $(IMAGE_VENV)/.resolved

.PHONY: image-venv image-check test-chatterbox gpu-check

# A clean virtualenv with exactly what Dockerfile.gpu installs (the same script, which also runs pip check),
# rebuilt when the pins change.
$(IMAGE_STAMP): constraints-gpu.txt pyproject.toml docker/gpu-python.sh
	rm -rf $(IMAGE_VENV)
	$(PYTHON) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/pip install --quiet --upgrade pip
	sh docker/gpu-python.sh $(IMAGE_VENV)/bin/pip .
	@touch $@

image-venv: $(IMAGE_STAMP)

# Imports the engines from the installed copy (outside the repository), as the image will.
image-check: $(IMAGE_STAMP)
	$(IMAGE_VENV)/bin/pip install --quiet --no-deps --force-reinstall .
	cd /tmp && $(abspath $(IMAGE_VENV))/bin/python -m gpu_server.engines.image_check

# Chatterbox end to end on CPU with random weights (marker slow), in the image's environment plus pytest.
test-chatterbox: $(IMAGE_STAMP)
	$(IMAGE_VENV)/bin/pip install --quiet pytest pytest-asyncio pytest-timeout hypothesis
	$(IMAGE_VENV)/bin/python -m pytest -p no:cacheprovider -m slow tests/gpu_server/test_chatterbox_cpu.py

# The first GPU run: gpu tests, then latency/RTF/concurrency of Chatterbox and Whisper (bench/gpu.sh).
gpu-check:
	bash bench/gpu.sh
