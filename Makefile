# `make dev`: set up and run the local stack.  `make test`: set up and run every check.
# Both create the virtual environment from uv.lock on first use (and again when the lock changes).

# Python 3.12 (the Lambda runtime) when there is one that runs, else any python3 >= 3.11.
PYTHON ?= $(shell for p in $(HOME)/.pyenv/versions/3.12*/bin/python3.12 python3.12 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
# uv, pinned, installed from PyPI into .tools with the interpreter's pip (or, without one, in a
# small venv of its own): nothing else on the machine is needed. Bump it together with the `uv==` pin in pyproject.toml.
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# The local stack's packages / every package (dev group, runner extra): one stamp each.
STAMP_LOCAL := $(VENV)/.synced-local
STAMP_DEV := $(VENV)/.synced-dev
SYNC := $(UV) sync --frozen --python $(PYTHON)
# Lockfile exports: the Lambda layer (sam build) and the runner image install from these.
LAYER_REQUIREMENTS := layers/common/requirements.txt
RUNNER_REQUIREMENTS := wa_runner/requirements.txt

# The tests run on every core (pytest-xdist): `make unit PYTEST_WORKERS=0` runs them in one process.
# A worker takes whole modules (--dist loadscope) in collection order, the longest first (see
# tests/conftest.py): a module's own stack and fixtures stay in one process, and each worker
# starts the shared integration stack once, when it first needs it.
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

# Deploy (scripts/deploy.py reads samconfig.toml): make deploy ENV=staging [DRY_RUN=1] [TAG=...]
ENV ?= staging
DRY_RUN ?=
TAG ?=
SAMCONFIG ?= samconfig.toml

export SAM_CLI_TELEMETRY := 0
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: dev test lint typecheck validate compile unit integration browser bench system-deps clean lock deploy

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(TOOLS) uv==$(UV_VERSION) 2>/dev/null \
	  || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); }

# --inexact: keeps what `make test` added, so switching between the two never reinstalls.
$(STAMP_LOCAL): uv.lock pyproject.toml | $(UV)
	$(SYNC) --inexact --no-default-groups --group local
	touch $@

# Byte-compiled at install: the tests start many Python processes (stacks, runners, handler
# workers, CLIs), and where PYTHONDONTWRITEBYTECODE is set each would compile its imports again.
$(STAMP_DEV): uv.lock pyproject.toml | $(UV)
	$(SYNC) --all-extras --compile-bytecode
	touch $@ $(STAMP_LOCAL)

# The same for our own code, before each test run (only what changed since is compiled again).
compile: $(STAMP_DEV)
	$(BIN)/python -m compileall -q -j 0 layers/common functions wa_runner local ops tests

# After editing dependencies in pyproject.toml: re-resolve, then export for the layer and the image.
lock: | $(UV)
	$(UV) lock --python $(PYTHON)
	$(UV) export --frozen --no-default-groups --no-emit-project -o $(LAYER_REQUIREMENTS) --quiet
	$(UV) export --frozen --no-default-groups --no-emit-project --extra runner -o $(RUNNER_REQUIREMENTS) --quiet

dev: $(STAMP_LOCAL)
	$(BIN)/python -m local

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP_DEV)
	$(BIN)/ruff check .

typecheck: $(STAMP_DEV)
	$(BIN)/mypy layers/common/aiadmin functions wa_runner local bench ops scripts

validate: $(STAMP_DEV)
	$(BIN)/sam validate --lint --region eu-central-1

unit: compile
	$(PYTEST) tests/unit

integration: compile
	$(PYTEST) tests/integration

browser: compile system-deps
	$(PYTEST) tests/browser

test: compile system-deps lint typecheck validate
	$(PYTEST)

bench: $(STAMP_DEV)
	$(BIN)/python bench/onboarding.py
	$(BIN)/python bench/runner.py
	$(BIN)/python bench/cold_start.py

# Builds and pushes the runner image, then sam build + sam deploy; DRY_RUN=1 checks and prints only.
deploy: $(STAMP_DEV)
	$(BIN)/python scripts/deploy.py --env $(ENV) --config $(SAMCONFIG) $(if $(DRY_RUN),--dry-run) $(if $(TAG),--tag $(TAG))

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis .local-data
