"""`recast demo`: the quickstart study, end to end on 2 CPU cores with nothing downloaded.

Steps, each the same machinery a real study uses:
  1. generate four demo tasks (tasks/demo_tasks.py) as local JSONL files;
  2. build a SentencePiece vocabulary from their text (`recast vocab build`);
  3. write a study spec (docs/studies.md) and its task file (the two mixtures) into the
     work folder, and run it with `recast study`'s machinery (Ray, one process a run):
       pretrain  a tiny T5.1.1 self-pretrained with span corruption on the tasks' own
                 input text (`<task>_span_corruption`, labels never seen);
       finetune  multitask fine-tuning on the `demo` mixture, two arms side by side:
                 from random init and from the self-pretrained checkpoint;
  4. print the study's report: both arms on every task, decoded and rank-classification
     accuracy, against the majority-class baseline.
Then it prints the commands that run the same study on GLUE.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import yaml

from recast import atomic_files
from recast.jobs import study, study_report
from recast.tasks import demo_tasks, vocab_build

MODEL_GIN = "models/t5_1_1/tiny.gin"
PRETRAIN_LENGTHS = {"inputs": 64, "targets": 14}  # random_spans_helper(64) -> 14 targets
FINETUNE_LENGTHS = {"inputs": 64, "targets": 16}
VOCAB_PIECES = 256  # the demo text has few distinct words; +100 sentinels = 356 ids
ARMS = ("random", "self_pretrained")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default="runs/demo",
                      help="where the vocabulary, the study (its runs and report) go "
                      "(runs/demo)")
  parser.add_argument("--pretrain_steps", type=int, default=1000)
  parser.add_argument("--finetune_steps", type=int, default=2500)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--fresh", action="store_true",
                      help="delete earlier demo runs in --workdir first (default: resume them)")


def _stage(title: str) -> None:
  print(f"\n== {title}", flush=True)


def demo_study(workdir: Path, vocab_path: Path, names: list[str], *, pretrain_steps: int,
               finetune_steps: int, batch_size: int) -> dict:
  """The demo's study spec (a dict, written as YAML): pretrain, then both fine-tuning arms."""
  eval_period = max(1, finetune_steps // 5)
  return {
      "name": "study", "storage_path": str(workdir), "vocabulary": str(vocab_path),
      "tasks_files": [str(workdir / "demo_mixtures.yaml")],
      "bindings": {"BATCH_SIZE": batch_size, "DROPOUT_RATE": 0.0},
      "resources_per_trial": {"cpu": 1}, "max_concurrent_trials": 2,
      "env": {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
      "stages": {
          "pretrain": {
              "gin_files": [MODEL_GIN, "runs/pretrain.gin"],
              "bindings": {"MIXTURE_OR_TASK_NAME": "demo_self_pretraining",
                           "TASK_FEATURE_LENGTHS": PRETRAIN_LENGTHS,
                           # T5's rate, 1/sqrt(10000) (trainer.run_values.check_schedule)
                           "TRAIN_STEPS": pretrain_steps, "WARMUP_STEPS": 10000,
                           "CHECKPOINT_PERIOD": pretrain_steps},
              "grid": {"SEED": [0]}},
          "finetune": {
              "gin_files": [MODEL_GIN, "runs/finetune.gin"],
              "bindings": {"MIXTURE_OR_TASK_NAME": "demo",
                           "TASK_FEATURE_LENGTHS": FINETUNE_LENGTHS,
                           "TRAIN_STEPS": finetune_steps, "LEARNING_RATE": 0.003,
                           "EVAL_PERIOD": eval_period, "CHECKPOINT_PERIOD": finetune_steps},
              "labels": ["INIT"],
              "grid": {"SEED": [0]},
              "points": [{"INIT": "random", "INITIAL_CHECKPOINT_PATH": None},
                         {"INIT": "self_pretrained",
                          "INITIAL_CHECKPOINT_PATH": {"stage": "pretrain"}}]}},
      "arms": {arm: {"stage": "finetune", "INIT": arm} for arm in ARMS},
      "reference": "random"}


def demo_mixtures(names: list[str]) -> dict:
  """The task file of the demo's two mixtures (examples-proportional)."""
  return {"mixtures": [
      {"name": "demo_self_pretraining", "tasks": [f"{n}_span_corruption" for n in names]},
      {"name": "demo", "tasks": list(names)}]}


def main(args: argparse.Namespace) -> int:
  started = time.time()
  workdir = Path(args.workdir).resolve()
  if args.fresh and workdir.exists():
    shutil.rmtree(workdir)

  _stage("1/4 generating the demo tasks")
  data_dir = demo_tasks.ensure_demo_data()
  names = demo_tasks.register_demo_tasks(data_dir)
  for name in names:
    print(f"  {name:18s} {demo_tasks.SPLIT_SIZES['train']} train / "
          f"{demo_tasks.SPLIT_SIZES['validation']} validation examples  ({data_dir / 'demo'})")

  _stage("2/4 building the vocabulary")
  vocab_path = workdir / "vocab" / "spiece.model"
  if not vocab_path.exists():
    vocab_build.build_vocabulary(
        demo_tasks.vocabulary_text(data_dir), vocab_size=VOCAB_PIECES, out=vocab_path,
        required_text=vocab_build.label_names(names))
  print(f"  {vocab_path}: {VOCAB_PIECES} pieces + 100 sentinel ids")

  _stage(f"3/4 the study: self-pretraining ({args.pretrain_steps} steps of span corruption "
         f"on the tasks' own text), then multitask fine-tuning ({args.finetune_steps} "
         "steps) from random init and from the self-pretrained model, side by side")
  spec_path = workdir / "demo_study.yaml"
  workdir.mkdir(parents=True, exist_ok=True)
  atomic_files.write_text(workdir / "demo_mixtures.yaml",
                          yaml.safe_dump(demo_mixtures(names), sort_keys=False))
  atomic_files.write_text(spec_path, yaml.safe_dump(demo_study(
      workdir, vocab_path, names, pretrain_steps=args.pretrain_steps,
      finetune_steps=args.finetune_steps, batch_size=args.batch_size), sort_keys=False))
  print(f"  spec: {spec_path} (`recast study {spec_path} --dry_run` prints its graph)")
  outcome = study.run_study(spec_path)
  if outcome.failed:
    stage, failed = next(iter(outcome.failed.items()))
    print(f"stage {stage}: runs failed: {', '.join(failed)}; see "
          f"{outcome.study_dir}/{stage}/runs/<run>/output.log, then run `recast demo` again "
          "(finished runs are kept)")
    return 1

  _stage("4/4 the report (validation accuracy, %)")
  report_dir = outcome.report_dir
  print((report_dir / "report.md").read_text())
  summary = study_report.summarize(outcome.study_dir)
  rows = {(r["arm"], r["task"], r["metric"]): r for r in summary["rows"]}
  tasks = [t for t in summary["tasks"] if t != study_report.AVERAGE]
  beaten = [t for t in tasks if (r := rows.get(("self_pretrained", t, "accuracy")))
            and r["baseline"] is not None and r["mean"] > r["baseline"]]
  print(f"self-pretrained beats the majority class on {len(beaten)} of {len(tasks)} tasks. "
        f"Done in {time.time() - started:.0f}s. Study: {outcome.study_dir}; report: "
        f"{report_dir}")
  print(GLUE_COMMANDS)
  return 0 if len(beaten) == len(tasks) else 1


GLUE_COMMANDS = """
The same machinery on real GLUE data (../shared/data, or DATA_DIR laid out as
<builder>/<split>.jsonl, or TFDS), each study one command (docs/studies.md):
  recast study gin/experiments/studies/self_pretraining_smoke.yaml   # random / self / general init
  recast study gin/experiments/studies/multitask_smoke.yaml          # single task vs mixtures
  recast study gin/experiments/studies/compact_models_smoke.yaml     # scratch / pretrained / distilled
  recast study gin/experiments/studies/self_pretraining.yaml --address=auto   # full scale, on Ray"""
