# The two commands of the README: `make demo` and `make test`.  Both set up
# what they need first (Debian packages, a virtualenv with the package).
# `make lint` runs the static checks CI runs before the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup lint test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py pyproject.toml faketcp_twisted/io/_fastpath.c scripts/bootstrap-system
	./scripts/bootstrap-system
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[test]'
	# The checkout is what the tests import: build the C fast path here too
	# (optional: without a compiler the pure-Python path is used).
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

# ruff on everything Python in the checkout, mypy --strict on what
# pyproject.toml names (the package, the lab, the plugins, the benchmarks).
lint: setup
	$(PY) -m ruff check faketcp_twisted lab tests twisted benchmarks
	$(PY) -m mypy

# Trial runs from the checkout, so the code under test is this tree's.
# The second run repeats the transport's integration tests on Twisted's
# asyncio reactor, which the transport must work on too.
test: setup
	$(PY) -m twisted.trial tests
	$(PY) -m twisted.trial --reactor=asyncio tests.test_integration.EchoTests tests.test_integration.ClosingTests

demo: setup
	$(PY) -m lab.demo

# Not part of `make test`: figures are measured, never asserted.
bench: setup
	$(PY) -m lab.bench

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp dropin.cache
