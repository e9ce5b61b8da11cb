"""Sweeps: per-run summaries and the report that compares them."""
