"""`recast eval-base`: judge a base model "model recycling" style, as ColD Fusion does.

Fine-tune the base, and a reference base, on each task of a set (default `recycling36`)
with one fixed recipe over seeds; report per task the mean score of each (and its sample
std over seeds) and the base's gain over the reference, with average gains over all tasks
and separately over tasks seen in a fusion pool and unseen ones (report.recycling_table,
which sweeps' recycling tables use too). Each fine-tuning run is a `recast train` subprocess
(in parallel through Ray on GPUs, see launcher.run_jobs):

    OUTPUT_DIR/<base|reference>/<task>/seed_<s>/   MODEL_DIR of one run; DONE = its score
    OUTPUT_DIR/eval_base.md, eval_base.csv, eval_base.json

A task's score is the mean of its validation metrics at the last step (accuracy, F1, ...;
T5's per-task average), on a 0-100 scale. Killed runs resume: finished runs are kept.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio

from recast import atomic_files, errors, gin_config, metrics_writer
from recast.jobs import fusion, launcher, report
from recast.mixtures import lookup
from recast.trainer import checkpoints, convert
from recast.trainer.network import T5Config

MODELS = ("base", "reference")
SCRATCH = "scratch"
REPORT_NAME = "eval_base"


class RecyclingError(errors.UserError):
  """The evaluation cannot run as configured; the message says what to change."""


def task_names(tasks: str | Sequence[str]) -> list[str]:
  """A mixture's member tasks (e.g. "recycling36"), a task name, or a list of names."""
  if isinstance(tasks, str):
    return [t.name for t in seqio.get_subtasks(lookup.get_mixture_or_task(tasks))]
  names = list(tasks)
  if not names:
    raise RecyclingError("EVAL_BASE_TASKS is empty; give a mixture (e.g. 'recycling36') or "
                         "a list of tasks")
  for name in names:
    lookup.get_mixture_or_task(name)
  return names


def eval_split(task_name: str) -> str:
  """The split a task is scored on: validation, else test (tasks without validation)."""
  splits = lookup.get_mixture_or_task(task_name).splits
  for split in ("validation", "test"):
    if split in splits:
      return split
  raise RecyclingError(f"task {task_name} has no validation or test split "
                       f"({', '.join(splits)}); leave it out of EVAL_BASE_TASKS")


def run_score(model_dir: str | os.PathLike, *, task: str, step: int) -> float:
  """The run's score: the mean of its inference metrics for `task` at `step`."""
  rows = [r for r in metrics_writer.read_metrics(model_dir)
          if r["step"] == step and r["task"] == task and r["split"] != "train"]
  values = {r["metric"]: r["value"] for r in rows if r["value"] is not None}
  score = fusion.task_scores({task: values}, [task])[task]["score"]
  if not np.isfinite(score):
    raise RecyclingError(f"{model_dir} has no validation metrics for {task} at step {step}; "
                         "see its output.log")
  return score


def write_report(output_dir: str | os.PathLike, table: Mapping[str, Any]) -> None:
  """eval_base.md (average gains, then unseen and seen task rows), .csv and .json, from
  report.recycling_table's table (a std is None, shown as nothing, for one seed)."""
  output_dir = Path(output_dir)
  num = lambda v: "" if v is None else f"{v:.2f}"
  signed = lambda v: "" if v is None else f"{v:+.2f}"
  spread = lambda v: "" if v is None else f" ± {v:.2f}"
  md = ["# Model recycling evaluation", "",
        "| tasks | n | base | reference | gain |", "|---|---|---|---|---|"]
  for group, avg in table["average"].items():
    md.append(f"| {group} | {avg['tasks']} | {num(avg['base'])} | "
              f"{num(avg.get('reference'))} | {signed(avg.get('gain'))} |")
  for title, seen in (("Unseen tasks (not in the fusion pool)", False),
                      ("Seen tasks (in the fusion pool)", True)):
    rows = [r for r in table["rows"] if r["seen"] == seen]
    if not rows:
      continue
    md += ["", f"## {title}", "", "| task | base | reference | gain |", "|---|---|---|---|"]
    md += [f"| {r['task']} | {num(r['base'])}{spread(r['base_std'])} | "
           f"{num(r.get('reference'))}{spread(r.get('reference_std'))} | "
           f"{signed(r.get('gain'))} |" for r in rows]
  atomic_files.write_text(output_dir / f"{REPORT_NAME}.md", "\n".join(md) + "\n")
  columns = ("task", "seen", "base", "base_std", "reference", "reference_std", "gain")
  csv = [",".join(columns)] + [",".join("" if r.get(c) is None else str(r[c])
                                        for c in columns) for r in table["rows"]]
  atomic_files.write_text(output_dir / f"{REPORT_NAME}.csv", "\n".join(csv) + "\n")
  atomic_files.write_json(output_dir / f"{REPORT_NAME}.json", table)


def _seen_tasks(fusion_dir: Optional[str], seen_tasks: Optional[Sequence[str]]) -> list[str]:
  if seen_tasks is not None:
    return list(seen_tasks)
  if fusion_dir is None:
    return []
  settings = Path(fusion_dir) / fusion.SETTINGS_FILE
  if not settings.is_file():
    raise RecyclingError(f"FUSION_DIR {fusion_dir} holds no fusion run ({fusion.SETTINGS_FILE} "
                         "missing); set it to a `recast fuse` folder or set SEEN_TASKS")
  return list(json.loads(settings.read_text())["pool"])


