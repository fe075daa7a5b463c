# Build, test and benchmark. `make help` lists the targets.

CARGO ?= cargo
PYTHON ?= python3
VENV := test_runner/.venv
PYTEST := $(VENV)/bin/pytest
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: help deps build build-release run test lint rust-test pytest bench soak venv clean fuzz fuzz-smoke

help:
	@echo "make run      build, then start a local cluster (see README)"
	@echo "make test     lint, Rust tests and the end-to-end pytest suite"
	@echo "make fuzz     run every fuzz target for FUZZ_SECONDS (default 300) each"
	@echo "make bench    benchmarks against vanilla PostgreSQL; figures in docs/"
	@echo "make soak     the chaos soak for SOAK_SECONDS (1800); SOAK_SEED replays a run"
	@echo "make build    build every binary (debug)"
	@echo "make deps     install system packages (Debian)"
	@echo "make clean    remove build output, test output and the venv"

deps:
	scripts/install-deps.sh

build:
	$(CARGO) build --bins

build-release:
	$(CARGO) build --release --bins

run: deps build
	scripts/run-local.sh

$(VENV)/.installed: test_runner/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r test_runner/requirements.txt
	touch $@

venv: $(VENV)/.installed

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

rust-test:
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

pytest: venv build
	cd test_runner && .venv/bin/pytest $(PYTEST_ARGS)

# Fuzz targets (fuzz/, cargo-fuzz): `fuzz-smoke` is the short run of
# `make test`, `fuzz` a long one; FUZZ_SECONDS sets the time per target.
fuzz-smoke:
	scripts/fuzz-smoke.sh

fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} scripts/fuzz-smoke.sh

test: deps lint rust-test fuzz-smoke pytest

bench: venv build-release
	cd test_runner && NEON_BIN=$(CURDIR)/target/release .venv/bin/pytest performance -p no:cacheprovider $(PYTEST_ARGS)

# The chaos soak (test_chaos_soak.py) for half an hour; `make test` runs it
# for 90 s. SOAK_SEED=N replays the fault schedule of a run.
SOAK_SECONDS ?= 1800
soak: venv build
	cd test_runner && SOAK_SECONDS=$(SOAK_SECONDS) .venv/bin/pytest regress/test_chaos_soak.py -p no:cacheprovider $(PYTEST_ARGS)

clean:
	$(CARGO) clean
	rm -rf test_output $(VENV)
