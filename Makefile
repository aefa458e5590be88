# Everything a fresh machine needs is installed from here: a pinned uv in .tools/, the
# locked environment in .venv/ (uv.lock), and Debian's postgresql for the test fixture.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test venv protos lint typecheck postgres browser bench clean

demo: venv
	$(BIN)/fleet demo

test: venv postgres browser
	$(BIN)/python -m pytest

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

venv: $(BIN)/fleet
$(BIN)/fleet: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	@touch $@

# The Postgres tests start a throwaway server from the server binaries (initdb, pg_ctl).
postgres:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's postgresql for the test fixture"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else \
			echo "Postgres server binaries not found: install Debian's postgresql (apt-get install postgresql)"; exit 1; \
		fi; \
	fi

# The dashboard test drives Debian's Chromium through its chromedriver (headless).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's chromium and chromium-driver for the dashboard test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else \
			echo "chromium/chromedriver not found: install Debian's chromium and chromium-driver"; exit 1; \
		fi; \
	fi

protos: venv
	$(BIN)/python protos/generate.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

# Benchmarks print figures and append them to bench/RESULTS.md; they assert nothing.
bench: venv postgres
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/fleet_bench.py --size full --record

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache
