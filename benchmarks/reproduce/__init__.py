"""Paper reproductions: suites that carry a published figure and a verdict computed from their run.

:mod:`benchmarks.reproduce.paper` parses a suite's ``[paper]`` table, :mod:`benchmarks.reproduce.verdict`
computes the claims' figures (mean and 95% t-interval over seeds) and the verdict, and
:mod:`benchmarks.reproduce.run` runs a reproduction (``flsec reproduce NAME|all``).
"""
