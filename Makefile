# `make dev`: set up and run the local stack.  `make test`: set up and run every check.
# Both create the virtual environment and install what they need on first use.

# Python 3.12 (the Lambda runtime) when there is one that runs, else any python3 >= 3.11.
PYTHON ?= $(shell for p in $(HOME)/.pyenv/versions/3.12*/bin/python3.12 python3.12 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export SAM_CLI_TELEMETRY := 0

.PHONY: dev test lint typecheck validate unit integration browser bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/python -m local

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy layers/common/aiadmin functions wa_runner local bench ops

validate: $(STAMP)
	$(BIN)/sam validate --lint --region eu-central-1

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

browser: $(STAMP) system-deps
	$(BIN)/pytest tests/browser

test: $(STAMP) system-deps lint typecheck validate
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/onboarding.py
	$(BIN)/python bench/runner.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .local-data
