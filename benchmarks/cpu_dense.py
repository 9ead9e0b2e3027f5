"""XLA:CPU weight gradients x^T g in bf16: the transpose folded into the dot (XLA converts
both operands to float32 for its own kernel) against x^T written out first
(`trainer.network._transposed_copy`, the bf16 x bf16 -> float32 dot on the bf16 units),
with PyTorch's x.T @ g on the same cores; then the whole bf16 train step both ways.

  python -m benchmarks.cpu_dense                     # the dots and the train step
  python -m benchmarks.cpu_dense --no_train_step --repetitions=9

Each table's contenders run interleaved in one process (A, B, A, B, ...), medians.
JAX's dots return float32 (what the train step asks for); PyTorch's bf16 x.T @ g returns
bf16. XLA:CPU only: on another backend `dense` uses plain autodiff and both sides would be
one program, so the benchmark refuses to run there.
The shapes are the CPU model's (benchmarks.train_step: batch 8 x 512/114, d_model 256,
d_ff 1024, vocabulary 32,128): the feed-forward weights over 4,096 encoder tokens and the
logits weight over 912 decoder tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from benchmarks.tables import table

SHAPES = ((4096, 256, 1024), (4096, 1024, 256), (4096, 256, 256), (912, 256, 32128))


def weight_gradient_dots(*, repetitions: int = 5, shapes=SHAPES) -> list[dict[str, Any]]:
  """[{tokens, n, m, dtype, gflop, folded_s, written_out_s, torch_s, dot_via,
  max_rel_diff}] for x [tokens, n] and g [tokens, m]. dot_via names each compiled dot's
  kernel and whether x or g was converted to float32 first; max_rel_diff compares the
  two results (largest difference over the largest value)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from benchmarks import measure
  from benchmarks.cpu_bf16 import dot_kernel
  from recast.trainer import network
  rng = np.random.default_rng(0)
  rows = []
  for tokens, n, m in shapes:
    x32 = rng.standard_normal((tokens, n), np.float32)
    g32 = rng.standard_normal((tokens, m), np.float32)
    for dtype, torch_dtype in ((jnp.bfloat16, torch.bfloat16), (jnp.float32, torch.float32)):
      x, g = jnp.asarray(x32, dtype), jnp.asarray(g32, dtype)
      fns, via, values = {}, {}, {}
      for label, write_out in (("folded", False), ("written_out", True)):
        fn = jax.jit(lambda x, g, w=write_out: network._weight_gradient(
            x, g, write_out_transpose=w))
        hlo = fn.lower(x, g).compile().as_text()
        converted = dtype == jnp.bfloat16 and any(
            f"f32[{a},{b}]" in hlo for a, b in ((tokens, n), (n, tokens), (tokens, m),
                                                (m, tokens)))
        via[label] = dot_kernel(hlo) + (", operands converted to f32" if converted else "")
        values[label] = np.asarray(fn(x, g))
        fns[label] = lambda fn=fn: fn(x, g).block_until_ready()
      tx, tg = torch.from_numpy(x32).to(torch_dtype), torch.from_numpy(g32).to(torch_dtype)
      fns["torch"] = lambda: tx.T @ tg
      seconds = measure.interleaved_seconds(fns, repetitions=repetitions, warmup=1)
      med = {k: measure.summarize(v)["median_s"] for k, v in seconds.items()}
      diff = np.max(np.abs(values["folded"] - values["written_out"])) / np.max(
          np.abs(values["folded"]))
      rows.append({"tokens": tokens, "n": n, "m": m, "dtype": jnp.dtype(dtype).name,
                   "folded_s": med["folded"], "written_out_s": med["written_out"],
                   "torch_s": med["torch"], "dot_via": via, "max_rel_diff": float(diff),
                   "gflop": 2 * tokens * n * m / 1e9})
  return rows


