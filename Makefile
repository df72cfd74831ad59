# sae-genomics: `make demo` and `make test` each create or refresh .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sae-genomics-installed
REF_VENV ?= .venv-reference
REF_STAMP := $(REF_VENV)/.installed
export SAE_GENOMICS_HOME ?= $(CURDIR)/.sae-genomics
export DAGSTER_HOME := $(SAE_GENOMICS_HOME)/dagster
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000

.PHONY: install demo test lint ui bench clean browser servers

install: $(STAMP)

# Installs only when pyproject.toml or the lock changed (or .venv is new): a second run is a no-op.
# torch is pinned by requirements.lock to 2.13.0; where the pip configuration offers the CPU build
# (as on CPU-only machines set up for this project) pip takes it and no CUDA packages come along.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sae-genomics needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint requirements.lock "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --constraint requirements.lock --editable ".[dev]"
	touch $(STAMP)

# The official tahoe-x1 package, only for the parity test (see external/tahoe-x1-reference).
$(REF_STAMP): $(STAMP) external/tahoe-x1-reference/install.sh external/tahoe-x1-reference/reference.lock external/tahoe-x1-reference/import-requirements.txt
	bash external/tahoe-x1-reference/install.sh $(VENV) $(REF_VENV)
	touch $(REF_STAMP)

demo: $(STAMP)
	$(BIN)/sae-genomics demo
	@echo "Try: $(BIN)/sae-genomics sql \"select cell_type, count(*) from cells where dataset = 'pbmc68k' group by all\""

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser tests drive Debian's Chromium; installed here when absent (needs root or sudo and apt).
CHROMIUM ?= /usr/bin/chromium
export SAE_GENOMICS_CHROMIUM := $(CHROMIUM)
browser:
	@test -x $(CHROMIUM) || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	}
	@$(CHROMIUM) --version

# The cluster-profile test starts real PostgreSQL and Redis servers (Debian's); installed here when absent.
servers:
	@command -v redis-server >/dev/null && { command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  echo "installing Debian's redis-server and postgresql for the cluster-profile test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server postgresql >/dev/null; \
	}

test: $(STAMP) $(REF_STAMP) lint browser servers
	SAE_GENOMICS_HOME=$$(mktemp -d) && DAGSTER_HOME=$$SAE_GENOMICS_HOME/dagster && mkdir -p $$DAGSTER_HOME \
	  && cp dagster.yaml $$DAGSTER_HOME/ && export SAE_GENOMICS_HOME DAGSTER_HOME \
	  && VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs
	$(BIN)/python -m pytest

ui: $(STAMP)
	$(BIN)/sae-genomics ui --host $(UI_HOST) --port $(UI_PORT)

bench: $(STAMP)
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache .ruff_cache
