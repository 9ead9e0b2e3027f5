"""recast's benchmarks (issue 8): train-step throughput against Hugging Face, useful tokens
with packing, input pipeline, packing efficiency, GPU MFU. Entry point: `python -m
benchmarks.run` (`make bench`); results are recorded by hand in BENCHMARKS.md."""
