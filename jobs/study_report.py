"""The report of a study (recast.jobs.study): does each arm beat the reference arm?

Written into <study>/report/ at the end of `recast study` and by `recast report STUDY_DIR`:

- summary.csv: one row per (arm, task, metric): seeds, mean, sample std, a 95% interval
  of the mean (t distribution over seeds), the paired difference from the reference arm
  (paired by seed and task: mean, its 95% interval, how many seeds agree in sign with the
  mean difference) and the task's majority-class baseline;
- report.md: the same as arms x tasks tables;
- curves_<task>.png: the metric over steps, one line per arm (mean over seeds), the
  majority-class baseline dashed.

The compared metric of a task is the study's `metric:`, else the task's first decoded
validation metric (e.g. accuracy); its rank-classification twin (`rank_accuracy`,
trainer.evaluation) is reported beside it when the runs have it. A run's value is the
metric at its last evaluation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from recast import atomic_files, errors, metrics_writer
from recast.trainer import benchmark_scores

STUDY_FILE = "study.json"
REPORT_DIR = "report"
# As recast.jobs.report reads metrics.jsonl (which imports this module for study folders).
EVAL_SPLIT = "validation"
RANK_PREFIX = "rank_"
MAJORITY_ROW = "majority class"
# With two or more tasks: per seed, the mean over tasks of each task's metric (as GLUE's score).
AVERAGE = "average"
NOT_DECODED = ("loss", "token_accuracy", "average", *benchmark_scores.BENCHMARKS)
COLUMNS = ("arm", "task", "metric", "seeds", "mean", "std", "ci95_low", "ci95_high",
           "diff_mean", "diff_ci95_low", "diff_ci95_high", "diff_agree", "diff_pairs",
           "baseline")


class StudyReportError(errors.UserError):
  """A study folder whose runs cannot be reported yet."""


def is_study_dir(path: str | os.PathLike) -> bool:
  return (Path(path) / STUDY_FILE).is_file()


def interval(values: Sequence[float]) -> tuple[Optional[float], Optional[float],
                                                  Optional[float], Optional[float]]:
  """(mean, sample std, 95% interval low, high) of per-seed values: mean +- t(0.975, n-1)
  * std / sqrt(n). std and the interval are None for one value.

  >>> [round(v, 3) for v in interval([0.6, 0.7, 0.8])]
  [0.7, 0.1, 0.452, 0.948]
  """
  from scipy import stats
  if not values:
    return None, None, None, None
  mean = float(np.mean(values))
  if len(values) < 2:
    return mean, None, None, None
  std = float(np.std(values, ddof=1))  # the sample std: seeds sample the run-to-run spread
  half = float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
  return mean, std, mean - half, mean + half


def _decoded_metrics(rows: Sequence[Mapping], task: str) -> list[str]:
  seen = []
  for row in rows:
    if (row["split"] == EVAL_SPLIT and row["task"] == task
        and row["metric"] not in NOT_DECODED and not row["metric"].startswith(
            RANK_PREFIX) and row["metric"] not in seen):
      seen.append(row["metric"])
  return seen


def _final(rows: Sequence[Mapping], task: str, metric: str) -> Optional[float]:
  """The value at the run's last evaluation of (task, metric)."""
  best_step, value = -1, None
  for row in rows:
    if (row["split"] == EVAL_SPLIT and row["task"] == task and row["metric"] == metric
        and row["value"] is not None and int(row["step"]) >= best_step):
      best_step, value = int(row["step"]), float(row["value"])
  return value


def _curve(rows: Sequence[Mapping], task: str, metric: str) -> dict[int, float]:
  return {int(r["step"]): float(r["value"]) for r in rows
          if r["split"] == EVAL_SPLIT and r["task"] == task and r["metric"] == metric
          and r["value"] is not None}


