"""`recast demo`: the quickstart study, end to end on 2 CPU cores with nothing downloaded.

Steps, each the same machinery a real study uses:
  1. generate four demo tasks (tasks/demo_tasks.py) as local JSONL files;
  2. build a SentencePiece vocabulary from their text (`recast vocab build`);
  3. self-pretrain a tiny T5.1.1 with span corruption on the tasks' own input text
     (`<task>_span_corruption`, labels never seen);
  4. multitask fine-tune on the `demo` mixture from that checkpoint, evaluating each task;
  5. print a table against the majority-class baseline and write a report.
Then it prints the commands that run the same study on GLUE.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import time
from pathlib import Path
from typing import Mapping

import seqio

from recast import atomic_files, gin_config, metrics_writer
from recast.jobs import report
from recast.mixtures import rates
from recast.tasks import demo_tasks, pretraining, registry, vocab_build
from recast.trainer import train

MODEL_GIN = "models/t5_1_1/tiny.gin"
PRETRAIN_LENGTHS = {"inputs": 64, "targets": 14}  # random_spans_helper(64) -> 14 targets
FINETUNE_LENGTHS = {"inputs": 64, "targets": 16}
VOCAB_PIECES = 256  # the demo text has few distinct words; +100 sentinels = 356 ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default="runs/demo",
                      help="where data, vocabulary, runs and the report go (runs/demo)")
  parser.add_argument("--pretrain_steps", type=int, default=1000)
  parser.add_argument("--finetune_steps", type=int, default=2500)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--fresh", action="store_true",
                      help="delete earlier demo runs in --workdir first (default: resume them)")


def _stage(title: str) -> None:
  print(f"\n== {title}", flush=True)


def majority_baselines(data_dir: Path, tasks: Mapping[str, str]) -> dict[str, float]:
  """Accuracy (%) of always predicting each task's most common validation target."""
  baselines = {}
  for task_name, folder in tasks.items():
    spec = registry.task_spec(task_name)
    rows = atomic_files.read_jsonl(data_dir / "demo" / folder / "validation.jsonl")
    targets = [spec.targets_template.format(**{**row, "label": spec.render_label(row["label"])})
               if spec.label_field else spec.targets_template.format(**row) for row in rows]
    baselines[task_name] = 100.0 * collections.Counter(targets).most_common(1)[0][1] / len(rows)
  return baselines


def _train(bindings: list[str], run_file: str) -> None:
  gin_config.parse_gin([MODEL_GIN, run_file], bindings)
  train.train()


def _final_accuracy(model_dir: Path) -> dict[str, float]:
  rows = [r for r in metrics_writer.read_metrics(model_dir)
          if r["split"] == "validation" and r["metric"] == "accuracy"]
  last = max(r["step"] for r in rows)
  return {r["task"]: r["value"] for r in rows if r["step"] == last}


