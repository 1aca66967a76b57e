# Two entry points, both from a fresh clone with only Python >= 3.11 and make:
#   make quickstart   set up .venv and run the main job (a sweep of small GPTs on the built-in corpus, fit L(N), plot)
#   make test         set up .venv with the test extras and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip byte-compiles what it installs one file at a time (~45 s of a fresh install here); compileall does it on every
# core, less the packages' own test suites (~18 s). Where Python is told not to write bytecode (some machines set
# PYTHONDONTWRITEBYTECODE), every process would compile what it imports again: it is not told so here. (A file that
# does not compile is only imported more slowly, as pip, which ignores such files too, would leave it.)
COMPILE := $(BIN)/python -m compileall -q -j 0 -x '/site-packages/.*/(tests?|testing|_tests)/' jscale $(VENV)/lib \
	|| echo "compileall: some files were left to compile on import"
unexport PYTHONDONTWRITEBYTECODE
OUT ?= runs/quickstart

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --no-compile -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --no-compile -e '.[test]'
	$(COMPILE)
	touch $@ $(VENV)/.installed

.PHONY: quickstart test install experiments
install: $(VENV)/.installed

# A sweep of small GPTs (experiments/quickstart.toml; re-running resumes it), then L(N) fitted and plotted.
quickstart: $(VENV)/.installed
	$(BIN)/jscale run experiments/quickstart.toml --out $(OUT)
	$(BIN)/jscale fit $(OUT) --law kaplan-n --n-convention non_embedding --bootstrap 1000 \
	  --out $(OUT)/fit-kaplan-n.json --plot $(OUT)/fit

# Every experiment of experiments/ at one scale (cpu, gpu or full), then their report (re-running resumes).
SCALE ?= cpu
EXPERIMENTS := size sample_efficiency shape lstm recurrent compute critical_batch data efficiency
experiments: $(VENV)/.installed
	for e in $(EXPERIMENTS); do $(BIN)/jscale run experiments/$$e.toml --scale $(SCALE) --out runs/$(SCALE)/$$e || exit 1; done
	$(BIN)/jscale report runs/$(SCALE) --out experiments/results/$(SCALE)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2
