# neoxflow: `make demo` runs the whole pipeline on the embedded local cluster, `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: help venv lint test test-unit test-cluster cluster-up cluster-up-accounting cluster-down cluster-status \
        demo demo-down bench bench-goodput bench-scale bench-merge lock

help:
	@echo "make demo             run the pipeline on the embedded local cluster in real Airflow"
	@echo "make test             lint + all tests (installs what is missing, brings the local cluster up)"
	@echo "make cluster-up       start the local cluster (add ACCOUNTING=1 for slurmdbd + MariaDB)"
	@echo "make cluster-down     stop everything cluster-up started"
	@echo "make cluster-status   show what runs"
	@echo "make bench            run the benchmarks"
	@echo "make bench-goodput    the golden run's goodput (slice gaps, recomputed iterations, parity)"
	@echo "make bench-scale      1024 tiny C4 shards through the data stages, extrapolated to real C4 (SCALE_ARGS=...)"
	@echo "make bench-merge      merge/validate peak memory at 40 vs 1024 dataset parts (no cluster needed)"

venv:
	@scripts/bootstrap.sh

lint: venv
	$(PY) -m ruff check .
	$(PY) -m pylint plugins include

cluster-up: venv
	@scripts/localcluster.sh up $(if $(filter 1,$(ACCOUNTING)),--accounting,)

cluster-up-accounting: venv
	@scripts/localcluster.sh up --accounting

cluster-down:
	@scripts/localcluster.sh down

cluster-status:
	@scripts/localcluster.sh status

test: venv
	@scripts/run_tests.sh

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-cluster: cluster-up
	$(PY) -m pytest -q -m cluster tests/cluster

demo: venv
	@scripts/demo.sh

demo-down:
	@scripts/demo.sh down

bench: cluster-up
	$(PY) bench/bench_slurm_watch.py
	$(PY) bench/bench_tokenize.py

bench-goodput: cluster-up
	$(PY) bench/bench_goodput.py

bench-scale: cluster-up
	$(PY) bench/bench_scale.py $(SCALE_ARGS)

bench-merge: venv
	$(PY) bench/bench_merge_memory.py

# Recompile requirements.lock (and requirements-uv.lock) from requirements.txt; the uv command is in
# scripts/bootstrap.sh. Run it after editing requirements.txt; the next `make` then rebuilds .venv.
lock:
	@scripts/bootstrap.sh lock
