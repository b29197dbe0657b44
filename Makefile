# The two commands of the quick start: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint system-deps clean bench bench-quick bench-cs bench-references

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Tools some tests need from Debian (the compose file is validated, not run; qemu-io and
# nbdcopy write through the agent's NBD export; the CS suite also runs on PostgreSQL).
system-deps:
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)
	@(command -v qemu-io >/dev/null && command -v nbdcopy >/dev/null) || \
		(apt-get update -qq && apt-get install -y -qq qemu-utils libnbd-bin >/dev/null)
	@# PostgreSQL: the [postgresql] CS tests run a throwaway server of their own (tests/pgserver.py)
	@(ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null) || \
		(apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)
	@# the dashboard's end-to-end test drives Debian's chromium with Playwright (no browser download)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

demo: $(STAMP)
	$(BIN)/drlab demo

lint: $(STAMP)
	$(BIN)/ruff check common cs ps mt agent deploy tests bench
	$(BIN)/mypy

# the unit tests on both cores (each runs servers in-process on port 0), then the process-lab
# tests one at a time (they start every daemon of a lab and measure what it does)
test: $(STAMP) system-deps lint
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --ignore=tests/integration
	$(BIN)/pytest -q -p no:cacheprovider --durations=10 tests/integration

# every benchmark (not part of `make test`): throughput, RPO, memory (bench/e2e.py), initial
# replication and resync, RTO, CS capacity; each beside references measured in the same run.
# One report in bench/results/ (JSON + markdown). BENCH_ARGS: e.g. "--seed 42 --only e2e,rto".
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.all $(BENCH_ARGS)

# the same, short (a smoke run of every benchmark, a few minutes)
bench-quick: $(STAMP) system-deps
	$(BIN)/python -m bench.all --quick $(BENCH_ARGS)

# CS capacity (not part of `make test`): heartbeats/s and latency beside a no-database endpoint,
# results in bench/results/. BENCH_ARGS adds options, e.g. BENCH_ARGS="--engine postgresql".
bench-cs: $(STAMP)
	$(BIN)/python -m bench.cs_heartbeats $(BENCH_ARGS)

# same-run ceilings for data-path throughput (TLS copy; lz4 + AES-GCM), e.g. BENCH_ARGS="--mb 512".
bench-references: $(STAMP)
	$(BIN)/python -m bench.references $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .lab
