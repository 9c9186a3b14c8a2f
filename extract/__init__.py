"""Extraction: models, attention capture, token segments, statistics, benchmarks and the run loop."""