def _model_source(name: str, checkpoint: Optional[str], output_dir: Path
                  ) -> tuple[Optional[str], list[str]]:
  """(INITIAL_CHECKPOINT_PATH, architecture bindings) of a model: 'scratch' (random init,
  the model gin file), a recast checkpoint, or a Hugging Face folder (converted once)."""
  if checkpoint is None or checkpoint == SCRATCH:
    return None, []
  path = Path(checkpoint).resolve()
  if (path / convert.CONFIG_FILE).is_file() and not checkpoints.is_param_checkpoint(path):
    converted = output_dir / name / "converted"
    if not checkpoints.is_param_checkpoint(converted):
      convert.hf_to_recast(path, converted)
    path = converted
  source = fusion.open_checkpoint(path)
  return str(path), fusion.architecture_bindings(T5Config(**source.config))


@gin.configurable
def evaluate_base(*, output_dir: str = gin.REQUIRED, base_checkpoint: str = gin.REQUIRED,
                  reference_checkpoint: Optional[str] = None,
                  tasks: str | Sequence[str] = "recycling36", seeds: Sequence[int] = (0,),
                  finetune_steps: int = gin.REQUIRED,
                  fusion_dir: Optional[str] = None, seen_tasks: Optional[Sequence[str]] = None,
                  parallel: str = "auto", ray_address: Optional[str] = None,
                  train_flags: Optional[launcher.TrainFlags] = None) -> dict:
  """Fine-tunes base (and reference) on every task for every seed; returns the table.

  Args:
    output_dir: EVAL_BASE_DIR (runs and the report).
    base_checkpoint: the model judged: a recast checkpoint (e.g. FUSION_DIR/round_R/fused),
      a run's MODEL_DIR, a Hugging Face T5 folder, or 'scratch'.
    reference_checkpoint: the model gains are measured against (e.g. the fusion's base,
      FUSION_DIR/round_0/fused, the default when fusion_dir is set); None: no gains.
    tasks: a mixture (default recycling36) or a list of task names.
    seeds: one fine-tuning run per seed (the recipe is otherwise fixed: the gin files).
    finetune_steps: TRAIN_STEPS of every run; scores are read at that step.
    fusion_dir, seen_tasks: tasks in the fusion pool (fusion.json) or listed are "seen".
    parallel, ray_address, train_flags: as in fusion.cold_fusion.
  """
  output_dir = Path(output_dir).resolve()
  names = task_names(tasks)
  if not seeds:
    raise RecyclingError("EVAL_BASE_SEEDS is empty; give at least one seed, e.g. [0, 1, 2]")
  seen = _seen_tasks(fusion_dir, seen_tasks)
  if reference_checkpoint is None and fusion_dir is not None:
    reference_checkpoint = str(Path(fusion_dir) / "round_0" / "fused")
  models = {"base": base_checkpoint}
  if reference_checkpoint is not None:
    models["reference"] = reference_checkpoint
  train_flags = train_flags or launcher.TrainFlags(gin_files=())
  sources = {m: _model_source(m, c, output_dir) for m, c in models.items()}
  splits = {t: eval_split(t) for t in names}
  jobs, scores = [], {m: {t: [] for t in names} for m in models}
  for model, (initial, arch) in sources.items():
    for task in names:
      for seed in seeds:
        model_dir = output_dir / model / task / f"seed_{seed}"
        if fusion.is_done(model_dir):
          continue
        overrides = {"MODEL_DIR": str(model_dir), "MIXTURE_OR_TASK_NAME": task,
                     "INITIAL_CHECKPOINT_PATH": initial, "TRAIN_STEPS": finetune_steps,
                     "EVAL_PERIOD": finetune_steps, "SEED": seed}
        command = train_flags.command(overrides, bindings=[
            *arch, f"Evaluator.split={splits[task]!r}"])

        def on_done(model_dir=model_dir, task=task):
          score = run_score(model_dir, task=task, step=finetune_steps)
          atomic_files.write_json(model_dir / fusion.DONE, {"task": task, "score": score})
        jobs.append(launcher.TrainJob(command, model_dir / launcher.LOG_FILE, on_done=on_done))
  launcher.run_jobs(jobs, parallel=parallel, ray_address=ray_address)
  for model in models:
    for task in names:
      for seed in seeds:
        done = output_dir / model / task / f"seed_{seed}" / fusion.DONE
        scores[model][task].append(json.loads(done.read_text())["score"])
  table = report.recycling_table(scores, seen=seen)
  write_report(output_dir, table)
  print((output_dir / f"{REPORT_NAME}.md").read_text(), flush=True)
  return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
  del parser  # everything is gin: experiments/cold_fusion/eval_base.gin


def main(args: argparse.Namespace) -> int:
  """`recast eval-base --gin_file=models/... --gin_file=experiments/cold_fusion/eval_base.gin`."""
  # Not finalized: MODEL_DIR, the task and the seed are set per fine-tuning run.
  gin_files = gin_config.parse_run_flags(
      args, command="eval-base", finalize=False, example="--gin_file=models/t5_1_1/small.gin "
      "--gin_file=experiments/cold_fusion/eval_base.gin")
  evaluate_base(train_flags=launcher.TrainFlags(
      gin_files=gin_files, bindings=args.gin_bindings,
      gin_search_paths=args.gin_search_paths, tasks_files=args.tasks_file))
  return 0
