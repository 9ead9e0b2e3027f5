"""XLA:CPU attention, forward + backward: recast's CPU path (`network._cpu_attention`, a
hand-written VJP whose dots all ask for float32 results, the position-bias gradient a dot
with ones) against the generic path other backends take (einsums and autodiff), run here on
the CPU. Both in one process, timed interleaved.

  python -m benchmarks.cpu_attention                    # 4 encoder layers, 8 x 512, 4 heads
  python -m benchmarks.cpu_attention --dtypes=bfloat16 --repetitions=9

The work is an encoder's attention blocks: `--layers` self-attention layers (projections
included) sharing one relative-position bias, over a padded batch, with the loss gradient
for every parameter, the position-bias table's included.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Sequence

from benchmarks import measure
from benchmarks.cpu_bf16 import cpu_description
from benchmarks.tables import table


@contextlib.contextmanager
def generic_path():
  """Traces network's modules as on a non-CPU backend: the einsum attention and plain
  autodiff for `dense` (XLA:CPU compiles them as they are)."""
  from recast.trainer import network
  real = network.jax.default_backend
  network.jax.default_backend = lambda: "gpu"
  try:
    yield
  finally:
    network.jax.default_backend = real


def attention_stack(config, layers: int):
  """A flax module: `layers` self-attention blocks over x with one shared position bias."""
  import flax.linen as nn
  import jax.numpy as jnp
  from recast.trainer import network

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x, real):
      positions = jnp.arange(x.shape[1])
      bias = network.RelativePositionBiases(
          config.relative_attention_num_buckets, config.relative_attention_max_distance,
          config.num_heads, bidirectional=True, name="relpos_bias")(positions, positions)
      mask = network.AttentionMask(real, real)
      for i in range(layers):
        x = x + network.Attention(config, name=f"layers_{i}")(x, x, mask, bias)
      return x

  return Stack()


def run(*, dtypes: Sequence[str], batch: int, length: int, d_model: int, heads: int,
        layers: int, repetitions: int) -> list[list]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from recast.trainer import network
  rows = []
  for dtype in dtypes:
    config = network.T5Config(vocab_size=8, d_model=d_model, num_heads=heads,
                              d_kv=d_model // heads, dropout_rate=0.0, dtype=dtype,
                              attention_implementation="xla")
    module = attention_stack(config, layers)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, length, d_model)), config.activation_dtype)
    # Rows of different lengths (padding at the end), as seqio lays them out.
    real = jnp.asarray(np.arange(length)[None] < rng.integers(length // 4, length + 1,
                                                              (batch, 1)))
    params = module.init(jax.random.PRNGKey(0), x, real)["params"]

    def loss(p):
      return jnp.sum(module.apply({"params": p}, x, real).astype(jnp.float32) ** 2)

    steps = {}
    for name, context in (("recast CPU path", contextlib.nullcontext), ("generic path",
                                                                          generic_path)):
      with context():
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
      steps[name] = (lambda c=compiled: jax.block_until_ready(c(params)))
    results = {name: fn() for name, fn in steps.items()}
    (ours, ours_grads), (theirs, their_grads) = results.values()
    difference = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(
        jax.tree_util.tree_leaves(ours_grads), jax.tree_util.tree_leaves(their_grads)))
    seconds = measure.interleaved_seconds(steps, repetitions=repetitions)
    medians = {n: measure.summarize(s)["median_s"] for n, s in seconds.items()}
    for name, median in medians.items():
      rows.append([dtype, name, median * 1e3,
                   measure.ratio(medians["generic path"], median),
                   f"{abs(float(ours) - float(theirs)) / abs(float(theirs)):.1e}",
                   f"{difference:.1e}"])
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--repetitions", type=int, default=5)
  args = parser.parse_args(argv)
  rows = run(dtypes=args.dtypes.split(","), batch=args.batch, length=args.length,
             d_model=args.d_model, heads=args.heads, layers=args.layers,
             repetitions=args.repetitions)
  cpu = cpu_description()
  print(f"attention forward + backward, {cpu['model']} ({cpu['cores']} cores; "
        f"{', '.join(cpu['isa'])}); {args.layers} layers, batch {args.batch} x {args.length}, "
        f"d_model {args.d_model}, {args.heads} heads")
  print(table(["dtype", "path", "ms (median)", "speed-up over generic",
               "loss rel. diff", "max grad rel. diff"], rows))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
