"""Reproducible performance runs; each prints JSON (``make bench``)."""
