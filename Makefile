# The course's commands. `make` alone lists them. Every target creates .venv on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Tests never touch your data/ folder: they run in a throw-away data root.
# (expanded once: a recursive variable would name a new folder at every use)
ifndef TEST_DATA_DIR
TEST_DATA_DIR := $(shell mktemp -u /tmp/medallion-test.XXXXXX)
endif

.PHONY: help install run test unit lab data bench doctor lint clean reset notebooks pipeline dictionary \
	spark-jars test-spark test-cluster

help: ## List the targets (this text)
	@echo "Medallion lakehouse course on healthcare data. Targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the course package with its dependencies

run: $(STAMP) ## Generate the default dataset and execute the course notebooks headlessly, in order
	$(PY) -m utils.run_course

test: $(STAMP) ## Run the unit tests, then every notebook under nbval (in a temporary data folder)
	COURSE_DATA_DIR=$(TEST_DATA_DIR) $(PY) -m pytest tests -q; rc=$$?; rm -rf $(TEST_DATA_DIR); exit $$rc
	COURSE_DATA_DIR=$(TEST_DATA_DIR)-nb $(PY) -m pytest -q --nbval notebooks \
		--sanitize-with tests/nbval_sanitize.cfg; rc=$$?; rm -rf $(TEST_DATA_DIR)-nb; exit $$rc

# ----- Apache Spark, the reference engine (needs Java 17 and, once, Maven Central) ---------------
# The Sail run the Spark targets are compared with; give SAIL_REFERENCE=<folder> to reuse one
# (CI builds it once for test-spark and test-cluster). A folder of ours is removed afterwards.
SAIL_REFERENCE ?= $(TEST_DATA_DIR)-sail
SPARK_STATE := $(CURDIR)/.spark
# nbval's masks plus the engine's name, the one output that must differ between engines
ENGINE_SANITIZE := cat tests/nbval_sanitize.cfg tests/nbval_sanitize_engines.cfg > $(TEST_DATA_DIR).cfg
COMPARE_WITH_SAIL := $(PY) -m utils.compare_engines --build-reference $(SAIL_REFERENCE)
CLEAN_SPARK_RUN = rm -rf $(TEST_DATA_DIR)-$(1) $(TEST_DATA_DIR).cfg; \
	case "$(SAIL_REFERENCE)" in $(TEST_DATA_DIR)-sail) rm -rf $(SAIL_REFERENCE);; esac

spark-jars: $(STAMP) ## Download the delta-spark jars (Maven Central, once) into the Ivy cache
	$(PY) -m utils.spark_server jars

test-spark: spark-jars ## Every notebook under nbval on a Spark Connect server with Delta (JVM); gold must equal Sail's
	@$(ENGINE_SANITIZE)
	COURSE_DATA_DIR=$(TEST_DATA_DIR)-spark $(PY) -m utils.spark_server run --state $(SPARK_STATE)/test-spark \
		--server-timezone America/Los_Angeles -- \
		bash -c '$(PY) -m pytest -q tests/test_engine_parity.py tests/test_remote_engine.py && $(PY) -m pytest -q --nbval notebooks \
		--sanitize-with $(TEST_DATA_DIR).cfg' && $(COMPARE_WITH_SAIL) $(TEST_DATA_DIR)-spark; \
		rc=$$?; $(call CLEAN_SPARK_RUN,spark); exit $$rc

# 00-05 build every course table; 06-08 only read them (test-spark runs those on Spark)
test-cluster: spark-jars ## Notebooks 00-05 on a standalone Spark cluster (master + 2 workers on 127.0.0.1); gold must equal Sail's
	COURSE_DATA_DIR=$(TEST_DATA_DIR)-cluster $(PY) -m utils.spark_server run --cluster \
		--state $(SPARK_STATE)/test-cluster --server-timezone Asia/Kolkata -- \
		$(PY) -m utils.run_course --jobs 1 --only 00 01 02 03 04 05 \
		&& $(COMPARE_WITH_SAIL) $(TEST_DATA_DIR)-cluster; rc=$$?; $(call CLEAN_SPARK_RUN,cluster); exit $$rc

