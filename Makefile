# kvm-manager: developer and CI entry points. Run as root on Debian (network namespaces,
# apt-get); scripts/bootstrap installs what is missing and the project into .venv.

PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: demo demo-check test unit lint guest bench bench-quick bootstrap clean

demo: bootstrap          ## a real VM behind pod networking; Ctrl-C stops and cleans up
	$(PY) -m podlab.demo

demo-check: bootstrap    ## the demo, verified and torn down; exit status 0 when it all worked
	$(PY) -m podlab.demo --check

test: bootstrap lint     ## everything CI runs: lint, types, unit, netns and e2e suites
	$(PY) -m pytest -ra --durations=10 $(PYTEST_ARGS)

unit: bootstrap          ## the suites that need no root: pure units, real QEMU over QMP
	$(PY) -m pytest -ra tests/unit tests/integration $(PYTEST_ARGS)

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

guest: bootstrap         ## build (or reuse) the e2e test guest in build/guest
	bash podlab/guest/build.sh

bench: bootstrap         ## every benchmark in benchmarks/, as Markdown tables (numbers in the README)
	$(PY) -m benchmarks

bench-quick: bootstrap   ## the same with fewer repetitions: checks that the benchmarks run
	$(PY) -m benchmarks --quick

bootstrap:
	@bash scripts/bootstrap

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