def train_step_both_ways(*, repetitions: int = 5, dtype: str = "bfloat16",
                         config: Any = None, batch_size: int = 8,
                         lengths: tuple[int, int] = (512, 114)) -> dict[str, Any]:
  """The train step (by default benchmarks.train_step's model and batch) compiled with the
  weight gradients' transposes folded, then written out (for `dtype` whatever the default
  is: float32 keeps the folded one, and this says why); interleaved, seconds per step.

  `config`: a T5Config (its vocabulary size included) instead of the CPU model; `dtype`
  ('auto' too) replaces its activation dtype."""
  import jax

  from benchmarks import measure
  from benchmarks.train_step import CPU_MODEL, LEARNING_RATE, synthetic_batch
  from recast.trainer import network, optimizers, train_state
  from recast.trainer.partitioning import Partitioner
  if config is None:
    config = network.T5Config(**CPU_MODEL).with_vocab_size(32128)
  config = config.replace(dtype=dtype)
  resolved = config.activation_dtype.name  # 'auto' resolves to this host's choice
  partitioner = Partitioner()
  optimizer = optimizers.create_optimizer(optimizer_def=optimizers.adafactor,
                                          learning_rate_schedule=LEARNING_RATE)
  batch = partitioner.shard_batch(synthetic_batch(
      batch_size=batch_size, task_feature_lengths={"inputs": lengths[0], "targets": lengths[1]},
      vocab_size=config.vocab_size))
  rng = jax.device_put(jax.random.PRNGKey(1), partitioner.replicated)
  sides, losses, hlo = {}, {}, {}
  saved = network.WRITE_OUT_TRANSPOSE_DTYPES
  try:
    for label, write_out in (("folded", ()), ("written_out", (resolved,))):
      network.WRITE_OUT_TRANSPOSE_DTYPES = write_out
      state = train_state.create_train_state(config, optimizer, jax.random.PRNGKey(0),
                                             partitioner)
      # Compiled here, under the switch: no later call can retrace it with another value.
      step = train_state.make_train_step(network.Transformer(config), optimizer,
                                         partitioner).lower(state, batch, rng).compile()
      hlo[label] = step.as_text()
      state, metrics = step(state, batch, rng)
      losses[label] = float(metrics["loss"])
      sides[label] = {"step": step, "state": state}
  finally:
    network.WRITE_OUT_TRANSPOSE_DTYPES = saved

  def run(side):
    side["state"], _ = side["step"](side["state"], batch, rng)
    jax.block_until_ready(side["state"])

  seconds = measure.interleaved_seconds(
      {label: (lambda side=side: run(side)) for label, side in sides.items()},
      repetitions=repetitions, warmup=1)
  med = {k: measure.summarize(v)["median_s"] for k, v in seconds.items()}
  return {"dtype": resolved, "seconds": med, "first_loss": losses,
          "speedup": med["folded"] / med["written_out"], "repetitions": repetitions,
          "programs_differ": hlo["folded"] != hlo["written_out"],
          "all_seconds": {k: [float(t) for t in v] for k, v in seconds.items()},
          "load_average": os.getloadavg()[0]}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_dense", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repetitions", type=int, default=5)
  parser.add_argument("--train_step", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--dtypes", default="bfloat16,float32",
                      help="train-step activation dtypes (comma-separated: bfloat16, float32, "
                           "auto)")
  args = parser.parse_args(argv)
  if args.repetitions < 1:
    print("--repetitions must be at least 1", file=sys.stderr)
    return 2
  dtypes = [d for d in args.dtypes.split(",") if d]
  unknown = sorted(set(dtypes) - {"bfloat16", "float32", "auto"})
  if unknown:
    print(f"unknown --dtypes {', '.join(unknown)}: choose from bfloat16, float32, auto",
          file=sys.stderr)
    return 2
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  if jax.default_backend() != "cpu":
    print(f"benchmarks.cpu_dense measures XLA:CPU, but JAX's backend is "
          f"{jax.default_backend()!r}: run it with JAX_PLATFORMS=cpu", file=sys.stderr)
    return 2
  from benchmarks.cpu_bf16 import cpu_description
  cpu = cpu_description()
  print(f"{cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['isa'])}); "
        f"load {os.getloadavg()[0]:.1f}")
  rows = weight_gradient_dots(repetitions=args.repetitions)
  print("\nweight gradient x^T g (x [tokens, n], g [tokens, m]), ms, median of "
        f"{args.repetitions}:")
  print(table(["tokens x n x m", "dtype", "folded", "written out", "torch", "folded / written",
               "written GFLOP/s", "max rel. diff", "kernel (folded; written out)"],
              [[f"{r['tokens']}x{r['n']}x{r['m']}", r["dtype"], r["folded_s"] * 1e3,
                r["written_out_s"] * 1e3, r["torch_s"] * 1e3,
                r["folded_s"] / r["written_out_s"], r["gflop"] / r["written_out_s"],
                f"{r['max_rel_diff']:.1e}",
                f"{r['dot_via']['folded']}; {r['dot_via']['written_out']}"] for r in rows]))
  if args.train_step:
    for dtype in dtypes:
      result = train_step_both_ways(repetitions=args.repetitions, dtype=dtype)
      s = result["seconds"]
      shown = dtype if dtype == result["dtype"] else f"{dtype}: {result['dtype']}"
      print(f"\ntrain step ({shown}, batch 8 x 512/114), s, median of {args.repetitions}, "
            f"interleaved: folded {s['folded']:.3f}, written out {s['written_out']:.3f}: "
            f"{result['speedup']:.2f}x (first losses {result['first_loss']['folded']:.4f} / "
            f"{result['first_loss']['written_out']:.4f}; two programs: "
            f"{result['programs_differ']}); load {result['load_average']:.1f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
