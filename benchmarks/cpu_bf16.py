"""Does XLA:CPU use the CPU's bf16 units? Matmul GFLOP/s of JAX in float32 and bfloat16
under each XLA:CPU back-end choice (default Eigen/thunks, oneDNN, XNNPACK, YNNPACK
dot fusions), against PyTorch on the same cores, in the same process, interleaved.

  python -m benchmarks.cpu_bf16                  # 2048^2 matmul and a T5 MLP-shaped dot
  python -m benchmarks.cpu_bf16 --size=1024 --repetitions=3

Each XLA flag set runs in its own process (XLA reads XLA_FLAGS once); every process
also times PyTorch float32 and bfloat16, so each row has its own PyTorch baseline under
the same load. bf16 dots take bfloat16 inputs; "bf16->f32" asks for float32 results
(preferred_element_type, what a float32-accumulating matmul asks of the library).
The `dot_via` column names what the compiled HLO runs the dot with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from benchmarks.tables import table

FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_dot_fusion": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "xnnpack_dot_fusion": "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=dot",
    "ynnpack_dot_fusion": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    # oneDNN's matmul as a custom call (the rewriter that also fuses bias/activations into
    # it; AMX kernels on CPUs that have them).
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    # No YNNPACK fusions: dots go to XLA's own (Eigen) kernels or, with oneDNN on, to it.
    "no_ynnpack": "--xla_cpu_experimental_ynn_fusion_type=",
    "onednn_no_ynnpack": ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
                          " --xla_cpu_experimental_ynn_fusion_type="),
}


def cpu_description() -> dict[str, Any]:
  """Model name and the bf16-relevant ISA flags of this CPU (from /proc/cpuinfo)."""
  from recast.trainer.network import cpu_info
  model, flags = cpu_info()
  wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx2")
  return {"model": model, "isa": [f for f in wanted if f in flags], "cores": os.cpu_count()}


def dot_kernel(hlo: str) -> str:
  """Which library a compiled XLA:CPU program runs its dot with, from its HLO text."""
  return ("ynnpack" if "__ynn_fusion" in hlo else "xnnpack" if "__xnn_fusion" in hlo
          else "onednn" if "onednn" in hlo.lower() else "xla (eigen)")


def _child(size: int, repetitions: int, shapes: list) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from benchmarks import measure
  rng = np.random.default_rng(0)
  contenders, notes = {}, {}
  for (m, k, n) in shapes:
    a32 = rng.standard_normal((m, k), np.float32)
    b32 = rng.standard_normal((k, n), np.float32)
    tag = f"{m}x{k}x{n}"
    for name, dtype, out in (("f32", jnp.float32, None), ("bf16", jnp.bfloat16, None),
                             ("bf16->f32", jnp.bfloat16, jnp.float32)):
      a, b = jnp.asarray(a32, dtype), jnp.asarray(b32, dtype)
      fn = jax.jit(lambda x, y, out=out: jnp.matmul(x, y, preferred_element_type=out))
      hlo = fn.lower(a, b).compile().as_text()
      notes[f"jax {name} {tag}"] = dot_kernel(hlo)
      contenders[f"jax {name} {tag}"] = (
          lambda fn=fn, a=a, b=b: fn(a, b).block_until_ready())
    ta32, tb32 = torch.from_numpy(a32), torch.from_numpy(b32)
    ta16, tb16 = ta32.bfloat16(), tb32.bfloat16()
    contenders[f"torch f32 {tag}"] = lambda a=ta32, b=tb32: torch.matmul(a, b)
    contenders[f"torch bf16 {tag}"] = lambda a=ta16, b=tb16: torch.matmul(a, b)
    notes[f"torch f32 {tag}"] = notes[f"torch bf16 {tag}"] = "torch"
  seconds = measure.interleaved_seconds(contenders, repetitions=repetitions, warmup=1)
  out = {}
  for name, times in seconds.items():
    m, k, n = (int(x) for x in name.split()[-1].split("x"))
    median = measure.summarize(times)["median_s"]
    out[name] = {"median_s": median, "gflop_per_s": 2 * m * k * n / median / 1e9,
                 "dot_via": notes[name]}
  return {"results": out, "load_average": os.getloadavg(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch_threads": torch.get_num_threads()}


def cpu_bf16(*, size: int = 2048, repetitions: int = 3, flag_sets: Optional[Sequence[str]] = None,
             log=print) -> dict[str, Any]:
  """{flag set: {"results": {label: {median_s, gflop_per_s, dot_via}}, ...}} plus the CPU."""
  shapes = [(size, size, size), (4096, 256, 1024)]  # square; CPU preset's wi (8x512 tokens)
  runs: dict[str, Any] = {}
  for name in flag_sets or FLAG_SETS:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " "
                                      + FLAG_SETS[name]).strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu_bf16", "--child", json.dumps(
            {"size": size, "repetitions": repetitions, "shapes": shapes})],
        env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      runs[name] = {"skipped": tail[:200]}
      log(f"  {name}: failed ({tail[:200]})")
      continue
    runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"  {name}: done (load {runs[name]['load_average'][0]:.1f})")
  return {"cpu": cpu_description(), "size": size, "repetitions": repetitions,
          "shapes": shapes, "runs": runs}


def print_cpu_bf16(result: dict) -> None:
  cpu = result["cpu"]
  print(f"\nmatmul GFLOP/s on {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['isa'])}); "
        f"median of {result['repetitions']}, interleaved with PyTorch in each process:")
  for m, k, n in result["shapes"]:
    tag = f"{m}x{k}x{n}"
    rows = []
    for name, run in result["runs"].items():
      if "skipped" in run:
        rows.append([name, run["skipped"], None, None, None, None, None, None])
        continue
      r = run["results"]
      g = lambda label: r[f"{label} {tag}"]["gflop_per_s"]
      rows.append([name, g("jax f32"), g("jax bf16"), g("jax bf16->f32"),
                   r[f"jax bf16 {tag}"]["dot_via"], g("torch f32"), g("torch bf16"),
                   g("jax bf16") / g("jax f32")])
    print(f"\n{tag} (M x K x N):")
    print(table(["XLA flags", "jax f32", "jax bf16", "jax bf16->f32", "bf16 dot via",
                 "torch f32", "torch bf16", "jax bf16/f32"], rows))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_bf16", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=2048)
  parser.add_argument("--repetitions", type=int, default=3)
  parser.add_argument("--flag_sets", default=",".join(FLAG_SETS),
                      help=f"comma-separated subset of {', '.join(FLAG_SETS)}")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    spec = json.loads(args.child)
    print(json.dumps(_child(spec["size"], spec["repetitions"], [tuple(s) for s in spec["shapes"]])))
    return 0
  names = [s for s in args.flag_sets.split(",") if s]
  unknown = sorted(set(names) - set(FLAG_SETS))
  if unknown:
    print(f"unknown flag set(s) {', '.join(unknown)}; choose from {', '.join(FLAG_SETS)}",
          file=sys.stderr)
    return 2
  print_cpu_bf16(cpu_bf16(size=args.size, repetitions=args.repetitions, flag_sets=names))
  return 0


if __name__ == "__main__":
  sys.exit(main())
