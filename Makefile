# whisper-moe: `make demo` runs the demo pipeline, `make test` runs the tests.
# Both create (or reuse) .venv from the pinned requirements.lock.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-12)

include mk/images.mk

.PHONY: venv demo pipeline-demo test lint lock clean-venv

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

## The demo: `dvc repro` of both pipelines, offline, on the synthetic multi-accent corpus with tiny.en.
demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@cat dvc_runs/compare/comparison.md
	@echo "metrics: dvc_runs/{pretrained,regular,single_lora}/evaluate/metrics.json (dvc metrics show)"
	@echo "reports: dvc_runs/{pretrained,regular,single_lora}/evaluate/report.html"
	@echo "plots:   dvc plots show (writes dvc_plots/index.html)"

## The tests, offline on CPU.
test: venv
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q --timeout=900 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests benchmarks components pipelines scripts

lock:
	$(BIN)/python -m pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu/torch==\1/' \
	  -e 's/^\([A-Za-z0-9_.-]*\) @ file:.*-\([0-9][0-9.]*\)-py.*/\1==\2/' > requirements.lock

clean-venv:
	rm -rf $(VENV)
