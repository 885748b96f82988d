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
# Dockerfile.gpu's Python is 3.11; resolve with the same minor where the machine has it.
IMAGE_PYTHON ?= $(shell command -v python3.11 || echo $(PYTHON))

.PHONY: image-venv image-check test-chatterbox gpu-check

# A clean virtualenv with exactly what Dockerfile.gpu installs (the same script, which also runs pip check),
# rebuilt when the pins change.
$(IMAGE_STAMP): constraints-gpu.txt pyproject.toml docker/gpu-python.sh
	rm -rf $(IMAGE_VENV)
	$(IMAGE_PYTHON) -m venv $(IMAGE_VENV)
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

# The first GPU run: gpu tests, then latency/RTF/concurrency of Chatterbox and Whisper (bench/gpu.sh, one table).
gpu-check:
	bash bench/gpu.sh

# For the device tool's GPU machine, which has Python 3.12 with torch and transformers but reaches no registry:
# the wheels bench/gpu.sh needs beyond those, pinned as the image pins them, into .whl/ (carried there; the
# tool carries 64 MiB in all). See README "The first GPU run".
GPU_WHEELS_PY ?= 3.12
GPU_WHEELS := chatterbox-tts==0.1.7 diffusers==0.29.0 conformer==0.3.2 s3tokenizer==0.3.0 resemble-perth==1.0.1 \
	transformers==5.2.0 tokenizers==0.22.2 setuptools==80.9.0 librosa==0.11.0 soxr==1.1.0 soundfile==0.14.0 \
	audioread==3.1.0 lazy_loader==0.6 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.9 omegaconf==2.4.0 \
	pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0 \
	typing-inspection==0.4.5 python-dotenv==1.2.4 cffi==2.1.1 pycparser==3.12

.PHONY: gpu-wheels
gpu-wheels:
	rm -rf .whl && mkdir .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_WHEELS_PY) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@du -sh .whl
