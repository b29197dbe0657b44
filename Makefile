# The two commands of the quick start: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint system-deps clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Tools some tests need from Debian (the compose file is validated, not run; qemu-io and
# nbdcopy write through the agent's NBD export).
system-deps:
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)
	@(command -v qemu-io >/dev/null && command -v nbdcopy >/dev/null) || \
		(apt-get update -qq && apt-get install -y -qq qemu-utils libnbd-bin >/dev/null)

demo: $(STAMP)
	$(BIN)/drlab demo

lint: $(STAMP)
	$(BIN)/ruff check common cs ps mt agent deploy tests
	$(BIN)/mypy

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .lab
