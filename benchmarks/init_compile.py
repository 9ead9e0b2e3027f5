"""Parameter initialisation: XLA compile time of flax's init (one random draw per
parameter) against `network.init_params(grouped=True)` (one vmapped draw per group of
same-shaped parameters), T5.1.1-base by default, on whatever backend JAX has.

  python -m benchmarks.init_compile                 # T5.1.1-base, 2 rounds, A/B interleaved
  python -m benchmarks.init_compile --model=tiny    # seconds

Each round lowers and compiles both programs afresh (no persistent compilation cache:
JAX_COMPILATION_CACHE_DIR is ignored here, the point is the cold compile), runs them once
and checks that they give the same values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Optional, Sequence

from benchmarks.tables import table

TINY = dict(vocab_size=256, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=2,
            num_decoder_layers=2)


def model_config(name: str):
  from benchmarks.gpu import T5_1_1_BASE
  from recast.trainer.network import T5Config
  if name == "base":
    return T5_1_1_BASE.replace(dtype="float32")
  if name == "tiny":
    return T5Config(**TINY)
  raise ValueError(f"--model={name!r}: use base or tiny")


def _compile_and_run(config, grouped: bool) -> dict[str, Any]:
  import flax.linen as nn
  import jax
  from recast.trainer import network
  start = time.perf_counter()
  fn = jax.jit(lambda r: nn.unbox(network.init_params(config, r, grouped=grouped)))
  lowered = fn.lower(jax.random.PRNGKey(0))
  lowered_s = time.perf_counter() - start
  cpu_start = time.process_time()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start - lowered_s
  compile_cpu_s = time.process_time() - cpu_start  # all threads: less hurt by others' load
  params = compiled(jax.random.PRNGKey(0))
  jax.block_until_ready(params)
  run_s = time.perf_counter() - start - lowered_s - compile_s
  hlo = compiled.as_text()
  return {"trace_and_lower_s": lowered_s, "compile_s": compile_s,
          "compile_cpu_s": compile_cpu_s, "run_s": run_s,
          "optimized_hlo_lines": len(hlo.splitlines()),
          "fusions": sum(1 for line in hlo.splitlines() if " fusion(" in line),
          "params": params}


def init_compile(*, model: str = "base", rounds: int = 2, log=print) -> dict[str, Any]:
  """{"flax_per_parameter": ..., "grouped": ..., "same_values", "max_abs_diff", "ratio"}:
  seconds per stage (medians over `rounds`, alternating the two)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from recast.trainer import network
  jax.config.update("jax_enable_compilation_cache", False)
  config = model_config(model)
  times: dict[str, list] = {"flax_per_parameter": [], "grouped": []}
  last: dict[str, Any] = {}
  for r in range(rounds):
    for name, grouped in (("flax_per_parameter", False), ("grouped", True)):
      jax.clear_caches()
      result = _compile_and_run(config, grouped)
      last[name] = result.pop("params")
      times[name].append(result)
      log(f"  round {r + 1} {name}: compile {result['compile_s']:.1f}s "
          f"({result['compile_cpu_s']:.1f}s CPU), run "
          f"{result['run_s']:.1f}s (load {os.getloadavg()[0]:.1f})")
  a = jax.tree_util.tree_leaves(last["flax_per_parameter"])
  b = jax.tree_util.tree_leaves(last["grouped"])
  max_diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b))
  summary = {}
  for name, rows in times.items():
    summary[name] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
  groups = len({c for c in _groups(config)})
  return {"model": model, "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind, "num_params": len(a),
          "num_groups": groups, "rounds": rounds, "same_values": bool(max_diff == 0.0),
          "max_abs_diff": max_diff, **summary,
          "compile_ratio": summary["flax_per_parameter"]["compile_s"]
          / summary["grouped"]["compile_s"],
          "compile_cpu_ratio": summary["flax_per_parameter"]["compile_cpu_s"]
          / summary["grouped"]["compile_cpu_s"],
          "load_average": os.getloadavg(), "param_count": int(sum(np.size(x) for x in a))}


def _groups(config):
  """The group keys `init_params(grouped=True)` draws by (from an abstract trace)."""
  import jax
  from recast.trainer import network
  calls: list = []
  network._INIT_RECORDING.calls = calls
  try:
    jax.eval_shape(lambda r: network.Transformer(config).init(
        r, *(jax.numpy.ones((1, 8), jax.numpy.int32),) * 3), jax.random.PRNGKey(0))
  finally:
    network._INIT_RECORDING.calls = None
  return [c.group for c in calls]


def print_init_compile(result: dict) -> None:
  rows = [[name, result[name]["trace_and_lower_s"], result[name]["compile_s"],
           result[name]["compile_cpu_s"], result[name]["run_s"], result[name]["optimized_hlo_lines"], result[name]["fusions"]]
          for name in ("flax_per_parameter", "grouped")]
  print(f"\nparameter init, T5.1.1-{result['model']} ({result['num_params']} tensors, "
        f"{result['num_groups']} groups, {result['param_count'] / 1e6:.1f}M values) on "
        f"{result['backend']} ({result['device_kind']}), median of {result['rounds']}:")
  print(table(["init", "trace+lower s", "compile s", "compile CPU s", "run s", "HLO lines",
               "fusions"], rows))
  print(f"compile time, flax / grouped: {result['compile_ratio']:.1f}x wall, "
        f"{result['compile_cpu_ratio']:.1f}x CPU (load {result['load_average'][0]:.1f}); "
        f"same values: "
        f"{result['same_values']} (max |diff| {result['max_abs_diff']:.3g})")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.init_compile",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=("base", "tiny"), default="base")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args(argv)
  print_init_compile(init_compile(model=args.model, rounds=args.rounds))
  return 0


if __name__ == "__main__":
  sys.exit(main())
