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
# The lowest supported versions (scripts/constraints-min.txt), runtime and test runner only.
VENV_MIN ?= .venv-min
STAMP_MIN := $(VENV_MIN)/.installed
MIN_TESTS ?= tests/service/inference tests/service/engine_core tests/service/ipc
# The suite runs on this many pytest-xdist workers, a test file per worker at a time (module
# fixtures such as a started server or Ray cluster stay in one process). Much of the suite
# waits on subprocesses and sockets, so 2 workers suit a 2-core machine; 0 runs it serially.
TEST_WORKERS ?= 2
# A bound on the minimum-versions run (about 5 min here), so a hang cannot eat CI's budget.
MIN_TIMEOUT_S ?= 1200

.PHONY: install run test test-min lint imports typecheck check bench clean

# scripts/install.sh is the one install path: the Dockerfile runs it too (same torch step,
# same pinned versions from scripts/constraints.txt).
$(STAMP): pyproject.toml clients/python/pyproject.toml scripts/install.sh scripts/constraints.txt
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" \
		sh scripts/install.sh $(VENV) -e ./clients/python -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(STAMP_MIN): pyproject.toml clients/python/pyproject.toml scripts/install.sh scripts/constraints-min.txt
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" \
		CONSTRAINTS=scripts/constraints-min.txt \
		sh scripts/install.sh $(VENV_MIN) -e ./clients/python -e ".[test]"
	touch $(STAMP_MIN)

## Start the service on 0.0.0.0:8000 (FF_* env to configure; demo model when FF_MODEL_PATH is unset)
run: $(STAMP)
	$(BIN)/fashion-florence serve

## The whole test suite (CPU; GPU tests skip themselves without a CUDA device)
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

## The engine and decoding tests once more, on the lowest supported versions (.venv-min)
test-min: $(STAMP_MIN)
	timeout $(MIN_TIMEOUT_S) $(VENV_MIN)/bin/python -m pytest -q $(MIN_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check service model_store tests bench scripts deploy clients
	$(BIN)/ruff format --check service model_store tests bench scripts deploy clients

## The layers' import contracts (pyproject.toml [tool.importlinter]) and no import cycles anywhere
imports: $(STAMP)
	PYTHONPATH=.:clients/python $(BIN)/lint-imports
	PYTHONPATH=.:clients/python $(BIN)/python scripts/check_import_cycles.py \
		service model_store bench fashion_florence_client

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint imports typecheck test

## The CPU benchmark suite on the demo model (about 3 min): engine sweep, preprocessing, service, baselines (docs/BENCHMARKS.md)
bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache .mypy_cache .ruff_cache
