# Every target creates or reuses the virtual environment itself.
# torch is installed first and pinned: on this machine torch==2.13.0 is a CPU build on disk,
# and an unpinned torch would pull a multi-GB CUDA build. Override TORCH for other platforms,
# e.g. make test TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skmm-installed

.PHONY: venv test test-all demo lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ""

demo: venv
	$(VENV)/bin/skmm demo

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: venv
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
