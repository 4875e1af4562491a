# whisper-moe: `make demo` runs the demo pipeline, `make test` runs the tests.
# Both create (or reuse) .venv from the pinned requirements-dev.lock (which includes
# requirements-runtime.lock, the set the images install).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
LOCKS := requirements-runtime.lock requirements-dev.lock
STAMP := $(VENV)/.installed-$(shell sha256sum $(LOCKS) pyproject.toml | sha256sum | cut -c1-12)

include mk/images.mk

.PHONY: venv demo pipeline-demo test lint lock clean-venv

venv: $(STAMP)

$(STAMP): $(LOCKS) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

## The demo: `dvc repro` of both pipelines, offline, on the synthetic demo corpus with tiny.en.
demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@cat dvc_runs/compare/comparison.md
	@echo "metrics: dvc_runs/{pretrained,regular,single_lora}/evaluate/metrics.json (dvc metrics show)"
	@echo "reports: dvc_runs/{pretrained,regular,single_lora}/evaluate/report.html"
	@echo "plots:   dvc plots show (writes dvc_plots/index.html)"

## The tests, offline on CPU, in TEST_WORKERS processes (pytest-xdist) of one torch thread
## each: most of the suite is subprocesses and imports, which threads do not speed up.
TEST_WORKERS ?= 2
test: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --timeout=900 -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests benchmarks components pipelines scripts

## Both locks from the venv: install what requirements-*.in name into it first.
lock:
	$(BIN)/python -m pip freeze --all --exclude-editable > $(VENV)/freeze.txt
	$(BIN)/python scripts/split_lock.py $(VENV)/freeze.txt

clean-venv:
	rm -rf $(VENV)
