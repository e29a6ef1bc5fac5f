"""Developer and operator tools: the `nearline` command line, benchmarks, quality
evaluation, the demo and the local launcher. They import the worker's modules; the
worker never imports them (tests/unit/test_imports.py)."""
