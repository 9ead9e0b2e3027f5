"""`recast train` on a CPU over one JAX device (the default) against data parallelism over
one device per core (JAX_NUM_CPU_DEVICES=<cores>; BATCH_SIZE must split over them). The
same run, from nothing, alternately on each side, each process alone on the machine; prints
each side's steady steps/s (the median over the run's metric windows after the first, which
holds the compilation wait; --stats_period sets the window, default steps/5) beside the
`done:` line's rate for the whole loop, and their ratio.

  python -m benchmarks.cpu_devices                                 # compact L2_H256, SST-2
  python -m benchmarks.cpu_devices --model=models/compact/L4_H256.gin --inputs=512 \\
      --targets=114 --batch_size=8 --steps=20

Needs ../shared/data (or --data_dir). float32 by default (--dtype), the same seed and data
order on both sides.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.cpu_bf16 import cpu_description
from benchmarks.tables import table
from benchmarks.train_runs import REPO, run_main, steady_steps_per_second, train_command


def _last(pattern: str, text: str, side: str) -> str:
  found = re.findall(pattern, text)
  if not found:
    raise SystemExit(f"the {side} run's output has no {pattern!r}:\n{text[-3000:]}")
  return found[-1]


def cpu_devices(args: argparse.Namespace) -> dict:
  cores = len(os.sched_getaffinity(0))
  if cores < 2:
    raise SystemExit("this process may use one core: there is no one-device-per-core side "
                     "to compare (run it where taskset or the container allows 2 or more)")
  if args.repetitions < 1:
    raise SystemExit(f"--repetitions={args.repetitions}: give at least 1")
  if args.stats_period is None:  # five windows: the first (compilation) left out
    args.stats_period = max(1, args.steps // 5)
  if args.batch_size % cores:
    raise SystemExit(f"--batch_size={args.batch_size} does not split over this machine's "
                     f"{cores} cores; pass a multiple of {cores}")
  sides = {"one_device": {"JAX_NUM_CPU_DEVICES": "1"},
           "per_core": {"JAX_NUM_CPU_DEVICES": str(cores)}}
  out = {"cpu": cpu_description(), "cores": cores, "model": args.model, "task": args.task,
         "steps": args.steps, "batch_size": args.batch_size, "dtype": args.dtype,
         "lengths": {"inputs": args.inputs, "targets": args.targets},
         "runs": {side: [] for side in sides}}
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  with tempfile.TemporaryDirectory(prefix="recast-cpu-devices-") as tmp:
    for repetition in range(args.repetitions):
      for side, env in sides.items():
        model_dir = Path(tmp) / f"{side}_{repetition}"
        done = subprocess.run(train_command(args.dtype, model_dir, args,
                                            eval_period=args.eval_period), cwd=REPO,
                              env={**base, "JAX_PLATFORMS": "cpu",
                                   "RECAST_NO_OUTPUT_CACHE": "1", **env},
                              capture_output=True, text=True)
        text = done.stdout + done.stderr
        if done.returncode != 0:
          raise SystemExit(f"the {side} run failed ({done.returncode}):\n{text[-3000:]}")
        steady = steady_steps_per_second(model_dir)
        if steady is None:
          raise SystemExit(f"the {side} run wrote fewer than two train-metric windows: give "
                           f"--stats_period at most --steps/2 (now {args.stats_period})")
        out["runs"][side].append({
            "steps_per_s": steady,
            "loop_steps_per_s": float(_last(r"done: .*?([0-9.]+) steps/s", text, side)),
            "devices": int(_last(r"(\d+) cpu device\(s\)", text, side))})
        print(f"  {side} run {repetition + 1}: {out['runs'][side][-1]}", flush=True)
  return out


def print_cpu_devices(result: dict) -> None:
  cpu = result["cpu"]
  print(f"\n`recast train` on {cpu.get('model') or 'this CPU'} ({result['cores']} cores): "
        f"{result['model']}, {result['task']}, batch {result['batch_size']} x "
        f"{result['lengths']['inputs']}/{result['lengths']['targets']}, {result['steps']} "
        f"steps, {result['dtype']}")
  medians = {side: statistics.median(r["steps_per_s"] for r in runs)
             for side, runs in result["runs"].items()}
  print(table(["side", "CPU devices", "steady steps/s (median)", "each run",
               "whole loop steps/s, each run"],
              [[side, runs[0]["devices"], medians[side],
                " ".join(f"{r['steps_per_s']:.2f}" for r in runs),
                " ".join(f"{r['loop_steps_per_s']:.2f}" for r in runs)]
               for side, runs in result["runs"].items()]))
  print(f"per_core / one_device steps/s: {medians['per_core'] / medians['one_device']:.2f}x")


def main(argv: Optional[Sequence[str]] = None) -> int:
  def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--eval_period", type=int, default=0,
                        help="EVAL_PERIOD (default 0: the training loop alone)")
  return run_main(argv, prog="python -m benchmarks.cpu_devices", doc=__doc__, steps=100,
                  stats_period=None, measure=cpu_devices, show=print_cpu_devices, extra=extra)


if __name__ == "__main__":
  sys.exit(main())