def _baseline(runs_rows: Sequence[Sequence[Mapping]], task: str, metric: str
              ) -> Optional[float]:
  for rows in runs_rows:
    for row in rows:
      if (row["split"] == metrics_writer.BASELINE_SPLIT and row["task"] == task
          and row["metric"] == metric and row["value"] is not None):
        return float(row["value"])
  return None


def read_study(study_dir: str | os.PathLike) -> dict:
  """{"study": study.json, "arms": {arm: [{"run", "seed", "rows"}]}}: each arm's runs with
  their metrics.jsonl rows."""
  study_dir = Path(study_dir)
  if not is_study_dir(study_dir):
    raise StudyReportError(f"{study_dir} is not a study folder (no {STUDY_FILE}); run "
                           "`recast study SPEC.yaml` first")
  study = json.loads((study_dir / STUDY_FILE).read_text())
  if not study.get("arms"):
    raise StudyReportError(f"{study_dir}: the study declares no arms: add arms: and "
                           "reference: to its spec to compare runs")
  arms = {}
  for arm in study.get("arm_order") or study["arms"]:
    selection = study["arms"][arm]
    stage = study["stages"][selection["stage"]]
    by_name = {r["name"]: r for r in stage["runs"]}
    members = []
    for name in selection["runs"]:
      run = by_name[name]
      seed_axis = stage.get("seed_axis")
      members.append({"run": name, "seed": run["point"].get(seed_axis) if seed_axis else 0,
                      "rows": metrics_writer.read_metrics(study_dir / run["model_dir"])})
    arms[arm] = members
  return {"study": study, "arms": arms}


def _arm_rows(task: str, metric: str, per_arm: Mapping[str, Mapping[Any, float]],
              baseline: Optional[float], reference: str) -> list[dict]:
  """summary.csv rows of one (task, metric): each arm's interval over seeds and its paired
  difference from the reference arm."""
  out = []
  for arm, values in per_arm.items():
    if not values:
      continue
    mean, std, low, high = interval(list(values.values()))
    row = {"arm": arm, "task": task, "metric": metric, "seeds": len(values), "mean": mean,
           "std": std, "ci95_low": low, "ci95_high": high, "baseline": baseline}
    if arm != reference and per_arm.get(reference):
      seeds = [s for s in values if s in per_arm[reference]]
      # Rounded to 1e-9: a difference that is float noise (a mean of +x and -x) is 0.
      diffs = [round(values[s] - per_arm[reference][s], 9) for s in seeds]
      if diffs:
        d_mean, _, d_low, d_high = interval(diffs)
        d_mean = round(d_mean, 9)
        sign = np.sign(d_mean)
        row.update(diff_mean=d_mean, diff_ci95_low=d_low, diff_ci95_high=d_high,
                   diff_agree=int(sum(np.sign(d) == sign for d in diffs)),
                   diff_pairs=len(diffs))
    out.append(row)
  return out


