# jobenergy: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-live-repeat lint bench system-deps dist clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[all,test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jobenergy demo $(DEMO_ARGS)

# Debian packages the tests run against for real: PostgreSQL server, gcc (simulated NVML).
system-deps:
	@bash scripts/system-deps.sh

test: system-deps $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The live Slurm test N times in a row, each from a torn-down cluster (cluster.sh down):
# the check that it never flakes. Stops at the first failure (its work dir is kept).
N ?= 10
test-live-repeat: system-deps $(STAMP)
	@for i in $$(seq 1 $(N)); do \
	  bash tests/slurm/cluster.sh down >/dev/null; \
	  echo "== live run $$i/$(N) from a torn-down cluster"; \
	  CI=true $(VENV)/bin/pytest -q -p no:cacheprovider tests/slurm $(PYTEST_ARGS) || exit 1; \
	done; echo "== $(N) consecutive green live runs"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/agent_bench.py
	$(PY) bench/ingest_bench.py
	$(PY) bench/auth_bench.py
	$(PY) bench/series_bench.py
	$(PY) bench/budget_bench.py

# The wheel and sdist for installing elsewhere (deploy/INSTALL.md): each holds the units, the
# Slurm hooks, the SPANK plugin source and the example configs that `jobenergy setup` installs.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	@ls -l dist

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
