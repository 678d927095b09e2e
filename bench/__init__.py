"""Benchmarks: each prints its numbers as ratios against baselines measured in the same run."""
