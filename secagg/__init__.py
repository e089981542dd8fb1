"""secagg: the standalone secure aggregation service (server, CLI, benchmarks)."""

__version__ = "0.1.0"
