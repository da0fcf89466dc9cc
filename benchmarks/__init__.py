"""The benchmarks (see benchmarks/README.md). A package so that ``python3 -m benchmarks.report`` runs from the
repository root; the scripts themselves still run as ``python3 benchmarks/<name>.py``."""
