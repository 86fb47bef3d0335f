"""
The lab: network namespaces for tests, the demo and the benchmark.

Not part of the installed package: it runs from a checkout (C{make demo},
C{make bench}, C{make test}), and it alone needs pyroute2 (see the C{lab}
extra in setup.cfg).
"""
