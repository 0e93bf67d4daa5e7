# Brinell: `make demo` and `make test` each do their own set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# Where `make proto` writes; tests/unit/test_generated.py points it elsewhere to compare.
PROTO_OUT := proto

.PHONY: setup demo test lint proto bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy sdk controlplane agent
	$(BIN)/buf lint

proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) \
	  --grpc_python_out=$(PROTO_OUT) \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=quiet:$(PROTO_OUT) \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=quiet:$(PROTO_OUT) \
	  proto/brinell/v1/*.proto

bench: setup
	$(PY) bench/dispatch.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
