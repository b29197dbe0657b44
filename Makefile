# The two commands of the quick start: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/drlab demo

lint: $(STAMP)
	$(BIN)/ruff check common cs ps mt agent deploy tests bench
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .lab
