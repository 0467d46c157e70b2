# The two set-up commands (see README): `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck system-packages clean bench

$(STAMP): pyproject.toml
	@bash scripts/install-system-packages.sh
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@$(BIN)/pip install -q -e '.[fuse]' || { echo "error: pyfuse3 could not be built (it needs fuse3, libfuse3-dev, pkg-config: scripts/install-system-packages.sh); FUSE tests would fail" >&2; exit 1; }
	touch $(STAMP)

system-packages:
	@bash scripts/install-system-packages.sh

lint: $(STAMP)
	$(BIN)/ruff check shared services tusk tests bench
	$(BIN)/ruff format --check shared services tusk tests bench
	$(BIN)/mypy

# Two pytest-xdist workers; module-scoped fixtures keep their module on one worker
# (tests/README.md: why two, why loadgroup, how tests share ports and paths).
PYTEST_WORKERS ?= 2

test: $(STAMP) system-packages lint
	$(BIN)/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup

demo: $(STAMP) system-packages
	@bash scripts/demo.sh

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info