def summarize(study_dir: str | os.PathLike) -> dict:
  """The report's numbers: {"rows": [summary.csv rows], "curves": {task: {metric: {arm:
  {step: mean over seeds}}}}, "tasks", "metrics": {task: [metric, rank twin]}, "reference"}."""
  data = read_study(study_dir)
  study, arms = data["study"], data["arms"]
  reference = study["reference"]
  all_rows = [m["rows"] for members in arms.values() for m in members]
  tasks = []
  for rows in all_rows:
    for row in rows:
      if (row["split"] == EVAL_SPLIT and row["task"] and row["task"] not in tasks
          and row["task"] != AVERAGE  # a fusion run's own average row: recomputed below
          and _decoded_metrics(rows, row["task"])):
        tasks.append(row["task"])
  if not tasks:
    raise StudyReportError(f"{study_dir}: no run of the arms has decoded validation metrics "
                           "yet; evaluate during training (EVAL_PERIOD) and let runs finish")
  metrics = {}
  for task in tasks:
    first = study.get("metric") or next(m for rows in all_rows
                                        for m in _decoded_metrics(rows, task))
    twin = f"{RANK_PREFIX}{first}"
    has_twin = any(_final(rows, task, twin) is not None for rows in all_rows)
    metrics[task] = [first] + ([twin] if has_twin else [])
  out_rows, curves, values_by = [], {}, {}
  for task in tasks:
    for kind, metric in enumerate(metrics[task]):
      baseline = _baseline(all_rows, task, metric)
      per_arm = {}
      for arm, members in arms.items():
        values = {}
        for m in members:
          value = _final(m["rows"], task, metric)
          if value is not None:
            if m["seed"] in values:
              raise StudyReportError(f"arm {arm} has two runs with seed {m['seed']} on "
                                     f"{task}; select one run per seed and task in arms:")
            values[m["seed"]] = value
        per_arm[arm] = values
        steps: dict[int, list[float]] = {}
        for m in members:
          for step, value in _curve(m["rows"], task, metric).items():
            steps.setdefault(step, []).append(value)
        curves.setdefault(task, {}).setdefault(metric, {})[arm] = {
            s: float(np.mean(v)) for s, v in sorted(steps.items())}
      values_by[(task, kind)] = (per_arm, baseline)
      out_rows += _arm_rows(task, metric, per_arm, baseline, reference)
  # The benchmark-style score: per seed, the mean over the tasks the reference arm is
  # scored on (a ColD Fusion arm's seen tasks are not among a recycling reference's).
  averaged = [t for t in tasks if values_by[(t, 0)][0].get(reference)] or tasks
  if len(averaged) > 1:
    average_metrics = []
    for kind, name in enumerate((AVERAGE, RANK_PREFIX + AVERAGE)):
      if not all(len(metrics[t]) > kind for t in averaged):
        continue
      average_metrics.append(name)
      per_arm = {}
      for arm in arms:
        by_task = [values_by[(t, kind)][0][arm] for t in averaged]
        seeds = [s for s in by_task[0] if all(s in v for v in by_task)]
        per_arm[arm] = {s: float(np.mean([v[s] for v in by_task])) for s in seeds}
        task_curves = [curves[t][metrics[t][kind]][arm] for t in averaged]
        curves.setdefault(AVERAGE, {}).setdefault(name, {})[arm] = {
            step: float(np.mean([c[step] for c in task_curves])) for step in task_curves[0]
            if all(step in c for c in task_curves)}
      baselines = [values_by[(t, kind)][1] for t in averaged]
      baseline = None if None in baselines else float(np.mean(baselines))
      out_rows += _arm_rows(AVERAGE, name, per_arm, baseline, reference)
    metrics[AVERAGE] = average_metrics
    tasks = tasks + [AVERAGE]
  return {"rows": out_rows, "curves": curves, "tasks": tasks, "metrics": metrics,
          "reference": reference, "arms": list(arms), "name": study.get("name"),
          "averaged": averaged if AVERAGE in tasks else []}


def _number(value: Any, digits: int = 4) -> str:
  return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _cell(row: Optional[Mapping]) -> str:
  if row is None:
    return ""
  text = _number(row["mean"])
  if row["std"] is not None:
    text += f" ± {_number(row['std'], 3)} [{_number(row['ci95_low'])}, " \
            f"{_number(row['ci95_high'])}]"
  return text + f" (n={row['seeds']})"


def _diff_cell(row: Optional[Mapping]) -> str:
  if row is None or row.get("diff_mean") is None:
    return ""
  text = f"{row['diff_mean']:+.4g}"
  if row.get("diff_ci95_low") is not None:
    text += f" [{row['diff_ci95_low']:+.4g}, {row['diff_ci95_high']:+.4g}]"
  return text + f"; {row['diff_agree']} of {row['diff_pairs']} seeds agree in sign"


