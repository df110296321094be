# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup up reset test lint unit integration loadtest bench chaos mutate clean

setup: $(STAMP)
	@scripts/ensure-prometheus.sh
	@scripts/ensure-postgres.sh
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

# Start the next `make up` empty: drops .run/'s sessions, PostgreSQL and Prometheus data and logs
# (keeps the API key, the internal token and the virtualenv).
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

# Mutation testing of the decision core against the fast unit tests (docs/mutation.md): one module
# at a time, each bounded in time, then the score per module. Results accumulate in mutants/
# (`make clean` or `rm -rf mutants` for a fresh start); MUTATE_MODULES=balancer.ledger runs one.
MUTATE_MODULES ?= balancer.selection balancer.ledger balancer.aging balancer.placement substation.charging \
	ingress.idempotency ingress.reconciler balancer.policy
MUTATE_JOBS ?= 1
MUTATE_TIMEOUT_S ?= 1800
mutate: setup
	@for m in $(MUTATE_MODULES); do \
		start=$$(date +%s); \
		timeout $(MUTATE_TIMEOUT_S) $(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) "$$m.*" \
			> .mutmut-$$m.log 2>&1 || { tail -30 .mutmut-$$m.log; exit 1; }; \
		mv .mutmut-$$m.log mutants/$$m.log; \
		echo "mutate: $$m done in $$(( $$(date +%s) - start )) s (log: mutants/$$m.log)"; \
	done
	@$(PY) scripts/mutation_report.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache mutants
