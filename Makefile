# Fashion Florence: every target creates its own virtual environment on first use.
#
# Torch is installed first and on its own, so the right build is chosen:
#   - default TORCH_SPEC=torch==2.13.0: on the project's CPU machines pip takes the local
#     CPU wheel; elsewhere on Linux x86_64 pip takes PyPI's CUDA build (GPU users).
#   - a CPU-only machine without the local wheel can avoid the multi-GB CUDA download with
#     TORCH_INDEX_URL=<the PyTorch CPU wheel index>.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install run test lint typecheck check bench clean

# scripts/install.sh is the one install path: the Dockerfile runs it too (same torch step,
# same pinned versions from scripts/constraints.txt).
$(STAMP): pyproject.toml clients/python/pyproject.toml scripts/install.sh scripts/constraints.txt
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" \
		sh scripts/install.sh $(VENV) -e ./clients/python -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Start the service on 0.0.0.0:8000 (FF_* env to configure; demo model when FF_MODEL_PATH is unset)
run: $(STAMP)
	$(BIN)/fashion-florence serve

## The whole test suite (CPU; GPU tests skip themselves without a CUDA device)
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check service model_store tests bench scripts deploy clients
	$(BIN)/ruff format --check service model_store tests bench scripts deploy clients

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

## The CPU benchmark suite on the demo model (about 3 min): engine sweep, preprocessing, service, baselines (docs/BENCHMARKS.md)
bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
