"""Is bfloat16 sound and faster for training on this CPU? One `recast train` run trained
twice, float32 and bfloat16 activations (ACTIVATION_DTYPE; float32 weights and optimizer
state both), side by side: the two runs start together, each pinned to its own core, so
they share the machine's load. Prints the train loss every `--stats_period` steps of
both, the final validation metrics, and steps/s.

  python -m benchmarks.bf16_training                       # compact L2_H256 on SST-2
  python -m benchmarks.bf16_training --steps=100 --model=models/t5_1_1/tiny.gin

Needs ../shared/data (or --data_dir). The same seed, data order and dropout keys on both
sides, so the curves differ by the activation precision alone.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.cpu_bf16 import cpu_description
from benchmarks.tables import table
from benchmarks.train_runs import REPO, run_main, train_command
from recast import metrics_writer

DTYPES = ("float32", "bfloat16")


def bf16_training(args: argparse.Namespace) -> dict:
  out = {"cpu": cpu_description(), "model": args.model, "task": args.task,
         "steps": args.steps, "batch_size": args.batch_size,
         "lengths": {"inputs": args.inputs, "targets": args.targets}, "runs": {}}
  with tempfile.TemporaryDirectory(prefix="recast-bf16-") as tmp:
    procs = {}
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu", "RECAST_NO_OUTPUT_CACHE": "1"}
    cores = sorted(os.sched_getaffinity(0))
    for i, dtype in enumerate(DTYPES):
      model_dir = Path(tmp) / dtype
      log = open(Path(tmp) / f"{dtype}.log", "w")
      pin = ({cores[i % len(cores)]},) if len(cores) >= 2 else None
      procs[dtype] = (subprocess.Popen(
          train_command(dtype, model_dir, args), cwd=REPO, env=env, stdout=log,
          stderr=subprocess.STDOUT,
          preexec_fn=(lambda p=pin: os.sched_setaffinity(0, p[0])) if pin else None),
          model_dir, log, time.perf_counter())
    for dtype, (proc, model_dir, log, started) in procs.items():
      code = proc.wait()
      log.close()
      text = (Path(tmp) / f"{dtype}.log").read_text()
      if code != 0:
        raise SystemExit(f"the {dtype} run failed ({code}):\n{text[-3000:]}")
      rate = re.search(r"done: .*?([0-9.]+) steps/s", text)
      rows = metrics_writer.read_metrics(model_dir)
      out["runs"][dtype] = {
          "wall_s": time.perf_counter() - started,
          "steps_per_s": float(rate.group(1)) if rate else None,
          "loss": {r["step"]: r["value"] for r in rows
                   if r["split"] == "train" and r["metric"] == "loss"},
          "validation": {r["metric"]: r["value"] for r in rows
                         if r["split"] == "validation" and r["task"] == args.task
                         and r["step"] == args.steps}}
  return out


def print_bf16_training(result: dict) -> None:
  f32, bf16 = (result["runs"][d] for d in DTYPES)
  cpu = result["cpu"]
  print(f"\nbf16 training on {cpu.get('model') or 'this CPU'} ({cpu.get('cores')} cores; "
        f"{', '.join(cpu.get('isa', [])) or 'no AVX-512/AMX'}): {result['model']}, "
        f"{result['task']}, batch {result['batch_size']} x {result['lengths']['inputs']}/"
        f"{result['lengths']['targets']}, {result['steps']} steps")
  rows = [[step, f32["loss"][step], bf16["loss"].get(step),
           (bf16["loss"][step] - f32["loss"][step]) / f32["loss"][step]
           if step in bf16["loss"] else None] for step in sorted(f32["loss"])]
  print(table(["step", "loss float32", "loss bfloat16", "relative difference"], rows))
  metrics = sorted(set(f32["validation"]) | set(bf16["validation"]))
  print(table(["validation metric", "float32", "bfloat16"],
              [[m, f32["validation"].get(m), bf16["validation"].get(m)] for m in metrics]))
  ratio = (bf16["steps_per_s"] / f32["steps_per_s"]
           if bf16["steps_per_s"] and f32["steps_per_s"] else None)
  print(table(["precision", "steps/s (training loop)", "wall s (whole run)"],
              [["float32", f32["steps_per_s"], f32["wall_s"]],
               ["bfloat16", bf16["steps_per_s"], bf16["wall_s"]]]))
  if ratio:
    print(f"bfloat16 / float32 steps/s: {ratio:.2f}x")


def main(argv: Optional[Sequence[str]] = None) -> int:
  return run_main(argv, prog="python -m benchmarks.bf16_training", doc=__doc__, steps=200,
                  stats_period=20, measure=bf16_training, show=print_bf16_training)


if __name__ == "__main__":
  sys.exit(main())
