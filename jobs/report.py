"""`recast report MODEL_DIR...`: tables and plots of runs' results, from their metrics.jsonl.

Writes, atomically, to --out (default: MODEL_DIR/report for one run, ./report for several):

  report.md   the final and the best value of each task's metrics per run, with averages
  final.csv   rows: runs; columns: task/metric, then `average` and benchmark scores
  best.csv    the same with each column's best value over the evaluated steps
  plots/train_loss.png, plots/eval_<task>.png   training loss and eval metrics over steps

Columns are each task's inference metrics (accuracy, f1, ...); a task with none (a
pretraining task) shows its teacher-forced `loss`. `average` is the mean over tasks of each
task's mean metric; `glue_score` / `super_glue_score` (trainer/benchmark_scores.py) appear
when a run evaluated every task they need. A mixture's own aggregate rows are recomputed
here, not copied. "Best" is the maximum (the minimum for losses) per column, as T5 reports
it; the best benchmark score uses each group's best step (T5's `metric_group_max`).

    tables = build_tables({"mt": read_metrics("runs/mt"), "st": read_metrics("runs/st")})
    tables["final"].rows["mt"]["glue_rte/accuracy"]  # 61.4
    print(tables["final"].to_markdown())

Other commands (sweeps, fusion) call `build_tables` / `write_report` with their own runs;
sweeps and `recast eval-base` share `recycling_table` (gains over a reference model) and
`mean_std` (mean and sample std over seeds).
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import io
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from recast import atomic_files, errors, metrics_writer
from recast.trainer import benchmark_scores

TEACHER_FORCED = ("loss", "token_accuracy")
LOWER_IS_BETTER = ("loss",)
AVERAGE = "average"
MAJORITY_ROW = "majority class"  # the baseline row of every table
RANK_PREFIX = "rank_"  # rank-classification metrics (trainer.evaluation), not in `average`
EVAL_SPLIT = "validation"
# Rows the Evaluator writes under a mixture's name (recomputed here, so left out).
AGGREGATE_METRICS = (AVERAGE, *benchmark_scores.BENCHMARKS)

Series = dict[tuple[str, str], list[tuple[int, float]]]  # (task, metric) -> [(step, value)]


class ReportError(errors.UserError):
  """A run folder without results, or a report that cannot be written."""


@dataclasses.dataclass
class Table:
  """A results table: one row per run, one column per "task/metric" (then averages).

  `rows[run][column]` is a number or None (not evaluated); `steps[run][column]` the step
  the value comes from.
  """
  title: str
  columns: list[str]
  rows: dict[str, dict[str, Optional[float]]]
  steps: dict[str, dict[str, Optional[int]]]
  # The majority-class baseline by column (written by training runs), shown as a last row.
  baseline: dict[str, float] = dataclasses.field(default_factory=dict)

  def _all_rows(self) -> list[tuple[str, Mapping[str, Optional[float]]]]:
    extra = [(MAJORITY_ROW, self.baseline)] if self.baseline else []
    return list(self.rows.items()) + extra

  def to_csv(self) -> str:
    """`run,<columns>` then one line per run; empty cells for missing values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", *self.columns])
    for run, values in self._all_rows():
      writer.writerow([run, *("" if values.get(c) is None else repr(float(values[c]))
                              for c in self.columns)])
    return out.getvalue()

  def to_markdown(self, *, with_steps: bool = False) -> str:
    """A GitHub markdown table; `with_steps` adds "(@step)" to each cell."""
    lines = ["| run | " + " | ".join(self.columns) + " |",
             "|---|" + "---:|" * len(self.columns)]
    for run, values in self._all_rows():
      cells = []
      for column in self.columns:
        value, step = values.get(column), self.steps.get(run, {}).get(column)
        cell = "-" if value is None else f"{value:.4g}"
        if with_steps and value is not None and step is not None:
          cell += f" (@{step})"
        cells.append(cell)
      lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Tables


