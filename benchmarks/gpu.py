"""GPU-only measurements: model FLOPs utilisation of T5.1.1-base at 512/114 in bfloat16
(FLOPs from `trainer.flops`, against the card's dense bf16 datasheet peak) and the time
from nothing to the first finished train step. On a machine without a GPU every function
here returns {"skipped": reason} instead."""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

import numpy as np

from benchmarks import measure
from benchmarks.train_step import RecastTrainer, synthetic_batch
from trainer import flops
from trainer.network import T5Config

# Dense bf16 datasheet peaks, FLOP/s per chip (H100/H200 SXM: 989 TFLOP/s).
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
T5_1_1_BASE = T5Config(vocab_size=32128, d_model=768, num_heads=12, d_kv=64, d_ff=2048,
                       num_encoder_layers=12, num_decoder_layers=12, dropout_rate=0.0,
                       dtype="bfloat16")
T5_LENGTHS = {"inputs": 512, "targets": 114}


def gpu_skip_reason() -> Optional[str]:
  """None when JAX runs on a GPU, else the line to print instead of GPU numbers."""
  import jax
  backend = jax.default_backend()
  if backend != "gpu":
    return f"no GPU: JAX backend is {backend!r} ({jax.devices()[0].device_kind})"
  return None


def peak_flops(device_kind: str) -> Optional[float]:
  """The dense bf16 peak of a device kind ("NVIDIA H100 80GB HBM3"), None if unknown."""
  for name, peak in BF16_PEAK_FLOPS.items():
    if name in device_kind:
      return peak
  return None


def mfu(*, config: T5Config = T5_1_1_BASE, task_feature_lengths: Mapping[str, int] = T5_LENGTHS,
        batch_size: int = 64, repetitions: int = 10, log=print) -> dict[str, Any]:
  """MFU and time to first step of recast's train step (Adafactor, no padding).

  `time_to_first_step_s` runs from nothing (no parameters, nothing compiled) to the first
  update's results on the host: initialisation, compilation, one step.
  MFU = train FLOPs per example x examples/s / (devices x peak).
  """
  reason = gpu_skip_reason()
  if reason:
    return {"skipped": reason}
  import jax
  batch = synthetic_batch(batch_size=batch_size, task_feature_lengths=task_feature_lengths,
                          vocab_size=32000)
  start = time.perf_counter()
  trainer = RecastTrainer(config)
  jax.block_until_ready(trainer.state)
  init_s = time.perf_counter() - start
  device_batch = trainer.device_batch(batch)
  trainer.step(device_batch)
  first_step_s = time.perf_counter() - start
  log(f"  first step after {first_step_s:.1f}s (init {init_s:.1f}s)")
  seconds = measure.interleaved_seconds({"recast": lambda: trainer.step(device_batch)},
                                        repetitions=repetitions, warmup=2)["recast"]
  step_s = float(np.median(seconds))
  flop_count = flops.count_flops(config, feature_lengths=task_feature_lengths)
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  achieved = flop_count.train * batch_size / step_s
  return {"device_kind": kind, "num_devices": jax.device_count(), "model": config.to_dict(),
          "batch_size": batch_size, "task_feature_lengths": dict(task_feature_lengths),
          "init_s": init_s, "time_to_first_step_s": first_step_s,
          "step_seconds": measure.summarize(seconds),
          "examples_per_s": batch_size / step_s,
          "train_gflop_per_example": flop_count.train / 1e9,
          "achieved_tflop_per_s": achieved / 1e12,
          "peak_tflop_per_s": peak / 1e12 if peak else None,
          "mfu": achieved / (peak * jax.device_count()) if peak else None}


def main(argv=None) -> int:
  """`python -m benchmarks.gpu`: the GPU sections alone (MFU over batch sizes, then recast
  against Hugging Face on the GPU), with no input pipeline, so no TensorFlow or seqio: it
  runs on an accelerator image that has only jax/flax/optax/torch/transformers (+gin)."""
  import argparse
  import json
  import os
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=main.__doc__)
  parser.add_argument("--batch_sizes", default="32,64,128",
                      help="T5.1.1-base 512/114 batch sizes for MFU (the first also gives "
                      "the cold time to first step)")
  parser.add_argument("--step_batch", type=int, default=32,
                      help="batch of the recast vs Hugging Face comparison; 0 skips it")
  parser.add_argument("--repetitions", type=int, default=10)
  parser.add_argument("--no_torch_compile", action="store_true")
  parser.add_argument("--out", default=None, help="JSON path for every number")
  args = parser.parse_args(argv)
  from benchmarks import run, train_step  # run first: its import sets JAX's GPU allocator
  reason = gpu_skip_reason()
  if reason:
    print(f"gpu: skipped ({reason})")
    return 0
  import jax
  results: dict[str, Any] = {"jax": jax.__version__, "devices": [d.device_kind for d in
                                                                  jax.devices()],
                             "xla_flags": os.environ.get("XLA_FLAGS", ""), "mfu": []}

  def save():
    if args.out:
      from trainer import atomic_files
      atomic_files.write_json(args.out, results)

  for batch_size in (int(b) for b in args.batch_sizes.split(",") if b):
    try:
      r = mfu(config=T5_1_1_BASE, task_feature_lengths=T5_LENGTHS, batch_size=batch_size,
              repetitions=args.repetitions)
    except Exception as e:  # noqa: BLE001  (out of memory at a large batch is a result)
      r = {"batch_size": batch_size,
           "skipped": f"batch {batch_size}: {type(e).__name__}: {str(e)[:200]}"}
    results["mfu"].append(r)
    save()
    run.print_gpu(r)
  if args.step_batch:
    results["train_step"] = train_step.compare_train_step(
        config=T5_1_1_BASE, batch_size=args.step_batch, task_feature_lengths=T5_LENGTHS,
        repetitions=args.repetitions, device="cuda",
        torch_compile=not args.no_torch_compile)
    save()
    run.print_train_step(results["train_step"])
  measured = [r["mfu"] or 0 for r in results["mfu"] if "skipped" not in r]
  print(json.dumps({"best_mfu": max(measured, default=None)}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
