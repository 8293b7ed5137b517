# Everything a new machine needs: Python 3.11 and pip. `make train` and `make test` create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test worker processes: one per core of the 2-core CI machine; whole files per worker, so a
# module's expensive fixture (a DDP training run) is built once.
TEST_WORKERS ?= 2

.PHONY: setup train test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/icolightning-train

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python scripts/bench_conv.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
