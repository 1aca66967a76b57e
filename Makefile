# Two entry points, both from a fresh clone with only Python >= 3.11 and make:
#   make quickstart   set up .venv and run the main job (a sweep of small GPTs on the built-in corpus, fit L(N), plot)
#   make test         set up .venv with the test extras and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs the same releases as pip in a fraction of the time (resolving, downloading and unpacking in parallel) and
# byte-compiles them on every core; bytecode is written at install because every test process would otherwise compile
# what it imports again (some machines set PYTHONDONTWRITEBYTECODE, so it is not passed on). Where uv cannot be
# installed or cannot reach the index (uv does not read pip.conf, so a pip-only mirror is one such case), pip does it.
INSTALL = $(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode $(1) \
	|| ($(BIN)/python -m pip install -q --upgrade pip && $(BIN)/python -m pip install -q $(1))
unexport PYTHONDONTWRITEBYTECODE
OUT ?= runs/quickstart

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv || echo "uv could not be installed: pip will install the packages"

# constraints.txt pins the JAX stack the tests run (the Colab notebooks install with it too).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(call INSTALL,-e . -c constraints.txt)
	touch $@

# PyTorch's CPU wheel where the machine keeps one on disk (no download; uv would fetch a multi-GB CUDA build from the
# index instead): the tests then load exports with transformers' own GPT2LMHeadModel. Without it those tests skip.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-*+cpu-cp311-cp311-*.whl))

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(call INSTALL,-e '.[test]' -c constraints.txt)
	$(if $(TORCH_WHEEL),$(BIN)/python -m pip install -q $(TORCH_WHEEL) || echo "torch not installed: the transformers export tests skip",)
	touch $@ $(VENV)/.installed

.PHONY: quickstart test install experiments
install: $(VENV)/.installed

# A sweep of small GPTs (experiments/quickstart.toml; re-running resumes it), then L(N) fitted and plotted.
quickstart: $(VENV)/.installed
	$(BIN)/jscale run experiments/quickstart.toml --out $(OUT)
	$(BIN)/jscale fit $(OUT) --law kaplan-n --n-convention non_embedding --bootstrap 1000 \
	  --out $(OUT)/fit-kaplan-n.json --plot $(OUT)/fit

# Every experiment of experiments/ at one scale (cpu, gpu or full), then their report (re-running resumes);
# WORKERS=2 trains each sweep with two processes (jscale run --workers); FORCE=--force runs a scale over its
# budget (the converged gpu scales are: `jscale plan` says by how much).
SCALE ?= cpu
WORKERS ?= 1
FORCE ?=
EXPERIMENTS := size sample_efficiency shape lstm recurrent compute critical_batch data efficiency
experiments: $(VENV)/.installed
	for e in $(EXPERIMENTS); do $(BIN)/jscale run experiments/$$e.toml --scale $(SCALE) --out runs/$(SCALE)/$$e \
	  --workers $(WORKERS) $(FORCE) || exit 1; done
	$(BIN)/jscale report runs/$(SCALE) --out experiments/results/$(SCALE)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2
