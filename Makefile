# The project's entry points. `make demo` and `make test` are the whole set-up on a new machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test dev up down lint format install

$(STAMP): setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"Python 3.11+ is needed, {sys.executable} is {sys.version.split()[0]}: set PYTHON=python3.11"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	@touch $(STAMP)

install: $(STAMP)

## The main job end to end: install, start the local stack, run the pipeline, show the result.
demo: $(STAMP)
	sh scripts/ensure-java.sh
	$(BIN)/pipeline up
	$(BIN)/pipeline demo

## The test suite (what .ci/run calls).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	sh scripts/ensure-chromium.sh
	sh scripts/ensure-dovecot.sh
	$(BIN)/pytest

## Dagster's UI and daemon on the local stack: http://127.0.0.1:3000
dev: $(STAMP)
	sh scripts/ensure-java.sh
	$(BIN)/pipeline up
	$(BIN)/pipeline dev

up: $(STAMP)
	$(BIN)/pipeline up

down: $(STAMP)
	$(BIN)/pipeline down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