def main(args: argparse.Namespace) -> int:
  started = time.time()
  workdir = Path(args.workdir).resolve()
  if args.fresh and workdir.exists():
    shutil.rmtree(workdir)

  _stage("1/5 generating the demo tasks")
  data_dir = workdir / "data"
  names = demo_tasks.register_demo_tasks(data_dir)
  folders = {f"demo_{n}": n for n in demo_tasks.GENERATORS}
  for name in names:
    print(f"  {name:18s} {demo_tasks.SPLIT_SIZES['train']} train / "
          f"{demo_tasks.SPLIT_SIZES['validation']} validation examples  ({data_dir / 'demo'})")

  _stage("2/5 building the vocabulary")
  vocab_path = workdir / "vocab" / "spiece.model"
  if not vocab_path.exists():
    vocab_build.build_vocabulary(
        demo_tasks.vocabulary_text(data_dir), vocab_size=VOCAB_PIECES, out=vocab_path,
        required_text=vocab_build.label_names(names))
  print(f"  {vocab_path}: {VOCAB_PIECES} pieces + 100 sentinel ids")

  pretrain_tasks = [pretraining.pretraining_task(n, "span_corruption").name for n in names]
  for mixture, members in (("demo_self_pretraining", pretrain_tasks), ("demo", names)):
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, members, default_rate=rates.examples_proportional())

  common = [f"VOCABULARY={str(vocab_path)!r}", f"BATCH_SIZE={args.batch_size}",
            "DROPOUT_RATE=0.0"]
  pretrain_dir, finetune_dir = workdir / "pretrain", workdir / "finetune"

  _stage(f"3/5 self-pretraining ({args.pretrain_steps} steps of span corruption on the "
         "tasks' own text)")
  _train(common + [f"MODEL_DIR={str(pretrain_dir)!r}",
                   "MIXTURE_OR_TASK_NAME='demo_self_pretraining'",
                   f"TASK_FEATURE_LENGTHS={PRETRAIN_LENGTHS}",
                   f"TRAIN_STEPS={args.pretrain_steps}", "WARMUP_STEPS=100",
                   f"CHECKPOINT_PERIOD={args.pretrain_steps}", "train.stats_period=250"],
         "runs/pretrain.gin")

  _stage(f"4/5 multitask fine-tuning on the demo mixture ({args.finetune_steps} steps), "
         "then evaluation")
  _train(common + [f"MODEL_DIR={str(finetune_dir)!r}", "MIXTURE_OR_TASK_NAME='demo'",
                   f"TASK_FEATURE_LENGTHS={FINETUNE_LENGTHS}",
                   f"TRAIN_STEPS={args.finetune_steps}",
                   f"INITIAL_CHECKPOINT_PATH={str(pretrain_dir)!r}", "LEARNING_RATE=0.003",
                   f"EVAL_PERIOD={args.finetune_steps}",
                   f"CHECKPOINT_PERIOD={args.finetune_steps}", "train.stats_period=250"],
         "runs/finetune.gin")

  _stage("5/5 results (validation accuracy, %)")
  scores = _final_accuracy(finetune_dir)
  baselines = majority_baselines(data_dir, folders)
  table = results_table(scores, baselines)
  print(table)
  atomic_files.write_text(workdir / "results.md", table + "\n")
  _write_report(finetune_dir, workdir / "report")
  print(f"\nDone in {time.time() - started:.0f}s. Runs: {pretrain_dir}, {finetune_dir}; "
        f"table: {workdir / 'results.md'}")
  print(GLUE_COMMANDS)
  beaten = all(scores.get(t, 0.0) > b for t, b in baselines.items())
  return 0 if beaten else 1


def results_table(scores: Mapping[str, float], baselines: Mapping[str, float]) -> str:
  lines = ["| task | fine-tuned | majority class | beats baseline |", "|---|---|---|---|"]
  for task, base in baselines.items():
    score = scores.get(task)
    shown = "n/a" if score is None else f"{score:.1f}"
    beats = "yes" if score is not None and score > base else "NO"
    lines.append(f"| {task} | {shown} | {base:.1f} | {beats} |")
  return "\n".join(lines)


def _write_report(model_dir: Path, out: Path) -> None:
  report.write_report([model_dir], out_dir=out)
  print(f"  report (tables and plots): {out}")


GLUE_COMMANDS = """
The same study on GLUE (data under DATA_DIR laid out as <builder>/<split>.jsonl, or TFDS):
  recast vocab build --task glue_rte --task glue_mrpc --task glue_cola --vocab_size 8000 \\
      --out runs/glue/spiece.model --gin.DATA_DIR="'../shared/data'"
  recast train --gin_file=models/t5_1_1/small.gin --gin_file=runs/pretrain.gin \\
      --gin.MODEL_DIR="'runs/glue/pretrain'" --gin.MIXTURE_OR_TASK_NAME="'glue_rte_span_corruption'" \\
      --gin.VOCABULARY="'runs/glue/spiece.model'" --gin.DATA_DIR="'../shared/data'" --gin.TRAIN_STEPS=10000
  recast train --gin_file=models/t5_1_1/small.gin --gin_file=runs/finetune.gin \\
      --gin.MODEL_DIR="'runs/glue/finetune'" --gin.MIXTURE_OR_TASK_NAME="'glue'" \\
      --gin.INITIAL_CHECKPOINT_PATH="'runs/glue/pretrain'" --gin.VOCABULARY="'runs/glue/spiece.model'" \\
      --gin.DATA_DIR="'../shared/data'" --gin.TASK_FEATURE_LENGTHS="{'inputs': 256, 'targets': 8}" \\
      --gin.TRAIN_STEPS=20000 --gin.EVAL_PERIOD=2000
  recast report runs/glue/finetune"""
