# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup up reset test lint unit integration loadtest bench chaos clean

setup: $(STAMP)
	@scripts/ensure-prometheus.sh
	@scripts/ensure-tools.sh

$(STAMP): pyproject.toml
	@scripts/ensure-python.sh $(PYTHON)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing the project and its dependencies into $(VENV) (log: $(VENV)/pip.log)"
	@$(PY) -m pip install --disable-pip-version-check -e '.[dev]' > $(VENV)/pip.log 2>&1 \
		|| { tail -30 $(VENV)/pip.log; exit 1; }
	@touch $@

up: setup
	@$(PY) -m gridlb.stack

# Start the next `make up` empty: drops .run/'s sessions, Prometheus data and logs (keeps the
# API key, the internal token and the virtualenv).
reset: setup
	@$(PY) -m gridlb.stack --reset

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup lint
	@scripts/ensure-container-engine.sh install || test $$? -eq 3   # podman for tests/e2e/ when no Docker engine answers
	$(PY) -m pytest

loadtest: setup
	@$(PY) -m loadtest $(ARGS)

bench: setup
	@$(PY) -m bench $(ARGS)

chaos: setup
	@$(PY) -m tests.chaos $(ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
