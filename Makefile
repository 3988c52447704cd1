# Each target bootstraps .venv by itself (pip only: uv/poetry would download CUDA torch).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench docs install clean how-to-run

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/reslab train --recipe demo --out runs/demo --overwrite
	$(BIN)/reslab eval runs/demo --data digits
	@$(MAKE) -s --no-print-directory how-to-run

# reslab lives in the virtual environment, not on PATH: say how to reach it.
how-to-run:
	@echo "reslab is installed in $(VENV)/, not on your PATH. Run it as"
	@echo "  $(BIN)/reslab --help"
	@echo "or activate the environment once per shell:"
	@echo "  source $(BIN)/activate   # then: reslab --help"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf runs build site *.egg-info
