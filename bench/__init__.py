"""Benchmarks: real processes, each figure beside a baseline measured in the same run."""
