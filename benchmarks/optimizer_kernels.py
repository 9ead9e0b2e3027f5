"""Adafactor's kernels: the optimizer update of T5.1.1-base (Adafactor, T5X settings, then
`optax.apply_updates`) compiled alone, per tensor (`optax.adafactor`) and stacked
(`trainer.optimizers.stacked_adafactor`), counting the kernels of the optimized HLO
(the entry computation's instructions that run: fusions, reductions, copies; not
parameters, tuples or bitcasts), and timing one update on this backend.

  python -m benchmarks.optimizer_kernels               # T5.1.1-base
  python -m benchmarks.optimizer_kernels --model=tiny  # seconds
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
from typing import Any, Optional, Sequence

from benchmarks import measure
from benchmarks.tables import table

# Entry-computation instructions that launch no work of their own.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
         "opt-barrier", "partition-id", "replica-id"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?[%\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\(")


def entry_kernels(hlo_text: str) -> collections.Counter:
  """Opcode counts of the work-launching instructions of the ENTRY computation."""
  counts: collections.Counter = collections.Counter()
  in_entry = False
  for line in hlo_text.splitlines():
    if line.startswith("ENTRY"):
      in_entry = True
      continue
    if in_entry:
      if line.startswith("}"):
        break
      m = _INSTRUCTION.match(line)
      if m and m.group(1) not in _FREE:
        counts[m.group(1)] += 1
  return counts


def _abstract_params(model: str):
  import flax.linen as nn
  import jax
  from benchmarks.init_compile import model_config
  from recast.trainer import network
  config = model_config(model)
  return jax.eval_shape(lambda r: nn.unbox(network.init_params(config, r)),
                        jax.random.PRNGKey(0))


def optimizer_kernels(*, model: str = "base", repetitions: int = 5,
                      log=print) -> dict[str, Any]:
  """{"per_tensor": {...}, "stacked": {...}, "kernel_ratio", "time_ratio"}: kernels of the
  compiled update, compile seconds, update seconds (median, interleaved)."""
  import jax
  import jax.numpy as jnp
  import optax
  from recast.trainer import optimizers
  jax.config.update("jax_enable_compilation_cache", False)
  abstract = _abstract_params(model)
  results: dict[str, Any] = {}
  runners = {}
  for name, stacked in (("per_tensor", False), ("stacked", True)):
    opt = optimizers.create_optimizer(
        optimizer_def=lambda s, stacked=stacked: optimizers.adafactor(s, stacked=stacked),
        learning_rate_schedule=1e-3)

    def step(params, grads, state, opt=opt):
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    abstract_state = jax.eval_shape(opt.init, abstract)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 2)).lower(
        abstract, abstract, abstract_state).compile()
    compile_s = time.perf_counter() - start
    kernels = entry_kernels(compiled.as_text())
    results[name] = {"kernels": sum(kernels.values()), "fusions": kernels.get("fusion", 0),
                     "by_opcode": dict(kernels.most_common()), "compile_s": compile_s}
    log(f"  {name}: {results[name]['kernels']} kernels ({results[name]['fusions']} fusions), "
        f"compiled in {compile_s:.1f}s")
    key = jax.random.PRNGKey(0)
    params = jax.tree_util.tree_map(
        lambda s: jax.random.normal(key, s.shape, s.dtype) * 0.05, abstract)
    grads = jax.tree_util.tree_map(lambda p: p * 0.1 + 0.01, params)
    holder = {"params": params, "state": opt.init(params)}

    def run(compiled=compiled, holder=holder, grads=grads):
      holder["params"], holder["state"] = compiled(holder["params"], grads, holder["state"])
      jax.block_until_ready(holder["params"])
    runners[name] = run
  seconds = measure.interleaved_seconds(runners, repetitions=repetitions, warmup=1)
  for name, times in seconds.items():
    results[name]["update"] = measure.summarize(times)
  return {"model": model, "backend": jax.default_backend(),
          "num_tensors": len(jax.tree_util.tree_leaves(abstract)), **results,
          "kernel_ratio": results["per_tensor"]["kernels"] / results["stacked"]["kernels"],
          "time_ratio": results["per_tensor"]["update"]["median_s"]
          / results["stacked"]["update"]["median_s"],
          "load_average": os.getloadavg()}


def print_optimizer_kernels(result: dict) -> None:
  rows = [[name, result[name]["kernels"], result[name]["fusions"], result[name]["compile_s"],
           result[name]["update"]["median_s"] * 1e3] for name in ("per_tensor", "stacked")]
  print(f"\nAdafactor update + apply_updates, T5.1.1-{result['model']} "
        f"({result['num_tensors']} tensors) on {result['backend']}:")
  print(table(["adafactor", "kernels", "fusions", "compile s", "update ms (median)"], rows))
  print(f"kernels, per tensor / stacked: {result['kernel_ratio']:.1f}x; update time: "
        f"{result['time_ratio']:.2f}x (load {result['load_average'][0]:.1f})")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.optimizer_kernels",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=("base", "tiny"), default="base")
  parser.add_argument("--repetitions", type=int, default=5)
  args = parser.parse_args(argv)
  print_optimizer_kernels(optimizer_kernels(model=args.model, repetitions=args.repetitions))
  return 0


if __name__ == "__main__":
  sys.exit(main())