def eval_series(rows: Iterable[Mapping], *, split: str = EVAL_SPLIT) -> Series:
  """(task, metric) -> [(step, value)] sorted by step, from metrics.jsonl rows of `split`;
  a mixture's rows (its task has an `average` or benchmark score) and non-finite values
  are left out."""
  rows = [r for r in rows if r.get("split") == split and r.get("task")
          and r.get("value") is not None]
  aggregates = {r["task"] for r in rows if r["metric"] in AGGREGATE_METRICS}
  series: Series = collections.defaultdict(list)
  for row in rows:
    if row["task"] not in aggregates:
      series[(row["task"], row["metric"])].append((int(row["step"]), float(row["value"])))
  # Teacher-forced metrics only for tasks without an inference metric.
  scored = {task for task, metric in series if metric not in TEACHER_FORCED}
  return {key: sorted(values) for key, values in sorted(series.items())
          if key[1] not in TEACHER_FORCED or (key[0] not in scored and key[1] == "loss")}


def _best(values: Sequence[tuple[int, float]], metric: str) -> tuple[int, float]:
  pick = min if metric in LOWER_IS_BETTER else max
  return pick(values, key=lambda sv: (sv[1], -sv[0]) if pick is max else (sv[1], sv[0]))


def _averages(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """`average` (each task's mean metric, averaged over tasks: T5's GLUE-style average,
  which mixes metrics), `average/<metric>` for each metric two or more tasks report (one
  kind of number averaged), and the benchmark scores of {task: {metric: value}}."""
  decoded = lambda m: m not in TEACHER_FORCED and not m.startswith(RANK_PREFIX)
  scored = [np.mean([v for m, v in metrics.items() if decoded(m)])
            for metrics in per_task.values() if any(decoded(m) for m in metrics)]
  out = {AVERAGE: float(np.mean(scored))} if scored else {}
  by_metric = collections.defaultdict(list)
  for metrics in per_task.values():
    for metric, value in metrics.items():
      if metric not in TEACHER_FORCED:
        by_metric[metric].append(value)
  out.update({f"{AVERAGE}/{m}": float(np.mean(v)) for m, v in sorted(by_metric.items())
              if len(v) > 1})
  out.update(benchmark_scores.benchmark_scores(per_task))
  return out


def baseline_values(runs: Mapping[str, Iterable[Mapping]]) -> dict[str, float]:
  """"task/metric" -> the majority-class baseline the runs recorded (the first found)."""
  out: dict[str, float] = {}
  for rows in runs.values():
    for row in rows:
      if (row.get("split") == metrics_writer.BASELINE_SPLIT and row.get("task")
          and row.get("value") is not None):
        out.setdefault(f"{row['task']}/{row['metric']}", float(row["value"]))
  return out


def _best_benchmark_scores(series: Series) -> dict[str, tuple[float, Optional[int]]]:
  """Each benchmark score from each group's best step (groups are averaged at one step)."""
  out = {}
  for name, groups in benchmark_scores.BENCHMARKS.items():
    best_groups = []
    for members in groups.values():
      by_step = collections.defaultdict(list)
      for key in members:
        for step, value in series.get(key, []):
          by_step[step].append(value)
      complete = [np.mean(v) for v in by_step.values() if len(v) == len(members)]
      if not complete:
        break
      best_groups.append(max(complete))
    else:
      out[name] = (float(np.mean(best_groups)), None)
  return out


def build_tables(runs: Mapping[str, Iterable[Mapping]], *, split: str = EVAL_SPLIT
                 ) -> dict[str, Table]:
  """{"final": Table, "best": Table} from {run name: metrics.jsonl rows}.

  Final: each column's value at its last evaluated step. Best: its best value. Both end
  with `average` and, where defined, `glue_score` / `super_glue_score` per run.
  """
  series_by_run = {run: eval_series(rows, split=split) for run, rows in runs.items()}
  keys = sorted({key for series in series_by_run.values() for key in series})
  columns = [f"{task}/{metric}" for task, metric in keys]
  tables = {kind: Table(title=kind, columns=list(columns), rows={}, steps={})
            for kind in ("final", "best")}
  extra: list[str] = []
  for run, series in series_by_run.items():
    picked = {"final": {k: v[-1] for k, v in series.items()},
              "best": {k: _best(v, k[1]) for k, v in series.items()}}
    for kind, values in picked.items():
      row = {f"{t}/{m}": value for (t, m), (_, value) in values.items()}
      steps = {f"{t}/{m}": step for (t, m), (step, _) in values.items()}
      per_task: dict[str, dict[str, float]] = collections.defaultdict(dict)
      for (task, metric), (_, value) in values.items():
        per_task[task][metric] = value
      summary = {k: (v, None) for k, v in _averages(per_task).items()}
      if kind == "best":
        summary.update(_best_benchmark_scores(series))
      for name, (value, step) in summary.items():
        row[name], steps[name] = value, step
        if name not in extra:
          extra.append(name)
      tables[kind].rows[run] = row
      tables[kind].steps[run] = steps
  order = [AVERAGE, *benchmark_scores.BENCHMARKS]
  rank = lambda name: (order.index(name) if name in order else 0.5, name)  # average/<m> 2nd
  baseline = baseline_values(runs)
  if baseline:
    per_task = collections.defaultdict(dict)
    for column, value in baseline.items():
      if column in columns:
        task, metric = column.rsplit("/", 1)
        per_task[task][metric] = value
    baseline = {c: v for c, v in baseline.items() if c in columns}
    scored_tasks = {c.rsplit("/", 1)[0] for c in columns
                    if c.rsplit("/", 1)[1] not in TEACHER_FORCED}
    if scored_tasks <= set(per_task):  # averages only where every task has its baseline
      baseline.update({k: v for k, v in _averages(per_task).items() if k in extra})
  for table in tables.values():
    table.columns += sorted(extra, key=rank)
    table.baseline = dict(baseline)
  return tables


def run_names(model_dirs: Sequence[str | os.PathLike]) -> dict[str, Path]:
  """{short unique name: folder}: the folder's name, with parents added where two clash."""
  paths = [Path(p).resolve() for p in model_dirs]
  depth = 1
  while True:
    names = ["/".join(p.parts[-depth:]) for p in paths]
    if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
      return dict(zip(names, paths))
    depth += 1


def read_runs(model_dirs: Sequence[str | os.PathLike]) -> dict[str, list[dict]]:
  """{run name: metrics.jsonl rows}; ReportError for a folder with no metrics.jsonl."""
  runs = {}
  for name, path in run_names(model_dirs).items():
    if not (path / metrics_writer.METRICS_FILE).is_file():
      raise ReportError(f"{path} has no {metrics_writer.METRICS_FILE}; pass run folders "
                        "(the MODEL_DIR of `recast train` or `recast eval`)")
    runs[name] = metrics_writer.read_metrics(path)
  return runs


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
  """(mean, sample standard deviation) of per-seed values; std None for one value, both
  None for none.

  The std divides by n - 1 (ddof=1): the seeds are a sample of the run-to-run
  distribution, and the sample std estimates its spread (dividing by n underestimates it,
  most for the 2 or 3 seeds a study affords; one seed says nothing about it).

  >>> mean_std([60.0, 64.0])  # sqrt(((60 - 62)**2 + (64 - 62)**2) / 1)
  (62.0, 2.8284271247461903)
  """
  if not values:
    return None, None
  mean = float(np.mean(values))
  return mean, float(np.std(values, ddof=1)) if len(values) > 1 else None


def recycling_table(scores: Mapping[str, Mapping[str, Sequence[float]]], *,
                    seen: Sequence[str] = ()) -> dict:
  """The model-recycling table (ColD Fusion's) from {model: {task: [score per seed]}}.

  `scores` has "base" (the model judged) and optionally "reference" (the model gains are
  measured against). Returns {"rows": [{"task", "seen", "base", "base_std", "reference",
  "reference_std", "gain"}], "average": {"all"|"seen"|"unseen": {"tasks", "base",
  "reference", "gain"}}}: per base task, the mean over seeds and the sample std (see
  `mean_std`; None for one seed), `gain` = mean base - mean reference where the reference
  has the task; averages over the group's tasks (`reference` and `gain` over those the
  reference has, left out when it has none). E.g. {"base": {"rte": [60, 64]},
  "reference": {"rte": [58, 58]}} -> rte: base 62.0 +- 2.83, reference 58.0 +- 0.0,
  gain +4.0.
  """
  base, reference = scores.get("base", {}), scores.get("reference", {})
  rows = []
  for task in base:
    row = {"task": task, "seen": task in seen}
    row["base"], row["base_std"] = mean_std(base[task])
    if task in reference:
      row["reference"], row["reference_std"] = mean_std(reference[task])
      row["gain"] = row["base"] - row["reference"]
    rows.append(row)
  average = {}
  for group, keep in (("all", lambda r: True), ("seen", lambda r: r["seen"]),
                      ("unseen", lambda r: not r["seen"])):
    members = [r for r in rows if keep(r)]
    if not members:
      continue
    average[group] = {"tasks": len(members), "base": float(np.mean([r["base"] for r in members]))}
    compared = [r for r in members if "gain" in r]
    if compared:
      average[group]["reference"] = float(np.mean([r["reference"] for r in compared]))
      average[group]["gain"] = float(np.mean([r["gain"] for r in compared]))
  return {"rows": rows, "average": average}


# ------------------------------------------------------------------------------------------
# Plots


def save_png(figure, path: Path) -> None:
  """Saves a matplotlib figure atomically (temporary file, then rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
  os.close(fd)
  try:
    figure.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _safe_name(task: str) -> str:
  return "".join(c if c.isalnum() or c in "._-" else "_" for c in task)


def write_plots(runs: Mapping[str, Iterable[Mapping]], out_dir: str | os.PathLike, *,
                split: str = EVAL_SPLIT) -> list[Path]:
  """plots/train_loss.png (one line per run) and plots/eval_<task>.png (one panel per
  metric, one line per run, the majority-class baseline dashed); returns the files
  written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = {name: list(rows) for name, rows in runs.items()}
  plots = Path(out_dir) / "plots"
  written = []
  losses = {name: sorted((int(r["step"]), r["value"]) for r in rows
                         if r.get("split") == "train" and not r.get("task")
                         and r.get("metric") == "loss" and r.get("value") is not None)
            for name, rows in runs.items()}
  if any(losses.values()):
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in losses.items():
      if points:
        axis.plot(*zip(*points), marker=".", label=name)
    axis.set(xlabel="step", ylabel="training loss", title="training loss")
    axis.legend(fontsize="small")
    save_png(figure, plots / "train_loss.png")
    plt.close(figure)
    written.append(plots / "train_loss.png")
  series = {name: eval_series(rows, split=split) for name, rows in runs.items()}
  baseline = baseline_values(runs)
  tasks = sorted({task for s in series.values() for task, _ in s})
  for task in tasks:
    metrics = sorted({m for s in series.values() for t, m in s if t == task})
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5),
                                squeeze=False)
    for axis, metric in zip(axes[0], metrics):
      for name, s in series.items():
        if (task, metric) in s:
          axis.plot(*zip(*s[(task, metric)]), marker="o", label=name)
      if f"{task}/{metric}" in baseline:
        axis.axhline(baseline[f"{task}/{metric}"], color="gray", linestyle="--",
                     linewidth=1, label=MAJORITY_ROW)
      axis.set(xlabel="step", ylabel=metric, title=f"{task} {metric} ({split})")
      axis.legend(fontsize="small")
    figure.tight_layout()
    path = plots / f"eval_{_safe_name(task)}.png"
    save_png(figure, path)
    plt.close(figure)
    written.append(path)
  return written


