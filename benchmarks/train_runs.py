"""The `recast train` run the training benchmarks launch (`bf16_training`, `cpu_devices`):
its command line from the benchmark's arguments, the shared argument parser, and the
training loop's steady rate read back from the run's metrics.jsonl."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from recast import metrics_writer

REPO = Path(__file__).resolve().parents[1]


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


def steady_steps_per_second(model_dir: Path) -> Optional[float]:
  """Median of the run's train `steps_per_second` over its metric windows after the first
  (the first holds the wait for the train step's compilation and the first batch); None
  with fewer than two windows. A window that an evaluation ran in counts the evaluation:
  benchmark with EVAL_PERIOD=0 for the loop alone."""
  rates = [r["value"] for r in metrics_writer.read_metrics(model_dir)
           if r["split"] == "train" and r["metric"] == "steps_per_second"]
  if len(rates) < 2:
    return None
  return statistics.median(rates[1:])


def run_main(argv: Optional[Sequence[str]], *, prog: str, doc: str, steps: int,
             stats_period: Optional[int], measure: Callable[[argparse.Namespace], dict],
             show: Callable[[dict], None],
             extra: Callable[[argparse.ArgumentParser], None] = lambda parser: None) -> int:
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
