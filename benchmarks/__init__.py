"""Speed and memory benchmarks (`python benchmarks/run.py`; see BENCHMARKS.md)."""
