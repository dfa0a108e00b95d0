# Everything runs from a virtualenv under the repo, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The benchmark's extras (the chart) go on top of the dev install, never into `make test`.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_SMOKE_OUTPUT ?= /tmp/tenantry-bench-smoke
GEN_DIR := services/tenantry/v1
LOCK := requirements.lock
UV_VERSION := 0.13.9
# Part of the lock's input digest: changing them makes the lock stale.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--no-emit-package tenantry --no-emit-package tenantry-devtools --no-emit-package tenantry-client
LOCK_CHECK = $(PYTHON) devtools/lockfile.py check $(LOCK) "$(LOCK_FLAGS)"
# The client distribution's copy of the generated code (imports rewritten to tenantry_client.v1).
CLIENT_GEN_DIR := client/tenantry_client/v1
PROTOS := $(wildcard proto/tenantry/v1/*.proto)

# `make soak`: the chaos soak's options (see `python -m soak --help`).
SOAK_DURATION ?= 600
SOAK_SEED ?= 17
SOAK_CLIENTS ?= 8
SOAK_RATE ?= 25
SOAK_WATCHERS ?= 3
SOAK_FAULTS ?= worker_kill,api_kill,postgres_restart,temporal_restart,worker_freeze
SOAK_FAULTS_PER_MINUTE ?= 2
SOAK_OUTPUT ?= soak/results

.PHONY: help install lock lock-upgrade lock-check proto proto-check buf-breaking lint test dev bench bench-smoke soak clean

help:
	@echo "make dev    run the whole stack locally (embedded PostgreSQL + Temporal dev server)"
	@echo "make test   run the test suite"
	@echo "make lint   buf lint, ruff, mypy, generated-code check"
	@echo "make proto  regenerate Python code from proto/"
	@echo "make lock   re-resolve requirements.in into the hash-pinned requirements.lock (make install uses it)"
	@echo "make bench  benchmark against the floors: bench/results/latest.{json,md,png} (minutes)"
	@echo "make bench-smoke  a tiny benchmark run that checks the benchmark works"
	@echo "make soak   chaos soak: load + seeded faults + invariants (SOAK_DURATION=600 SOAK_SEED=17 SOAK_RATE=25"
	@echo "            SOAK_CLIENTS=8 SOAK_FAULTS=a,b SOAK_FAULTS_PER_MINUTE=2): soak/results/latest.{json,png}"

# Every dependency (product, dev extra, devtools, build backend, pip) comes from
# the hash-pinned lock, the same for CI and every clone; the three local projects
# go on top without dependencies. A lock older than its inputs stops here.
$(STAMP): $(LOCK) requirements.in pyproject.toml devtools/pyproject.toml client/pyproject.toml
	$(LOCK_CHECK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e ./devtools -e ./client
	touch $(STAMP)

install: $(STAMP)

# Re-resolves requirements.in into the lock for CPython 3.11 on Linux x86_64 with
# a pinned uv, keeping every pin that still satisfies the ranges (`make
# lock-upgrade` moves everything to the newest allowed). Needs PyPI.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile --quiet requirements.in $(LOCK_FLAGS) $(LOCK_EXTRA) --custom-compile-command 'make lock' -o $(LOCK)
	$(PYTHON) devtools/lockfile.py stamp $(LOCK) "$(LOCK_FLAGS)"

lock-upgrade:
	$(MAKE) lock LOCK_EXTRA=--upgrade

lock-check:
	$(LOCK_CHECK)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Regenerates messages, .pyi stubs and typed gRPC stubs into the shared package,
# and the client distribution's copy of them: the same files with only their
# imports of tenantry.v1 modules pointed at tenantry_client.v1 (the descriptors
# are byte for byte the same, so both can load in one process).
proto: $(STAMP)
	rm -f $(GEN_DIR)/*_pb2*.py $(GEN_DIR)/*_pb2*.pyi $(CLIENT_GEN_DIR)/*_pb2*.py $(CLIENT_GEN_DIR)/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I proto \
		--python_out=services --pyi_out=services \
		--grpc_python_out=services --mypy_grpc_out=services \
		$(PROTOS)
	for f in $(GEN_DIR)/*_pb2*.py $(GEN_DIR)/*_pb2*.pyi; do \
		sed -E 's/\btenantry\.v1( import |\.[a-z_]+_pb2\b)/tenantry_client.v1\1/g' "$$f" > $(CLIENT_GEN_DIR)/$$(basename "$$f") || exit 1; \
	done

# Fails when the committed generated code is not what `make proto` produces.
proto-check: proto
	@git diff --exit-code --stat -- $(GEN_DIR) $(CLIENT_GEN_DIR) || \
		{ echo "generated protobuf code is stale: run 'make proto' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- $(GEN_DIR) $(CLIENT_GEN_DIR))" || \
		{ echo "untracked generated files: run 'make proto' and commit"; \
		  git status --porcelain -- $(GEN_DIR) $(CLIENT_GEN_DIR); exit 1; }

# The v1 contract only grows: checked against the first round's contract and
# against the previous commit. buf clones the repository 50 commits deep unless
# told otherwise; round one is further back than that now.
ROUND_ONE_CONTRACT := b8ae9d4
buf-breaking: $(STAMP)
	$(BIN)/buf breaking --against '.git#ref=$(ROUND_ONE_CONTRACT),depth=100000'
	@if git cat-file -e HEAD~1:proto/tenantry/v1 2>/dev/null; then \
		$(BIN)/buf breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no earlier contract to compare with"; fi

lint: $(STAMP) lock-check proto-check buf-breaking
	$(BIN)/buf lint
	$(BIN)/hadolint services/tenant_api/Dockerfile services/provisioner_worker/Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest

dev: $(STAMP)
	$(BIN)/tenantry-dev

# Starts its own stack on embedded defaults in a temporary directory.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.move

bench-smoke: $(BENCH_STAMP)
	$(BIN)/python -m bench --smoke --output $(BENCH_SMOKE_OUTPUT)
	$(BIN)/python -m bench.move --smoke --output $(BENCH_SMOKE_OUTPUT)

# Holds load on the embedded stack (two APIs, two workers, PostgreSQL, Temporal,
# all separate processes) while seeded faults land, then checks every invariant
# against the ledger of acknowledged answers; fails on any violation.
soak: $(BENCH_STAMP)
	$(BIN)/python -m soak --duration $(SOAK_DURATION) --seed $(SOAK_SEED) --clients $(SOAK_CLIENTS) \
		--rate $(SOAK_RATE) --watchers $(SOAK_WATCHERS) --faults $(SOAK_FAULTS) \
		--faults-per-minute $(SOAK_FAULTS_PER_MINUTE) --output $(SOAK_OUTPUT)

clean:
	rm -rf $(VENV) .tenantry .pytest_cache .mypy_cache .ruff_cache
