# The two commands of the README: `make quickstart` (the main job) and `make test` (the suite).
# Each creates .venv on first use; torch/torchvision are pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extras of pyproject.toml to install; CI adds lmms (the real lmms-eval test): make test EXTRAS=dev,lmms
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: quickstart test env clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

env: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/unizoo quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=15

clean:
	rm -rf $(VENV) runs
