# Two entry points, both from a fresh clone with only Python >= 3.11 and make:
#   make quickstart   set up .venv and run the main job (train a few small GPTs on the built-in corpus, fit L(N), plot)
#   make test         set up .venv with the test extras and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/quickstart

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

.PHONY: quickstart test install
install: $(VENV)/.installed

# Four model sizes, one after another (re-running resumes each from its newest checkpoint), then L(N) and a plot.
QUICK_SIZES := 32 64 96 128
quickstart: $(VENV)/.installed
	for d in $(QUICK_SIZES); do \
	  $(BIN)/jscale train experiments/train_small.toml model.d_model=$$d model.n_heads=$$((d / 32)) \
	    train.steps=400 --out $(OUT)/d$$d || exit $$?; \
	done
	$(BIN)/jscale fit $(OUT) --law kaplan-n --n-convention non_embedding --bootstrap 200 \
	  --out $(OUT)/fit-kaplan-n.json --plot $(OUT)/fit

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q
