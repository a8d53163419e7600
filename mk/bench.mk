# Benchmarks (issue 9). Included by the root Makefile, which defines PY (the venv's python).
PY ?= .venv/bin/python
BENCH_ONLY ?= L,T,N,R,S,B
BENCH_OUT ?= bench/results

.PHONY: bench bench-smoke bench-typecheck

bench: install-py models ## full benchmark suite on loopback (~10 min): writes bench/results/<date>.md, .json and PNG plots
	scripts/install-system.sh redis-server
	$(PY) bench/run.py --profile full --only $(BENCH_ONLY) --out $(BENCH_OUT)

bench-smoke: install-py ## a few seconds per benchmark scenario, no targets judged (report in a temp dir)
	scripts/install-system.sh redis-server
	$(PY) bench/run.py --profile smoke --only $(BENCH_ONLY)

bench-typecheck: ## mypy --strict on the benchmark suite (its modules import each other by file)
	MYPYPATH=bench $(PY) -m mypy bench/*.py
