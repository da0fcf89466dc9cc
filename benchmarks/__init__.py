"""The benchmarks (see benchmarks/README.md): a package whose scripts run from the repository root as
``python3 -m benchmarks.<name>``; ``benchmarks/common.py`` is their harness."""