unit: $(STAMP) ## Run only the unit tests (fast)
	COURSE_DATA_DIR=$(TEST_DATA_DIR) $(PY) -m pytest tests -q; rc=$$?; rm -rf $(TEST_DATA_DIR); exit $$rc

notebooks: $(STAMP) ## Re-execute the notebooks in place (refreshes the outputs nbval compares)
	COURSE_DATA_DIR=$(TEST_DATA_DIR) $(PY) -m utils.run_course --in-place
	rm -rf $(TEST_DATA_DIR)

lab: $(STAMP) ## Open JupyterLab on notebooks/
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

data: $(STAMP) ## Generate the default course dataset into data/landing
	$(PY) -m data_generator --default

bench: $(STAMP) ## Run the benchmarks and write data/reports/benchmarks.{json,md}
	$(PY) -m benchmarks

doctor: $(STAMP) ## Print engine, versions, paths and anything missing
	$(PY) -m utils.doctor

lint: $(STAMP) ## Check code style with ruff
	$(VENV)/bin/ruff check utils data_generator benchmarks tests

pipeline: $(STAMP) ## Run the declarative pipeline (notebooks/pipeline) locally on the default dataset
	@test -f "$$($(PY) -c 'from utils import get_config; print(get_config().manifest_path)')" \
		|| $(PY) -m data_generator --default --no-progress
	$(PY) -m utils.pipelines run notebooks/pipeline

dictionary: $(STAMP) ## Regenerate docs/data_dictionary.md from utils/contracts.yml (after editing the contract)
	$(PY) -m utils.gold --write-dictionary

# the data root of utils.config: $COURSE_DATA_DIR, else data/ in the repository
DATA_ROOT := $(or $(COURSE_DATA_DIR),data)

reset: ## Remove generated data, tables and figures so a room can start over (keeps .venv)
	rm -rf $(DATA_ROOT)/landing $(DATA_ROOT)/lakehouse $(DATA_ROOT)/reports $(DATA_ROOT)/scratch \
		$(DATA_ROOT)/executed $(DATA_ROOT)/pipelines $(DATA_ROOT)/_bronze_staging

clean: ## Remove .venv, caches and executed notebook copies (keeps data/)
	rm -rf $(VENV) .pytest_cache build *.egg-info data/executed
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

pipeline-spark: spark-jars ## Run notebooks/pipeline with the official spark-pipelines CLI on JVM Spark + Delta; gold must equal the local runner's
	COURSE_DATA_DIR=$(TEST_DATA_DIR)-spark $(PY) -m utils.pipelines.official_check; rc=$$?; rm -rf $(TEST_DATA_DIR)-spark; exit $$rc

# The schema tests/test_bundle.py validates databricks.yml + resources/*.yml against: what
# `databricks bundle schema` prints, from a Databricks CLI built from its Go module (needs Go and
# the Go module proxy, here only; the test reads the stored file). The binary stays in build/.
DATABRICKS_CLI_VERSION ?= v1.12.1
DATABRICKS_CLI := build/databricks-cli/databricks-$(DATABRICKS_CLI_VERSION)
bundle-schema: ## Rebuild tests/fixtures/databricks_bundle_schema.json with the Databricks CLI (Go; ~4 min the first time)
	go mod download github.com/databricks/cli@$(DATABRICKS_CLI_VERSION)
	cd "$$(go env GOMODCACHE)/github.com/databricks/cli@$(DATABRICKS_CLI_VERSION)" && go build -trimpath \
		-ldflags "-X github.com/databricks/cli/internal/build.buildVersion=$(DATABRICKS_CLI_VERSION:v%=%)" \
		-o "$(CURDIR)/$(DATABRICKS_CLI)" .
	$(DATABRICKS_CLI) bundle schema > tests/fixtures/databricks_bundle_schema.json
	$(DATABRICKS_CLI) --version > tests/fixtures/databricks_bundle_schema.version
