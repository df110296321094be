# The two commands a newcomer needs: `make up` and `make test`.
# Each installs what it needs on its first run, and only that: `make up` the runtime (Python
# package, Prometheus), `make test` the test tools on top (the dev extras, docker-compose, a
# container engine), `make bench` the benchmark tools (matplotlib, wrk, nginx). `make setup`
# installs everything. tests/unit/test_makefile.py holds the Makefile to this.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check
# One stamp per set of extras: each is installed once, again when pyproject.toml changes.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
BENCH := $(VENV)/.installed-bench

.PHONY: setup runtime test-tools bench-tools up reset test lint unit integration loadtest bench \
	chaos mutate clean

setup: runtime test-tools bench-tools

# What running needs: the package without extras, and prometheus/promtool.
runtime: $(RUNTIME)
	@scripts/ensure-prometheus.sh

# What `make test` needs on top: pytest, ruff, mypy, ... (the dev extras), docker-compose and
# PostgreSQL (the ingress store's contract tests and the replicas on PostgreSQL).
test-tools: runtime $(DEV)
	@scripts/ensure-tools.sh test
	@scripts/ensure-postgres.sh

# What `make bench` needs on top: matplotlib (the bench extras), wrk and nginx.
bench-tools: runtime $(BENCH)
	@scripts/ensure-tools.sh bench

$(VENV)/bin/python:
	@scripts/ensure-python.sh $(PYTHON)
	@$(PYTHON) -m venv $(VENV)

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	@echo "setup: installing the project and its dependencies into $(VENV) (log: $(VENV)/pip.log)"
	@$(PIP) -e . > $(VENV)/pip.log 2>&1 || { tail -30 $(VENV)/pip.log; exit 1; }
	@touch $@

$(DEV): $(RUNTIME)
	@echo "setup: installing the test tools (the dev extras) into $(VENV) (log: $(VENV)/pip-dev.log)"
	@$(PIP) -e '.[dev]' > $(VENV)/pip-dev.log 2>&1 || { tail -30 $(VENV)/pip-dev.log; exit 1; }
	@touch $@

$(BENCH): $(RUNTIME)
	@echo "setup: installing the benchmark tools (the bench extras) into $(VENV) (log: $(VENV)/pip-bench.log)"
	@$(PIP) -e '.[bench]' > $(VENV)/pip-bench.log 2>&1 || { tail -30 $(VENV)/pip-bench.log; exit 1; }
	@touch $@

up: runtime
	@$(PY) -m gridlb.stack

# Start the next `make up` empty: drops .run/'s sessions, PostgreSQL and Prometheus data, logs
# and the policy chosen with POST /-/reload (keeps the API key, the internal token and the
# virtualenv).
reset: runtime
	@$(PY) -m gridlb.stack --reset

lint: test-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: test-tools lint
	@scripts/ensure-container-engine.sh install || test $$? -eq 3   # podman for tests/e2e/ when no Docker engine answers
	@scripts/ensure-victoria-metrics.sh   # for tests/integration/test_victoria_metrics.py
	$(PY) -m pytest

loadtest: runtime
	@$(PY) -m loadtest $(ARGS)

bench: bench-tools
	@$(PY) -m bench $(ARGS)

chaos: runtime
	@$(PY) -m tests.chaos $(ARGS)

# Mutation testing of the decision core against the fast unit tests (docs/mutation.md): one module
# at a time, each bounded in time, then the score per module. Results accumulate in mutants/
# (`make clean` or `rm -rf mutants` for a fresh start); MUTATE_MODULES=balancer.ledger runs one.
MUTATE_MODULES ?= balancer.selection balancer.ledger balancer.aging balancer.placement substation.charging \
	substation.allocation ingress.idempotency ingress.reconciler balancer.policy
MUTATE_JOBS ?= 1
MUTATE_TIMEOUT_S ?= 1800
mutate: test-tools
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
