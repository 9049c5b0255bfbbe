"""raftlib benchmarks. Run one with ``python -m benchmarks.<name>``."""
