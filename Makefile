# Two entry points: `make demo` (main job on the default suite) and `make test`.
# Both create .venv when it is missing. torch is installed first and alone, pinned to the
# CPU build that lies on this machine's disk.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs/demo

.PHONY: demo test test-slow lint typecheck clean interop bench

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

# Cross-check against SAELens itself, installed in a side environment; also a SAELens SAE
# trained there on export-acts output, scored back with `decompbench score` (issue 18).
VENV_INTEROP := .venv-interop
interop:
	test -x $(VENV_INTEROP)/bin/python || $(PY) -m venv $(VENV_INTEROP)
	$(VENV_INTEROP)/bin/pip install -q torch==2.13.0
	$(VENV_INTEROP)/bin/pip install -q sae-lens -e '.[dev,real]'
	DECOMPBENCH_INTEROP=1 $(VENV_INTEROP)/bin/pytest -q -p no:cacheprovider -m interop \
		tests/test_real_interop.py tests/test_interop_score.py

# Speed benchmarks (issue 9): every benchmarks/*.py, one at a time; vs_saelens.py runs in
# a side environment with sae-lens. Measure on an idle machine: each table flags steps
# during which other processes used the CPU.
VENV_BENCH  := .venv-bench
STAMP_BENCH := $(VENV_BENCH)/.installed
$(STAMP_BENCH): pyproject.toml
	test -x $(VENV_BENCH)/bin/python || $(PY) -m venv $(VENV_BENCH)
	$(VENV_BENCH)/bin/pip install -q torch==2.13.0
	$(VENV_BENCH)/bin/pip install -q sae-lens -e .
	touch $(STAMP_BENCH)

bench: $(STAMP) $(STAMP_BENCH)
	$(BIN)/python benchmarks/run_all.py --saelens-python $(VENV_BENCH)/bin/python

clean:
	rm -rf $(VENV) $(VENV_INTEROP) $(VENV_BENCH) runs .pytest_cache .mypy_cache .ruff_cache
