# Everything a new user needs: `make demo` and `make test` create the virtualenv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit lint install services bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[web,test,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/digest demo

services:
	bash scripts/ensure-services.sh

# The whole suite: tests/unit, tests/integration and tests/system (README's test command).
test: $(STAMP) services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast loop: no services started or needed, under a minute.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The gates: ruff's rule set, mypy and the dependency rule (import-linter's contracts),
# all configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check digest workers bench tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf var test-output
