# Two commands for a new user:
#   make serve   run the service on the embedded default (./vectordb-data, bundled model)
#   make test    run the test suite (starts SeaweedFS for the S3 tests if none is running)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test install lint

$(BIN)/vectordb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: the CPU wheel, not a multi-GB CUDA build pulled in by sentence-transformers.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[cpu,test]"
	touch $(BIN)/vectordb

install: $(BIN)/vectordb

serve: install
	$(BIN)/vectordb serve

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check vectordb ingest query storage api tests bench
