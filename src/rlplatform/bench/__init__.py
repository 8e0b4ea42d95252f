"""Benchmarks (``rlplatform bench ...``): commands that print numbers, never tests."""
