"""The sans-I/O Raft core."""
