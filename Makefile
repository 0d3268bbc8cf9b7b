# sdd-harness — `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SDD    := $(VENV)/bin/sdd
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: help install install-detectron2 lint test test-fast bench gpu-check demo reproduce-sdd validate plan tables slurm-up slurm-down clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

install:  ## create .venv and install the pinned lock (no-op when lock.txt is unchanged)
	@bash tools/install.sh

install-detectron2: install  ## optional Mask R-CNN backend (pinned commit, or D2_SRC=<local checkout>)
	@bash tools/install-detectron2.sh

lint: install  ## ruff (lint + format check, line length 120) and mypy on the lowest floors (CI runs it first)
	$(VENV)/bin/ruff check harness tests tools
	$(VENV)/bin/ruff format --check harness tests tools
	$(VENV)/bin/mypy

test: install  ## run the whole test suite (CPU; TEST_WORKERS pytest-xdist workers, the Slurm tests on one of them)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=10 $(PYTEST_ARGS)

test-fast: install  ## the test suite without the slow (full-size architecture) tests
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

bench: install  ## benchmarks under tests/perf/ (print their figures; not timed tests)
	$(PY) tests/perf/bench_checks.py
	$(PY) tests/perf/bench_dse.py
	$(PY) tests/perf/bench_analysis.py
	$(PY) tests/perf/bench_jobs.py
	$(PY) tests/perf/bench_realsize.py
	$(PY) tests/perf/bench_pipeline.py
	$(PY) tests/perf/bench_monitor.py
	$(PY) tests/perf/bench_writes.py
	$(PY) tests/perf/bench_archs.py

gpu-check:  ## on a CUDA machine: every job at real size on its GPU, one table (docs/gpu.md; ARGS=--smoke on a CPU)
	@bash tools/gpu-check.sh $(ARGS)

demo: install  ## the whole pipeline in miniature on generated data (CPU)
	$(SDD) demo

reproduce-sdd: install  ## the paper's grid on a cluster: CLUSTER=<profile> [SUITE=sdd] (checks data and checkpoints first)
	@test -n "$(CLUSTER)" || { echo "usage: make reproduce-sdd CLUSTER=<profile in slurm/clusters/> [SUITE=sdd]"; exit 2; }
	$(SDD) reproduce --suite $(or $(SUITE),sdd) --cluster $(CLUSTER)

validate: install  ## validate every registry file under benchmarks/
	$(SDD) validate

plan: install  ## dry run of the paper's grid: SUITE=sdd
	$(SDD) plan --suite $(or $(SUITE),sdd)

tables: install  ## collect records and build tables, figures and REPORT.md: SUITE=mini
	$(SDD) collect --suite $(or $(SUITE),mini)
	$(SDD) tables --suite $(or $(SUITE),mini) --figures

slurm-up:  ## start the single-node test Slurm cluster on loopback (root; installs Debian packages)
	bash slurm/local/up.sh

slurm-down:  ## stop what slurm-up started
	bash slurm/local/down.sh

clean:  ## remove the virtual environment and caches (keeps results/)
	rm -rf $(VENV) .pytest_cache build *.egg-info
