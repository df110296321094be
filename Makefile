# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup up test lint unit integration loadtest bench chaos clean

setup: $(STAMP)
	@scripts/ensure-prometheus.sh
	@scripts/ensure-tools.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

up: setup
	@$(PY) -m gridlb.stack

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest

loadtest: setup
	@$(PY) -m loadtest $(ARGS)

bench: setup
	@$(PY) -m bench $(ARGS)

chaos: setup
	@$(PY) -m tests.chaos $(ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
