# sparkfeed: two commands do everything on a fresh Debian-like machine (root, Python 3.11, Java 17).
#   make demo       set up, build the jar, run the demo job (Spark writes a dataset; inspect it)
#   make test       set up, build the jar, JVM tests (gradle test), then pytest over tests/
#   make test-fast  pytest without the tests marked slow (the edit-test loop)
# Each step leaves a stamp, so a second run skips what is done. Set-up steps print one line each;
# their full output goes to build/setup.log, printed when a step fails.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
JAR := python/sparkfeed/jars/sparkfeed.jar
JVM_SOURCES := build.gradle settings.gradle $(shell find jvm/src/main -type f 2>/dev/null)
DEMO_DIR ?= build/demo
PYTEST_ARGS ?=
# pytest-xdist: tests run in as many processes as there are cores (at most 4: each may hold a
# Spark JVM), a whole test file per process (its module fixtures, a Spark-written dataset or a
# cluster, are built once).
PYTEST_PARALLEL ?= --numprocesses=auto --maxprocesses=4 --dist=loadfile
SETUP_LOG ?= build/setup.log
STEP := .ci/step $(SETUP_LOG)

.PHONY: all setup tools venv jar demo demo-dataset test test-fast test-jvm test-py bench clean

all: demo

setup: tools venv

# OS tools: Gradle and JUnit 4 from the distribution's packages, only when missing.
tools: $(VENV)/.tools
$(VENV)/.tools:
	@if ! command -v gradle >/dev/null || [ ! -f /usr/share/java/junit4.jar ]; then \
	  $(STEP) "apt: updating the package lists" apt-get update -q && \
	  $(STEP) "apt: installing gradle and junit4" env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q gradle junit4; \
	fi
	@mkdir -p $(VENV) && touch $@

# Python: a venv with the package (editable) and its dependencies; torch pinned to the CPU wheel.
# pyspark comes first, alone: the jar compiles against its jars, so under `make test` Gradle
# builds and tests the jar while pip installs the rest (`-j2` below).
PYSPARK := $(VENV)/.pyspark
$(PYSPARK): python/pyproject.toml
	@test -x $(PY) || $(STEP) "python: creating the virtualenv $(VENV)" $(PYTHON) -m venv $(VENV)
	@$(STEP) "pip: upgrading pip, setuptools, wheel" $(PIP) install -q --upgrade pip setuptools wheel
	@$(STEP) "pip: installing pyspark (the 'spark' extra's)" $(PIP) install -q 'pyspark>=3.5'
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: $(PYSPARK)
	@$(STEP) "pip: installing torch 2.13.0 (CPU)" $(PIP) install -q torch==2.13.0
	@$(STEP) "pip: installing sparkfeed (editable) with spark, dali, test" \
	  $(PIP) install -q -e 'python[spark,dali,test]'
	@touch $@

# The Spark data-source jar, compiled against the installed pyspark's jars and bundled in the package.
# (found without importing pyspark: pip may still be installing beside it)
SPARK_JARS = "$$($(PY) -c 'import os, importlib.util as u; print(os.path.join(os.path.dirname(u.find_spec("pyspark").origin), "jars"))')"
jar: $(JAR)
$(JAR): $(JVM_SOURCES) $(PYSPARK) $(VENV)/.tools
	@$(STEP) "gradle: building the Spark data-source jar" gradle -q --offline --no-daemon \
	  -PsparkJars=$(SPARK_JARS) jar
	@mkdir -p $(dir $(JAR)) && cp build/libs/sparkfeed.jar $(JAR)

# The whole story on the embedded default (local mode): a raw image-caption corpus ->
# spark-submit preprocessing (validate, dedupe, resize, split, write with sparkfeed) ->
# a few training steps with sparkfeed.DataLoader (loading throughput printed) -> inspect;
# then a plain df.write.partitionBy("split").parquet(...) output indexed and loaded (open data).
demo: setup jar
	$(PY) examples/make_raw_corpus.py --output $(DEMO_DIR)/raw --images 200 --overwrite
	PYSPARK_PYTHON=$(abspath $(PY)) $(VENV)/bin/spark-submit --conf spark.log.level=WARN \
	  --jars "$$($(VENV)/bin/sparkfeed jar)" examples/preprocess_images.py \
	  --input $(DEMO_DIR)/raw --output $(DEMO_DIR)/ds
	$(PY) examples/train.py --data $(DEMO_DIR)/ds/train --val $(DEMO_DIR)/ds/val --steps 10 \
	  --batch-size 16 --workers 1 --checkpoint $(DEMO_DIR)/ckpt.pt
	$(VENV)/bin/sparkfeed inspect $(DEMO_DIR)/ds/train
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) examples/open_data.py --output $(DEMO_DIR)/open

# The issue-1 demo job alone: Spark generates 2,000 64-px JPEG samples, writes them, inspects.
demo-dataset: setup jar
	$(PY) examples/demo_dataset.py --output $(DEMO_DIR)/images --samples 2000

# The loading benchmark (quick: under 2 minutes here); results in build/bench (JSON, markdown, PNG).
bench: setup jar
	$(VENV)/bin/sparkfeed bench --quick --out build/bench

# JUnit tests of the jar (no SparkSession); they need only pyspark's jars, not the whole venv.
test-jvm: $(JAR)
	@$(STEP) "gradle: JVM tests (JUnit)" gradle -q --offline --no-daemon -PsparkJars=$(SPARK_JARS) test

test-py: setup jar
	$(PY) -m pytest -q -ra $(PYTEST_PARALLEL) tests $(PYTEST_ARGS)

# The fast loop: everything not marked slow (minutes-long end-to-end runs, Spark job kills).
test-fast: setup jar
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_PARALLEL) tests $(PYTEST_ARGS)

# pip's install of the rest and Gradle's jar + JVM tests side by side, then pytest.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target tools venv test-jvm
	@$(MAKE) --no-print-directory test-py

clean:
	rm -rf build .gradle $(JAR) $(VENV)