# ------------------------------------------------------------------------------------------
# The report


def markdown_report(tables: Mapping[str, Table], *, runs: Mapping[str, Path],
                    plots: Sequence[Path] = (), out_dir: Optional[Path] = None) -> str:
  """report.md: the runs, the final and best tables, links to the plots."""
  lines = ["# Results", "", "Runs:", ""]
  lines += [f"- `{name}`: {path}" for name, path in runs.items()]
  lines += ["", "## Final (last evaluation)", "", tables["final"].to_markdown(),
            "## Best (over evaluations; @step)", "",
            tables["best"].to_markdown(with_steps=True)]
  notes = []
  if any(c == AVERAGE for c in tables["final"].columns):
    notes.append(f"`{AVERAGE}`: each task's mean decoded metric (rank_* metrics left out), "
                 "averaged over tasks (T5's GLUE-style average; it mixes metrics). "
                 f"`{AVERAGE}/<metric>`: one metric averaged over the tasks that report it.")
  if tables["final"].baseline:
    notes.append(f"`{MAJORITY_ROW}`: every validation example predicted as the split's most "
                 "common label, scored with the task's metrics (label tasks only).")
  if notes:
    lines += ["", *notes, ""]
  if plots:
    lines += ["## Plots", ""]
    for path in plots:
      shown = path.relative_to(out_dir) if out_dir else path
      lines.append(f"![{path.stem}]({shown})")
  return "\n".join(lines) + "\n"


