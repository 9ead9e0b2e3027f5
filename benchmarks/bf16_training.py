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
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.cpu_bf16 import cpu_description
from recast import metrics_writer
from benchmarks.tables import table

REPO = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16")


def train_command(dtype: str, model_dir: Path, args: argparse.Namespace, *,
                  eval_period: Optional[int] = None) -> list[str]:
  """`recast train` of `args` (model, task, steps, lengths, data) in activation `dtype`,
  evaluated every `eval_period` steps (default: at the end; 0: never)."""
  values = {
      "MODEL_DIR": repr(str(model_dir)), "MIXTURE_OR_TASK_NAME": repr(args.task),
      "TASK_FEATURE_LENGTHS": repr({"inputs": args.inputs, "targets": args.targets}),
      "TRAIN_STEPS": args.steps, "BATCH_SIZE": args.batch_size,
      "EVAL_PERIOD": args.steps if eval_period is None else eval_period,
      "CHECKPOINT_PERIOD": args.steps, "DATA_DIR": repr(str(args.data_dir)),
      "VOCABULARY": repr(args.vocabulary), "ACTIVATION_DTYPE": repr(dtype),
      "train.stats_period": args.stats_period}
  return [sys.executable, "-m", "recast", "train", f"--gin_file={args.model}",
          "--gin_file=runs/finetune.gin",
          *[f"--gin.{name}={value}" for name, value in values.items()]]


def bf16_training(args: argparse.Namespace) -> dict:
  out = {"cpu": cpu_description(), "model": args.model, "task": args.task,
         "steps": args.steps, "batch_size": args.batch_size,
         "lengths": {"inputs": args.inputs, "targets": args.targets}, "runs": {}}
  with tempfile.TemporaryDirectory(prefix="recast-bf16-") as tmp:
    procs = {}
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "RECAST_NO_OUTPUT_CACHE": "1"}
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


def run_main(argv: Optional[Sequence[str]], *, prog: str, doc: str, steps: int,
             stats_period: int, measure, show, extra=lambda parser: None) -> int:
  """The command line of a benchmark that trains one `recast train` run (`train_command`'s
  arguments; `extra` adds its own), then `show(measure(args))`, and --json."""
  parser = argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="models/compact/L2_H256.gin")
  parser.add_argument("--task", default="glue_sst2")
  parser.add_argument("--steps", type=int, default=steps)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--inputs", type=int, default=64)
  parser.add_argument("--targets", type=int, default=8)
  parser.add_argument("--stats_period", type=int, default=stats_period)
  parser.add_argument("--vocabulary", default="auto")
  parser.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data")
  parser.add_argument("--json", type=Path, default=None, help="also write the result here")
  extra(parser)
  args = parser.parse_args(argv)
  if not (args.data_dir / "glue").is_dir():
    parser.error(f"no data at {args.data_dir}: pass --data_dir (../shared/data layout)")
  result = measure(args)
  show(result)
  if args.json:
    args.json.write_text(json.dumps(result, indent=1))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return run_main(argv, prog="python -m benchmarks.bf16_training", doc=__doc__, steps=200,
                  stats_period=20, measure=bf16_training, show=print_bf16_training)


if __name__ == "__main__":
  sys.exit(main())
