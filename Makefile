# Two commands do all the set-up on a fresh machine (Python 3.11+ only):
#   make run    the whole product: database, migrations, web server, job cluster, listener
#   make test   the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: run demo test lint format bench bench-smoke clean browser

# The browser tests drive Debian's Chromium (Playwright cannot download its own here).
# Installed when missing and the machine allows it (root with apt); otherwise those tests
# are skipped and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "could not install chromium: the browser tests will be skipped"; \
	  else echo "chromium is not installed (needs root and apt): the browser tests will be skipped"; fi; }

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m project.launcher

demo: $(STAMP)
	$(BIN)/python -m project.launcher --demo

# Two pytest-xdist workers, each with its own test database and job queue, a test file at
# a time: most of the suite waits on real clusters and servers rather than computing, so
# two halve it even on two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP) browser
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# Every benchmark (bench/*.py) with tiny sizes, a few at a time: each must run and print one
# JSON document, so that none stops working unnoticed. Needs DATABASE_URL (and REDIS_URL for
# the Redis runs); scratch databases are dropped afterwards. Sizes: SMOKE_ARGS in bench/_support.py.
bench-smoke: $(STAMP)
	$(BIN)/python -m bench._support smoke

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var/static var/prometheus
