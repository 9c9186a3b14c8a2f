"""Benchmarks: a registry of loaders, prompt texts and answer parsers."""

from attnwh.extract.benchmarks.registry import BENCHMARKS, Benchmark, Sample, get_benchmark

__all__ = ["BENCHMARKS", "Benchmark", "Sample", "get_benchmark"]
