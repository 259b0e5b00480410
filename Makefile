# Everything a newcomer needs: `make demo` and `make test` (both create .venv themselves).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench dev clean install standins check-cloud

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python >= 3.11) on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true  # optional
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	@$(BIN)/python -c "import dagster_project.definitions, duckdb, chdb, clickhouse_connect, adbc_driver_postgresql"
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

DAGSTER_HOME_DIR := $(CURDIR)/.dagster_home

$(DAGSTER_HOME_DIR)/dagster.yaml: dagster_project/dagster.yaml
	@mkdir -p $(DAGSTER_HOME_DIR) && cp $< $@

demo: $(STAMP) $(DAGSTER_HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/python -m dagster_project.demo

# Debian's Chromium for the UI tests (tests/ui): installed once, by name, from the machine's package registry.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@echo "installing Debian's chromium for the UI tests (apt-get)"
	@apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; } || \
		{ echo "cannot install chromium: run 'apt-get install chromium' as root, then make test again"; exit 1; }

# BigQuery's local stand-in (REFERENCE §4): local-bigquery, a BigQuery REST emulator on DuckDB, in a venv of its own
# (it needs Python 3.13 and DuckDB 1.5.5, whose extensions are installed from their PyPI wheels' files, since
# DuckDB cannot download them here). HOME is the venv's own folder, so the extensions stay inside it.
PYTHON_BQ ?= $(firstword $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.13*/bin/python3.13) $(shell command -v python3.13 2>/dev/null))
BQ_DIR := build/bigquery
BQ_STAMP := $(BQ_DIR)/.installed-$(shell cat tests/standins/bigquery-requirements.txt | cksum | cut -d' ' -f1)
$(BQ_STAMP): tests/standins/bigquery-requirements.txt
	@test -n "$(PYTHON_BQ)" || { echo "the BigQuery stand-in needs Python 3.13: set PYTHON_BQ=/path/to/python3.13"; exit 1; }
	@rm -rf $(BQ_DIR) && mkdir -p $(BQ_DIR)/home
	$(PYTHON_BQ) -m venv $(BQ_DIR)/venv
	$(BQ_DIR)/venv/bin/python -m pip install -q --disable-pip-version-check -r $< 2>&1 | { grep -v "^WARNING: Location" || true; }
	HOME=$(CURDIR)/$(BQ_DIR)/home $(BQ_DIR)/venv/bin/python -c "import duckdb, glob; c = duckdb.connect(); \
		[c.execute(f\"INSTALL '{f}'\") for f in glob.glob('$(BQ_DIR)/venv/lib/python3*/site-packages/duckdb_extension_*/extensions/*/*.duckdb_extension')]"
	@touch $@

standins: $(BQ_STAMP)

# Every warehouse runs, each on its real engine or its stand-in; a warehouse skipped for a missing stand-in
# fails the run (LEDGER_REQUIRE_ALL_WAREHOUSES).
# BigQuery's contract cases run beside the rest, in a second pytest process: most of their time is spent waiting
# on the stand-in server (its own process), so on 2 cores the two overlap instead of adding up. Their output is
# printed after the main run's; the target fails if either run does.
BQ_CASES := tests/contract -k bigquery
test: $(STAMP) $(CHROMIUM) $(BQ_STAMP)
	$(BIN)/ruff check .
	@log=$$(mktemp); \
	LEDGER_REQUIRE_ALL_WAREHOUSES=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(BQ_CASES) > $$log 2>&1 & bq=$$!; \
	main=0; LEDGER_REQUIRE_ALL_WAREHOUSES=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		-k "not (contract and bigquery)" || main=$$?; \
	bq_status=0; wait $$bq || bq_status=$$?; \
	echo "--- BigQuery's contract cases (run alongside) ---"; cat $$log; rm -f $$log; \
	test $$main -eq 0 -a $$bq_status -eq 0

# The contract suite against real cloud warehouses, for the paths no stand-in runs (S3 COPY, stages, 38-digit
# values): LEDGER_CHECK_BIGQUERY / _SNOWFLAKE / _REDSHIFT each hold an exporter config (JSON, secrets by env name);
# a warehouse without one is skipped, with the reason.
check-cloud: $(STAMP)
	LEDGER_CLOUD=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/contract -k "bigquery or snowflake or redshift"

bench: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[bench]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python bench/run_all.py

# The Dagster UI and daemon, as the Dagster docs recommend (`dg dev`), in this project's venv; Ctrl-C or SIGTERM stops
# it cleanly. DAGSTER_PORT to move it off 3000.
dev: $(STAMP) $(DAGSTER_HOME_DIR)/dagster.yaml
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(BIN):$$PATH DAGSTER_HOME=$(DAGSTER_HOME_DIR) \
		exec $(BIN)/dg dev -h 127.0.0.1 -p $${DAGSTER_PORT:-3000}

# Stops the local PostgreSQL servers of this folder and deletes their data wherever it lives (it says where).
clean:
	@if [ -x $(BIN)/ledgerctl ]; then LEDGER_HOME=$(CURDIR) LEDGER_DATABASE_URL= $(BIN)/ledgerctl db remove --yes >/dev/null; fi
	rm -rf $(VENV) .ledger .dagster_home .hypothesis .ruff_cache ledger.egg-info build
