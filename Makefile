# The two commands of the README: `make demo` and `make test`.  Both set up
# what they need first (Debian packages, a virtualenv with the package).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench clean

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
