"""The library and the single-run commands: network, losses, optimizers, decoding,
partitioning, checkpoints, the input pipeline, train / eval / infer, conversion, distillation."""
