# batchgate: `make run` starts the gateway with the embedded model; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
# llama-cpp-python compiles from source (no wheel for this platform); use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# A portable build: GGML_NATIVE picked instructions this machine's CPU traps on (invalid opcode in
# libggml-cpu), and pip's wheel cache would hand that build to every later install here.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install lock run test lint chaos bench bench-detail bench-memory bench-pg screenshots clean

# Exactly the locked versions (requirements.lock, with hashes), then batchgate itself on top.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

lock:  # re-resolve requirements.lock from pyproject.toml (latest versions its ranges allow, every hash)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra local --extra dev --generate-hashes --python-version 3.11 \
		--no-header -o requirements.lock
	sed -i '1i # Exact versions and hashes of everything `make install` puts in .venv (what CI tested).\n# Regenerate with `make lock` after changing dependencies in pyproject.toml.' requirements.lock

run: install
	$(BIN)/batchgate serve

lint: install  # formatting, lint rules and types: CI runs it as part of make test
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: install lint
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-chromium.sh --background  # the browser tests run last and wait for it
	$(BIN)/python -m pytest -q

chaos: install  # the full chaos run: 5,000 requests, 10 SIGKILLs (`make test` runs the short form)
	BATCHGATE_CHAOS_SCALE=full $(BIN)/python -m pytest -q -s tests/chaos

bench: install  # the headline figures against their targets, one table, written to bench/RESULTS.md
	$(BIN)/python bench/suite.py

bench-detail: install  # the older, more detailed benchmarks, one after another
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/large_file.py
	$(BIN)/python bench/http_clients.py
	$(BIN)/python bench/fair_share.py
	$(BIN)/python bench/rate_limits.py

bench-memory: install  # the server's peak RSS with 25 MB answers and 200 MB headers, written to bench/MEMORY.md
	$(BIN)/python bench/memory.py

bench-pg: install  # needs root and Debian's postgresql, like `make test`
	bash scripts/ensure-postgres.sh
	$(BIN)/python bench/pg_indexes.py
	$(BIN)/python bench/scale_out.py

screenshots: install  # the web console's pictures in docs/, shown in README
	bash scripts/ensure-chromium.sh
	BATCHGATE_SCREENSHOTS=docs $(BIN)/python -m pytest -q tests/browser -k screenshots

clean:
	rm -rf $(VENV) .batchgate .pytest_cache .ruff_cache
