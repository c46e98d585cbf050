# The two set-up commands are `make run` and `make test`; both build .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt venv clean bench bench-quick deb

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Foreground daemon on built-in defaults: state under ./coordination unless
# COORDINATION_DIR (or a config file) says otherwise.
run: $(STAMP)
	$(BIN)/coordd run

lint: $(STAMP)
	$(BIN)/ruff check coordd coordctl tests
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

fmt: $(STAMP)
	$(BIN)/ruff check --fix coordd coordctl tests
	$(BIN)/ruff format coordd coordctl tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
