"""Benchmarks of Picture Book on the `tiny` profile: the pipeline in-process and the real `bentoml serve`, side by side.

    python -m bench [--quick] [--out DIR]     # writes DIR/bench.json and DIR/bench.md (DIR defaults to bench-out/)

See docs/PERFORMANCE.md for the method and what the numbers are compared with.
"""