def write_report(model_dirs: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike,
                 split: str = EVAL_SPLIT, plots: bool = True) -> dict[str, Table]:
  """Reads the runs and writes report.md, final.csv, best.csv and plots/ to `out_dir`
  (each file atomically). Returns the tables."""
  names = run_names(model_dirs)
  runs = read_runs(model_dirs)
  tables = build_tables(runs, split=split)
  if not tables["final"].columns:
    raise ReportError(f"no {split!r} metrics in {', '.join(map(str, names.values()))}; "
                      "evaluate during training (--gin.EVAL_PERIOD=N) or run `recast eval`")
  out_dir = Path(out_dir)
  written = write_plots(runs, out_dir, split=split) if plots else []
  for kind, table in tables.items():
    atomic_files.write_text(out_dir / f"{kind}.csv", table.to_csv())
  atomic_files.write_text(out_dir / "report.md", markdown_report(
      tables, runs=names, plots=written, out_dir=out_dir))
  return tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR",
                      help="run folders holding metrics.jsonl")
  parser.add_argument("--out", default=None,
                      help="output folder (default: MODEL_DIR/report for one run, "
                      "./report for several)")
  parser.add_argument("--split", default=EVAL_SPLIT, help="evaluation split (validation)")
  parser.add_argument("--no_plots", action="store_true", help="tables only")


def main(args: argparse.Namespace) -> int:
  """`recast report MODEL_DIR... [--out DIR]`: prints the final table, writes the report."""
  from recast.jobs import study_report  # a study folder: the study's report
  if len(args.model_dirs) == 1 and study_report.is_study_dir(args.model_dirs[0]):
    out = study_report.write_study_report(args.model_dirs[0], out_dir=args.out,
                                          plots=not args.no_plots)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} (summary.csv, curves_<task>.png)")
    return 0
  out = Path(args.out) if args.out else (
      Path(args.model_dirs[0]) / "report" if len(args.model_dirs) == 1 else Path("report"))
  tables = write_report(args.model_dirs, out_dir=out, split=args.split,
                        plots=not args.no_plots)
  print(tables["final"].to_markdown())
  print(f"report: {out / 'report.md'} (final.csv, best.csv, plots/)")
  return 0
