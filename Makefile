# Two entry points: `make demo` (main job on the default suite) and `make test`.
# Both create .venv when it is missing. torch is installed first and alone, pinned to the
# CPU build that lies on this machine's disk.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs/demo

.PHONY: demo test test-slow lint typecheck clean interop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,real]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/decompbench run --out $(OUT) --force

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	bash .ci/install-browser
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# Cross-check against SAELens itself, installed in a side environment.
VENV_INTEROP := .venv-interop
interop:
	test -x $(VENV_INTEROP)/bin/python || $(PY) -m venv $(VENV_INTEROP)
	$(VENV_INTEROP)/bin/pip install -q torch==2.13.0
	$(VENV_INTEROP)/bin/pip install -q sae-lens -e '.[dev,real]'
	DECOMPBENCH_INTEROP=1 $(VENV_INTEROP)/bin/pytest -q -p no:cacheprovider -m interop tests/test_real_interop.py

clean:
	rm -rf $(VENV) $(VENV_INTEROP) runs .pytest_cache .mypy_cache .ruff_cache
