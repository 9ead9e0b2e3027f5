"""recast's benchmarks: train-step throughput against Hugging Face, useful tokens with packing,
input pipeline, packing efficiency, GPU MFU. Entry point: `python -m benchmarks.run` (`make
bench`); results are recorded by hand in BENCHMARKS.md."""

import os

# Before jax / tensorflow / torch are imported by any benchmark module: quiet TF, and let
# JAX share a GPU with PyTorch (no 75% preallocation).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
