"""Runnable examples on top of the SDK and the service (run from a checkout, not installed)."""
