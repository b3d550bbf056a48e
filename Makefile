# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SOAR_TESTDATA ?= $(abspath ../shared/data)

.PHONY: run test soak lint bench clean venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m soar run

lint: $(STAMP)
	$(VENV)/bin/ruff check soar tests
	$(VENV)/bin/mypy --strict soar

# The browser tests need Debian's chromium; install it when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "WARNING: could not install chromium; browser tests will skip"; }

# Three workers, a file at a time each (module fixtures set up once), the longest files first
# (tests/conftest.py LONG_FIRST): most tests wait on child processes and sockets, not the CPU.
test: $(STAMP) lint browser
	$(PY) -m pytest -q -p no:cacheprovider -m "not soak" -n 3 --dist loadfile --durations=15

# The long duplicates of tests, then the property tests exploring new examples.
soak: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m soak
	SOAR_HYPOTHESIS=explore $(PY) -m pytest -q -p no:cacheprovider -m "not slow and not browser and not soak"

bench: $(STAMP)
	$(PY) -m soar bench

clean:
	rm -rf $(VENV) var build *.egg-info
