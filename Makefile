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
