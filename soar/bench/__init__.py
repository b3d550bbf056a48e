"""Benchmarks: each measurement printed beside a baseline measured in the same run."""
