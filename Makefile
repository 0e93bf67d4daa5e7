# Brinell: `make demo` and `make test` each do their own set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# Where `make proto` writes; tests/unit/test_generated.py points it elsewhere to compare.
PROTO_OUT := proto

.PHONY: setup demo test lint lint-proto proto bench soak clean wheelhouse images up down

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

# buf breaking compares the protos with main's last commit (what a change on top of main would
# break) and with the first commit of brinell.v1 (the package keeps what it first published; a
# deliberate break is a new package, brinell.v2). The rename to brinell.v1 was the one
# deliberate break, so comparisons start there.
BUF_MAIN ?= .git\#$(shell git rev-parse -q --verify refs/heads/main >/dev/null && echo branch=main || echo ref=HEAD)
BUF_V1_BASE ?= $(shell git log --reverse --format=%H -- 'proto/brinell/v1/*.proto' | head -n 1)

lint: setup lint-proto
	$(BIN)/hadolint images/*/Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PY) tools/typecheck.py

lint-proto: setup
	$(BIN)/buf lint
	$(BIN)/buf breaking --against '$(BUF_MAIN)'
	$(BIN)/buf breaking --against '.git#ref=$(BUF_V1_BASE)'

proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) \
	  --grpc_python_out=$(PROTO_OUT) \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=quiet:$(PROTO_OUT) \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=quiet:$(PROTO_OUT) \
	  proto/brinell/v1/*.proto

# Images build offline from a wheelhouse made here: deps/ (what EXTRAS of this project need,
# made again only when pyproject.toml or images/wheelhouse.txt change) and brinell/ (this
# checkout's wheel, made every time). The build context of images/*/Dockerfile.
EXTRAS ?= runtime
WHEELHOUSE ?= build/wheelhouse-$(subst $(comma),-,$(EXTRAS))
comma := ,
WHEEL_KEY = $(shell cat pyproject.toml images/wheelhouse.txt | sha256sum | cut -c1-16)-$(EXTRAS)

wheelhouse: setup
	@mkdir -p $(WHEELHOUSE)/deps $(WHEELHOUSE)/brinell
	@if [ "$$(cat $(WHEELHOUSE)/deps/.key 2>/dev/null)" != "$(WHEEL_KEY)" ]; then \
	  rm -f $(WHEELHOUSE)/deps/*.whl; \
	  $(PY) -m pip wheel -q --disable-pip-version-check -w $(WHEELHOUSE)/deps \
	    '.[$(EXTRAS)]' -r images/wheelhouse.txt 2>&1 | grep -v '^WARNING: Location' || true; \
	  rm -f $(WHEELHOUSE)/deps/brinell-*.whl; \
	  ls $(WHEELHOUSE)/deps/*.whl >/dev/null && echo '$(WHEEL_KEY)' >$(WHEELHOUSE)/deps/.key; \
	fi
	@rm -f $(WHEELHOUSE)/brinell/*.whl
	@$(PY) -m pip wheel -q --disable-pip-version-check --no-deps -w $(WHEELHOUSE)/brinell . \
	  2>&1 | grep -v '^WARNING: Location' || true
	@ls $(WHEELHOUSE)/brinell/brinell-*.whl >/dev/null

# Every image, built offline (tools/images); `make up` also starts images/compose.yaml.
images: setup
	tools/images build

up: setup
	tools/images up

down:
	tools/images down

bench: setup
	$(PY) bench/job_latency.py
	$(PY) bench/dispatch.py
	$(PY) bench/agents.py
	$(PY) bench/logs.py
	$(PY) bench/queue_depth.py
	$(PY) bench/uploads.py

# Fault soak (bench/soak.py): a real PostgreSQL, control plane(s) and agents; agents and a
# control plane are SIGKILLed while short jobs run; exits 1 if a job is lost, fails, or runs
# or succeeds twice. About a minute each on 2 cores; SOAK_ARGS='--jobs 1000' for a longer one.
SOAK_ARGS ?=
soak: setup
	$(PY) bench/soak.py --replicas 1 $(SOAK_ARGS)
	$(PY) bench/soak.py --replicas 2 $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
