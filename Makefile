# Quick start: `make demo` then `make test`. Needs only python3 (>= 3.11) on the PATH.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Prefect runs offline with an embedded, temporary API; no telemetry.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_LOGGING_LEVEL ?= WARNING
export DASK_LOGGING__DISTRIBUTED := warning

# Local Prefect server for `make server` / `make deploy` / `make worker` (SQLite in .prefect/).
PREFECT_PORT ?= 4200
SERVER_API := http://127.0.0.1:$(PREFECT_PORT)/api
DEMO_INPUTS := out/demo/inputs/before.tif
WORKER_LOG_LEVEL ?= INFO

.PHONY: demo test lint typecheck docs clean help server deploy worker

help:
	@echo "make demo   - install into .venv, run the detect-changes flow on a synthetic scene (out/demo)"
	@echo "make test   - install test dependencies into .venv and run the test suite"
	@echo "make lint   - ruff check; make typecheck - mypy --strict on microchange/"
	@echo "make docs   - build the documentation site (mkdocs --strict) into site/; open site/index.html"
	@echo "make server - local Prefect server and UI on http://127.0.0.1:4200 (SQLite in .prefect/)"
	@echo "make deploy - create the work pool if missing and register deployments/prefect.yaml"
	@echo "make worker - a process worker that runs the deployments' flows from this folder"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml; plain pip (not uv/poetry).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import microchange, prefect, torch, rasterio"
	touch $@

demo: $(VENV)/.installed
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} $(BIN)/microchange demo --out out/demo

test: $(VENV)/.installed
	tmp=$$(mktemp -d) && PREFECT_HOME=$$tmp $(BIN)/python -m pytest -q $(PYTEST_ARGS); \
	  rc=$$?; rm -rf $$tmp; exit $$rc

server: $(VENV)/.installed
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} PREFECT_UI_API_URL=$(SERVER_API) \
	  $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

$(DEMO_INPUTS): | $(VENV)/.installed
	$(BIN)/microchange demo --out out/demo --runner local -q

deploy: $(VENV)/.installed $(DEMO_INPUTS)
	export PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} \
	  PREFECT_API_URL=$${PREFECT_API_URL:-$(SERVER_API)} MICROCHANGE_HOME=$(CURDIR); \
	$(BIN)/prefect work-pool inspect microchange > /dev/null 2>&1 || \
	  $(BIN)/prefect work-pool create microchange --type process; \
	$(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

worker: $(VENV)/.installed
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} \
	  PREFECT_API_URL=$${PREFECT_API_URL:-$(SERVER_API)} MICROCHANGE_HOME=$(CURDIR) \
	  PREFECT_LOGGING_LEVEL=$(WORKER_LOG_LEVEL) $(BIN)/prefect worker start --pool microchange

lint: $(VENV)/.installed
	$(BIN)/ruff check microchange tasks flows tests benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy microchange

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf out .prefect .pytest_cache .mypy_cache .ruff_cache