def markdown(summary: Mapping, plots: Sequence[Path] = ()) -> str:
  """report.md: per metric an arms x tasks table, the paired differences, the baseline."""
  rows = {(r["arm"], r["task"], r["metric"]): r for r in summary["rows"]}
  lines = [f"# Study {summary['name']}", "",
           f"Reference arm: `{summary['reference']}`. Each cell: mean ± sample std over "
           "seeds [95% interval, t distribution] (n seeds), at each run's last evaluation.",
           ""]
  kinds = sorted({i for ms in summary["metrics"].values() for i in range(len(ms))})
  for kind in kinds:
    tasks = [t for t in summary["tasks"] if len(summary["metrics"][t]) > kind]
    label = "decoded" if kind == 0 else "rank classification"
    header = ["average over tasks" if t == AVERAGE else f"{t} ({summary['metrics'][t][kind]})"
              for t in tasks]
    lines += [f"## Validation, {label}", "", "| arm | " + " | ".join(header) + " |",
              "|---|" + "---|" * len(tasks)]
    for arm in summary["arms"]:
      lines.append(f"| {arm} | " + " | ".join(
          _cell(rows.get((arm, t, summary["metrics"][t][kind]))) for t in tasks) + " |")
    base = [next((rows[(a, t, summary["metrics"][t][kind])] for a in summary["arms"]
                  if (a, t, summary["metrics"][t][kind]) in rows), None) for t in tasks]
    lines.append(f"| {MAJORITY_ROW} | " + " | ".join(
        _number(b["baseline"]) if b else "" for b in base) + " |")
    if AVERAGE in tasks and summary.get("averaged"):
      lines += ["", f"Average over tasks: per seed, the mean over "
                f"{', '.join(summary['averaged'])} (the tasks `{summary['reference']}` is "
                "scored on)."]
    lines += ["", f"Paired difference from `{summary['reference']}` (same seed and task): "
              "mean [95% interval]; seeds agreeing in sign with the mean", "",
              "| arm | " + " | ".join(header) + " |", "|---|" + "---|" * len(tasks)]
    for arm in summary["arms"]:
      if arm == summary["reference"]:
        continue
      lines.append(f"| {arm} | " + " | ".join(
          _diff_cell(rows.get((arm, t, summary["metrics"][t][kind]))) for t in tasks) + " |")
    lines.append("")
  if plots:
    lines += ["## Learning curves", ""] + [f"![{p.stem}]({p.name})" for p in plots]
  return "\n".join(lines) + "\n"


def write_curves(summary: Mapping, out_dir: Path) -> list[Path]:
  """curves_<task>.png: each metric over steps, a line per arm (mean over seeds), the
  majority-class baseline dashed."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  baselines = {(r["task"], r["metric"]): r["baseline"] for r in summary["rows"]}
  written = []
  for task in summary["tasks"]:
    metrics = summary["metrics"][task]
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
      for arm, curve in summary["curves"][task][metric].items():
        if curve:
          axis.plot(list(curve), list(curve.values()), marker="o", markersize=3, label=arm)
      if baselines.get((task, metric)) is not None:
        axis.axhline(baselines[(task, metric)], linestyle="--", color="gray",
                     label=MAJORITY_ROW)
      axis.set(xlabel="step", ylabel=f"validation {metric} (mean over seeds)",
               title=f"{task}: {metric}")
      axis.legend(fontsize=8)
    path = out_dir / f"curves_{re.sub(r'[^A-Za-z0-9._-]+', '_', task)}.png"
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_files.write_bytes(path, buffer.getvalue())
    plt.close(figure)
    written.append(path)
  return written


def write_study_report(study_dir: str | os.PathLike, *, out_dir: Optional[str | os.PathLike]
                       = None, plots: bool = True) -> Path:
  """summary.csv, report.md and curves_<task>.png into `out_dir` (default
  <study>/report), each written atomically. Returns the folder."""
  out = Path(out_dir) if out_dir else Path(study_dir) / REPORT_DIR
  summary = summarize(study_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = write_curves(summary, out) if plots else []
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
  writer.writeheader()
  for row in summary["rows"]:
    writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in COLUMNS})
  atomic_files.write_text(out / "summary.csv", buffer.getvalue())
  atomic_files.write_text(out / "report.md", markdown(summary, written))
  return out
