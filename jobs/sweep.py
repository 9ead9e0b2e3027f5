"""`recast sweep SPEC`: a grid of `recast train` runs scheduled by Ray Tune, and its tables.

A sweep spec is YAML. Every point of the grid is one trial: a full `recast train` run (with
evaluation when EVAL_PERIOD is set) in a fresh process, MODEL_DIR = <storage>/<name>/runs/
<trial>. For example (gin values are written as on the command line):

    name: lr_seed
    gin_files: [models/t5_1_1/small.gin, runs/finetune.gin]
    bindings:                      # every trial
      MIXTURE_OR_TASK_NAME: glue_rte
      TASK_FEATURE_LENGTHS: {inputs: 256, targets: 8}
      TRAIN_STEPS: 2000
    grid:                          # cartesian axes: 2 x 3 = 6 points ...
      LEARNING_RATE: [0.001, 0.0003]
      SEED: [0, 1, 2]
    points:                        # ... crossed with explicit points: 12 trials
      - {gin_file: models/t5_1_1/small.gin}             # `gin_file`: a per-point gin file
      - {gin_file: models/t5_1_1/base.gin, BATCH_SIZE: 64}
    resources_per_trial: {gpu: 1, cpu: 4}
    max_concurrent_trials: 8
    storage_path: /shared/sweeps
    baseline: {gin_file: models/t5_1_1/small.gin}       # for the recycling table

Everything that can reject the spec (unknown keys, gin bindings gin does not know, an empty
grid, a missing task) is checked in the driver before Ray starts. A killed trial process is
retried by Tune (`max_failures`) and the trainer resumes its MODEL_DIR from the newest
checkpoint; the process itself (argv, GPU isolation, log) is recast.jobs.launcher's, as
fusion's and eval-base's are. A trial that finishes writes `sweep_done.json` into its
MODEL_DIR; `--resume` runs only the trials without one, so a killed driver loses nothing
but unsaved steps.
Results go to <storage>/<name>/results: trials, groups (mean and std over seeds) and
recycling (gain over the baseline per task) as CSV and markdown, and PNG plots.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import difflib
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import yaml

from recast import atomic_files, errors, gin_config, metrics_writer, run_lock
from recast.jobs import launcher, multihost, report
from recast.mixtures import lookup
from recast.tasks import task_files
from recast.trainer import checkpoints, train

SPEC_KEYS = {
    "name": "the sweep's folder under storage_path (default: the spec file's name)",
    "gin_files": "gin files of every trial, in order (e.g. a model and a run file)",
    "gin_search_paths": "folders searched for gin files",
    "tasks_files": "declarative task files every trial registers",
    "bindings": "{NAME: VALUE} gin bindings of every trial",
    "grid": "{NAME: [values]}: cartesian axes over gin bindings (or gin_file)",
    "points": "[{NAME: VALUE, ...}]: explicit points, crossed with the grid",
    "resources_per_trial": "{gpu: N, cpu: N} reserved for each trial",
    "max_concurrent_trials": "at most this many trials at once (default: as resources allow)",
    "max_failures": "retries of a failed trial, each resuming its checkpoint (default 3)",
    "storage_path": "folder (shared on a cluster) for runs and results (default ./sweeps)",
    "baseline": "{axis: value}: the row the recycling table measures gains against",
    "metric": "the per-task metric of the recycling table (default accuracy)",
    "env": "{VAR: value} environment of every trial process",
    "launch": "{num_hosts: N, gpus_per_host: N, ...}: each trial is one job over N hosts "
              "(recast.jobs.multihost; resources_per_trial is then unused)",
}
GIN_FILE_AXIS = "gin_file"
TASK_AXES = ("MIXTURE_OR_TASK_NAME", "train.mixture_or_task_name")
DONE_FILE = "sweep_done.json"
# Macros each trial command must bind (a study's fuse stage runs `recast fuse`).
REQUIRED_MACROS = {"train": train.REQUIRED_MACROS, "fuse": ("FUSION_DIR", "CONTRIBUTOR_POOL")}
ATTEMPTS_FILE = "sweep_attempts.jsonl"
# A `recast train` that exits with errors.USAGE_EXIT rejected its input (bad gin, too many
# examples truncated, ...); the same input fails the same way, so the trial is not retried:
# REJECTED_FILE records the message and the trial counts as failed.
REJECTED_FILE = "sweep_rejected.json"
LOG_FILE = launcher.LOG_FILE
SWEEP_FILE = "sweep.json"
UNTABULATED_METRICS = ("examples_per_second", "tokens_per_second", "steps_per_second",
                       "learning_rate")


class SweepSpecError(errors.UserError):
  """A sweep spec that cannot run as written; nothing has started."""


# ------------------------------------------------------------------------------------------
# The spec


@dataclasses.dataclass(frozen=True)
class Trial:
  """One point of the grid: a `recast train` run.

  `point` maps each axis to its YAML value; `bindings` are gin strings ("NAME=VALUE"):
  the spec's, the point's and MODEL_DIR.
  """
  index: int
  name: str
  point: dict
  gin_files: tuple
  bindings: tuple
  model_dir: str
  command: str = "train"  # or "fuse" (a study's ColD Fusion stage: FUSION_DIR = model_dir)

  def train_command(self, spec: "SweepSpec") -> list[str]:
    """`python -m recast train ...` (or `fuse`) for this trial (launcher.TrainFlags)."""
    flags = launcher.TrainFlags(gin_files=self.gin_files, gin_search_paths=spec.gin_search_paths,
                                tasks_files=spec.tasks_files, cwd=spec.cwd)
    return flags.command(bindings=self.bindings, subcommand=self.command)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """A parsed, path-resolved sweep spec (see the module docstring)."""
  name: str
  gin_files: tuple
  gin_search_paths: tuple
  tasks_files: tuple
  bindings: tuple          # "NAME=VALUE" gin strings
  axes: dict               # axis -> list of YAML values (cartesian)
  points: tuple            # explicit points (dicts), crossed with the axes
  resources: dict          # {"cpu": float, "gpu": float}
  max_concurrent_trials: Optional[int]
  max_failures: int
  storage_path: str
  baseline: Optional[dict]
  metric: str
  env: dict
  cwd: str
  launch: Optional[multihost.LaunchSpec] = None  # each trial a multi-host job

  @property
  def experiment_dir(self) -> Path:
    return Path(self.storage_path) / self.name

  @property
  def axis_names(self) -> list[str]:
    """Every axis, explicit points' first, in spec order."""
    names = []
    for point in self.points:
      names += [k for k in point if k not in names]
    return names + [k for k in self.axes if k not in names]

  @property
  def seed_axis(self) -> Optional[str]:
    return next((a for a in self.axis_names if _is_seed_axis(a)), None)

  def trials(self) -> list[Trial]:
    """The grid's points in order: each explicit point crossed with the cartesian axes."""
    combos = [dict(zip(self.axes, values)) for values in
              itertools.product(*self.axes.values())]
    trials = []
    for index, (point, combo) in enumerate(itertools.product(self.points or ({},), combos)):
      values = {**point, **combo}
      values = {axis: values[axis] for axis in self.axis_names if axis in values}
      name = trial_name(index, values)
      model_dir = str(self.experiment_dir / "runs" / name)
      gin_files = self.gin_files
      if GIN_FILE_AXIS in values:  # The model file first, as T5X orders them.
        gin_files = (_resolve_gin_file(values[GIN_FILE_AXIS], self.cwd),) + gin_files
      bindings = self.bindings + tuple(
          gin_binding(k, v) for k, v in values.items() if k != GIN_FILE_AXIS)
      trials.append(Trial(index=index, name=name, point=values, gin_files=gin_files,
                          bindings=bindings + (gin_binding("MODEL_DIR", model_dir),),
                          model_dir=model_dir))
    return trials


def gin_binding(name: str, value: Any) -> str:
  """"NAME=VALUE" for a YAML value, read as `--gin.NAME=VALUE` is on the command line.

  >>> gin_binding("MIXTURE_OR_TASK_NAME", "glue_rte"), gin_binding("LEARNING_RATE", "1e-3")
  ("MIXTURE_OR_TASK_NAME='glue_rte'", 'LEARNING_RATE=1e-3')
  >>> gin_binding("TASK_FEATURE_LENGTHS", {"inputs": 32})
  "TASK_FEATURE_LENGTHS={'inputs': 32}"
  """
  text = value if isinstance(value, str) else repr(value)
  return gin_config.split_gin_bindings([f"--gin.{name}={text}"])[1][0]


def _is_seed_axis(axis: str) -> bool:
  return axis.split(".")[-1].lower() == "seed"


def trial_name(index: int, point: Mapping[str, Any]) -> str:
  """`003_LEARNING_RATE=0.001,SEED=1`: stable for a spec, safe as a folder name."""
  parts = [f"{axis.split('.')[-1]}={_short_value(v)}" for axis, v in point.items()]
  text = re.sub(r"[^A-Za-z0-9._=,+-]+", "-", ",".join(parts))[:120]
  return f"{index:03d}_{text}" if text else f"{index:03d}"


def _short_value(value: Any) -> str:
  if isinstance(value, str) and value.endswith(".gin"):
    return value[:-4].replace("/", "-")
  return str(value)


def _resolve_path(path: str, cwd: str) -> str:
  path = os.path.expanduser(str(path))
  return path if os.path.isabs(path) else os.path.normpath(os.path.join(cwd, path))


def _resolve_gin_file(name: str, cwd: str) -> str:
  """Absolute when it exists relative to `cwd`; else as written (found on search paths)."""
  candidate = _resolve_path(name, cwd)
  return candidate if os.path.exists(candidate) else str(name)


def load_spec(path: str | os.PathLike, *, extra_gin_files: Sequence[str] = (),
              extra_bindings: Sequence[str] = (), extra_tasks_files: Sequence[str] = (),
              extra_search_paths: Sequence[str] = (), cwd: Optional[str] = None) -> SweepSpec:
  """Reads and checks a sweep spec's shape (keys, types, an empty grid, the baseline).

  `extra_*` come from the command line (`--gin_file`, `--gin.NAME=VALUE`, ...) and apply to
  every trial. Relative paths are relative to `cwd` (the working directory). Gin itself
  is checked by `validate_trials`.
  """
  path = Path(path)
  cwd = cwd or os.getcwd()
  if not path.is_file():
    raise SweepSpecError(f"sweep spec {path} not found")
  try:
    raw = yaml.safe_load(path.read_text()) or {}
  except yaml.YAMLError as e:
    raise SweepSpecError(f"{path} is not valid YAML: {e}") from None
  return parse_spec(raw, path, extra_gin_files=extra_gin_files, extra_bindings=extra_bindings,
                    extra_tasks_files=extra_tasks_files, extra_search_paths=extra_search_paths,
                    cwd=cwd)


def parse_spec(raw: Any, path: Path, *, extra_gin_files: Sequence[str] = (),
               extra_bindings: Sequence[str] = (), extra_tasks_files: Sequence[str] = (),
               extra_search_paths: Sequence[str] = (), cwd: Optional[str] = None) -> SweepSpec:
  """`load_spec` of an already read spec mapping `raw` (recast.jobs.study's stages);
  `path` names it in errors and gives the default name."""
  cwd = cwd or os.getcwd()
  if not isinstance(raw, dict):
    raise SweepSpecError(f"{path}: a sweep spec is a YAML mapping with keys "
                         f"{', '.join(SPEC_KEYS)}")
  unknown = sorted(set(raw) - set(SPEC_KEYS))
  if unknown:
    hints = [f"{k!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
        k, SPEC_KEYS, n=1)) else "") for k in unknown]
    raise SweepSpecError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(hints)}; a spec has: " +
                         "; ".join(f"{k}: {v}" for k, v in SPEC_KEYS.items()))

  def strings(key):
    value = raw.get(key) or []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
      raise SweepSpecError(f"{path}: {key} must be a list of paths")
    return value

  def mapping(key):
    value = raw.get(key) or {}
    if not isinstance(value, dict):
      raise SweepSpecError(f"{path}: {key} must be a mapping ({SPEC_KEYS[key]})")
    return value

  axes = mapping("grid")
  for axis, values in axes.items():
    if not isinstance(values, list):
      raise SweepSpecError(f"{path}: grid axis {axis} needs a list of values, got "
                           f"{values!r}; write {axis}: [{values!r}] or move it to bindings")
  points = raw.get("points") or []
  if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
    raise SweepSpecError(f"{path}: points must be a list of mappings, e.g. "
                         "[{LEARNING_RATE: 0.001, BATCH_SIZE: 64}]")
  empty = [a for a, v in axes.items() if not v]
  if empty or (not axes and not points) or any(not p for p in points):
    what = (f"grid axis {', '.join(empty)} has no values" if empty else
            "a point is empty" if any(not p for p in points) else "it has no grid and no points")
    raise SweepSpecError(f"{path}: the grid is empty ({what}); give grid axes with values, "
                         "e.g. grid: {SEED: [0, 1]}, or a list of points")
  fixed = mapping("bindings")
  point_axes = {k for p in points for k in p}
  for axis in sorted(point_axes | set(axes)):
    if axis in fixed:
      raise SweepSpecError(f"{path}: {axis} is both in bindings and an axis; keep one")
    if axis != GIN_FILE_AXIS and not re.fullmatch(r"[A-Za-z_][\w./]*", axis):
      raise SweepSpecError(f"{path}: axis {axis!r} is not a gin name (MACRO or "
                           "configurable.parameter) nor gin_file")
  both = sorted(point_axes & set(axes))
  if both:
    raise SweepSpecError(f"{path}: {', '.join(both)} is both a grid axis and in points")
  clash = sorted({gin_config.binding_name(b) for b in extra_bindings} &
                 (point_axes | set(axes)))
  if clash:
    raise SweepSpecError(f"--gin.{clash[0]} sets a grid axis of {path}; change the spec")

  resources = mapping("resources_per_trial")
  if set(resources) - {"cpu", "gpu"} or not all(
      isinstance(v, (int, float)) and v >= 0 for v in resources.values()):
    raise SweepSpecError(f"{path}: resources_per_trial takes non-negative numbers for cpu "
                         f"and gpu, got {resources}")
  resources = {"cpu": float(resources.get("cpu", 1)), "gpu": float(resources.get("gpu", 0))}
  gpu = resources["gpu"]
  if gpu > 1 and gpu != int(gpu):
    raise SweepSpecError(f"{path}: resources_per_trial.gpu {gpu} must be a whole number "
                         "above 1 (or a fraction of one GPU below it)")
  concurrent = raw.get("max_concurrent_trials")
  failures = raw.get("max_failures", 3)
  for key, value in (("max_concurrent_trials", concurrent), ("max_failures", failures)):
    if value is not None and (not isinstance(value, int) or value < 0):
      raise SweepSpecError(f"{path}: {key} must be a non-negative integer, got {value!r}")
  env = {str(k): str(v) for k, v in mapping("env").items()}
  name = str(raw.get("name") or path.stem)
  if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
    raise SweepSpecError(f"{path}: name {name!r} must be a folder name "
                         "(letters, digits, . _ + -)")
  spec = SweepSpec(
      name=name,
      gin_files=tuple(_resolve_gin_file(f, cwd) for f in strings("gin_files") +
                      list(extra_gin_files)),
      gin_search_paths=tuple(",".join(_resolve_path(p, cwd) for p in entry.split(",") if p)
                             for entry in strings("gin_search_paths") +
                             list(extra_search_paths)),
      tasks_files=tuple(_resolve_path(t, cwd) for t in strings("tasks_files") +
                        list(extra_tasks_files)),
      bindings=tuple(gin_binding(k, v) for k, v in fixed.items()) + tuple(extra_bindings),
      axes=axes, points=tuple(points), resources=resources,
      max_concurrent_trials=concurrent, max_failures=failures,
      storage_path=_resolve_path(raw.get("storage_path") or "sweeps", cwd),
      baseline=mapping("baseline") or None, metric=str(raw.get("metric") or "accuracy"),
      env=env, cwd=cwd, launch=_launch(raw.get("launch"), path))
  _check_baseline(spec, path)
  return spec


def _launch(block: Any, path: Path) -> Optional[multihost.LaunchSpec]:
  """The spec's `launch:` block (multihost.LAUNCH_KEYS); None without one."""
  if block is None:
    return None
  if not isinstance(block, dict):
    raise SweepSpecError(f"{path}: launch must be a mapping, e.g. "
                         "{num_hosts: 2, gpus_per_host: 8}")
  try:
    return multihost.launch_spec(block, where=f"{path}: launch")
  except multihost.MultihostError as e:
    raise SweepSpecError(str(e) if str(e).startswith(str(path)) else
                         f"{path}: launch: {e}") from None


def trial_resources(spec: SweepSpec) -> Any:
  """What Tune reserves per trial: resources_per_trial, or with a `launch:` block one
  placement group of num_hosts bundles (all or none), the trial's driver in no bundle."""
  if spec.launch is None:
    return dict(spec.resources)
  from ray import tune
  return tune.PlacementGroupFactory([{}] + [spec.launch.bundle()] * spec.launch.num_hosts,
                                    strategy=spec.launch.placement_strategy)


def _check_baseline(spec: SweepSpec, path: Path) -> None:
  if spec.baseline is None:
    return
  row_axes = [a for a in spec.axis_names if not _is_seed_axis(a) and a not in TASK_AXES]
  bad = [a for a in spec.baseline if a not in row_axes]
  if bad:
    raise SweepSpecError(f"{path}: baseline names {', '.join(bad)}, which is not a grid axis "
                         f"(seed and task axes excluded); axes: {', '.join(row_axes)}")
  matches = [t for t in spec.trials() if all(t.point.get(a) == v for a, v in
                                             spec.baseline.items())]
  if not matches:
    raise SweepSpecError(f"{path}: no point of the grid has baseline {spec.baseline}")


def trial_task_names() -> list[str]:
  """The tasks the parsed gin config trains on: MIXTURE_OR_TASK_NAME, or a fusion's pool
  (cold_fusion.pool, usually %CONTRIBUTOR_POOL)."""
  name = gin_config.macro_value("MIXTURE_OR_TASK_NAME", None)
  pool = gin_config.parameter_value("cold_fusion.pool", None)  # (check_trial_lengths's)
  names = [name] if isinstance(name, str) else []
  if isinstance(pool, (list, tuple)):
    names += [n for n in pool if isinstance(n, str) and n not in names]
  return names


def parse_trial_gin(spec: SweepSpec, trial: Trial) -> None:
  """Parses a trial's gin as its `recast train` (or `fuse`) process opens it, unfinalized;
  it rejects a macro binding nothing reads (gin_config.check_macro_bindings)."""
  gin_config.parse_run_flags(argparse.Namespace(
      gin_file=list(trial.gin_files), gin_bindings=list(trial.bindings),
      gin_search_paths=list(spec.gin_search_paths)), command=trial.command,
      required_macros=REQUIRED_MACROS[trial.command], finalize=False)


def validate_trials(spec: SweepSpec, trials: Sequence[Trial]) -> None:
  """Parses every trial's gin (base files, point, MODEL_DIR) without running anything.

  Raises GinConfigError or SweepSpecError naming the trial for: a gin file that is
  missing, a configurable or parameter gin does not know, a macro nothing reads, a
  required macro left unset, a task or mixture that is not registered.
  """
  for path in spec.tasks_files:
    task_files.register_task_file(path)
  try:
    for trial in trials:
      gin.clear_config(clear_constants=False)  # each trial on its own config
      try:
        parse_trial_gin(spec, trial)
        for name in trial_task_names():
          lookup.get_mixture_or_task(name)
      except errors.UserError as e:
        raise type(e)(f"trial {trial.name}: {e}") from None
  finally:
    gin.clear_config(clear_constants=False)


def check_trial_lengths(spec: SweepSpec, trials: Sequence[Trial]) -> list[str]:
  """The truncation check each `recast train` trial makes at its start
  (input_pipeline.check_truncation on its task, lengths and split), made for all of them
  before any starts; a `fuse` trial's contributors (a `recast train` run per pool task, at
  the fusion's lengths) likewise. Each distinct (task, lengths, split) is measured once.

  Raises TruncationError naming the trial when more than its max_truncated_fraction would
  be cut; returns the warnings for the rest ("trial: task: ... truncated ..."). Examples
  are tokenized with each trial's own vocabulary, so call it once that is bound.
  """
  from recast.trainer import input_pipeline
  for path in spec.tasks_files:
    task_files.register_task_file(path)
  reports: dict[tuple, dict] = {}
  warnings: dict[tuple, str] = {}
  try:
    for trial in (t for t in trials if t.command in ("train", "fuse")):
      gin.clear_config(clear_constants=False)
      parse_trial_gin(spec, trial)
      lengths = gin_config.parameter_value("train.task_feature_lengths", None)
      if trial.command == "fuse":  # each contributor trains on one pool task
        pool = gin_config.parameter_value("cold_fusion.pool", None)
        names = list(pool) if isinstance(pool, (list, tuple)) else None
        who = "contributor of "
      else:
        names, who = [gin_config.parameter_value("train.mixture_or_task_name", None)], ""
      if (not names or not all(isinstance(n, str) for n in names)
          or not isinstance(lengths, Mapping)):
        continue  # bound through code gin cannot show here: the trial checks it itself
      split = gin_config.parameter_value("train.split", "train")
      use_cached = gin_config.parameter_value("train.use_cached", False)
      max_fraction = gin_config.parameter_value("train.max_truncated_fraction", 0.1)
      for name in names:
        key = (name, tuple(sorted(lengths.items())), split, bool(use_cached))
        if key not in reports:
          reports[key] = input_pipeline.truncation_report(
              mixture_or_task_name=name, task_feature_lengths=lengths, split=split,
              use_cached=use_cached)
        try:
          warning = input_pipeline.check_truncation(
              reports[key], task_feature_lengths=lengths, max_fraction=max_fraction,
              name=name)
        except errors.UserError as e:
          raise type(e)(f"trial {trial.name}: {who}{e}") from None
        if warning and key not in warnings:
          warnings[key] = f"trial {trial.name}: {who}{warning}"
  finally:
    gin.clear_config(clear_constants=False)
  return list(warnings.values())


# ------------------------------------------------------------------------------------------
# One trial (runs in a Ray worker)


class MetricsTail:
  """The newest value of each metric in a growing metrics.jsonl (re-read when it changed)."""

  def __init__(self, model_dir: Path):
    self.model_dir = Path(model_dir)
    self.path = self.model_dir / metrics_writer.METRICS_FILE
    self.inode, self.size, self.rows, self.step, self.latest = None, 0, 0, 0, {}

  def poll(self) -> bool:
    """Reads the rows added since the last poll; True when a later step appeared."""
    if not self.path.exists():
      return False
    stat = self.path.stat()
    if stat.st_ino == self.inode and stat.st_size == self.size:
      return False
    if stat.st_ino != self.inode or stat.st_size < self.size:
      # A resumed run rewrote the file (atomically: a new inode) without its torn rows.
      self.inode, self.rows, self.step, self.latest = stat.st_ino, 0, 0, {}
    self.size = stat.st_size
    rows = metrics_writer.read_metrics(self.model_dir)
    new, self.rows = rows[self.rows:], len(rows)
    before = self.step
    for row in new:
      if row["metric"] in UNTABULATED_METRICS or row["value"] is None:
        continue
      self.latest[metric_key(row)] = row["value"]
      self.step = max(self.step, int(row["step"]))
    return self.step > before


def metric_key(row: Mapping[str, Any]) -> str:
  """`train/loss`, `validation/glue_rte/accuracy`: a metrics.jsonl row's column name."""
  return "/".join(part for part in (row["split"], row["task"], row["metric"]) if part)


def run_trial(config: Mapping[str, Any], runs: Mapping[str, dict]) -> None:
  """Ray Tune's trainable: runs one trial's `recast train` process to the end.

  config: {"trial": name}; runs: {name: {"trial": Trial fields, "run": {"command", "env",
  "gpus", "cwd"}}}. The process is launcher.run_train_process's, in Ray's GPU isolation
  (launcher.train_environment). Reports the newest metrics to Tune as they appear,
  registers each new checkpoint (a pointer to MODEL_DIR/checkpoint_N; the trainer resumes
  MODEL_DIR by itself), raises launcher.TrainProcessError when the process fails (Tune
  retries), and writes DONE_FILE when it finishes.
  """
  import ray
  from ray import tune
  trial, run = runs[config["trial"]]["trial"], runs[config["trial"]]["run"]
  model_dir = Path(trial["model_dir"])
  model_dir.mkdir(parents=True, exist_ok=True)
  restored = tune.get_checkpoint()
  attempts = atomic_files.read_jsonl(model_dir / ATTEMPTS_FILE) if (
      model_dir / ATTEMPTS_FILE).exists() else []
  steps = checkpoints.checkpoint_steps(model_dir)
  env = launcher.train_environment(os.environ, gpus=run["gpus"], extra=run["env"])
  atomic_files.append_jsonl(model_dir / ATTEMPTS_FILE, [{
      "attempt": len(attempts) + 1, "started": time.time(),
      "resumes_step": steps[-1] if steps else None, "tune_restored": restored is not None,
      "gpu_ids": [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get(
          "GPU", [])],
      "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
      "node": ray.util.get_node_ip_address()}])
  tail = MetricsTail(model_dir)
  reported = set(steps)

  def report_progress() -> None:
    new_steps = [s for s in checkpoints.checkpoint_steps(model_dir) if s not in reported]
    if tail.poll() or new_steps:
      _report(tune, tail, model_dir, new_steps[-1] if new_steps else None)
      reported.update(new_steps)

  (model_dir / REJECTED_FILE).unlink(missing_ok=True)  # a new start tries the input again
  command = launcher.on_this_node(run["command"])
  if run.get("launch"):  # one job over the hosts of the trial's placement group
    multihost.run_job(command, model_dir=model_dir, spec=multihost.LaunchSpec(**run["launch"]),
                      env=run["env"], cwd=run["cwd"], on_poll=report_progress,
                      placement=(ray.util.get_current_placement_group(), 0))
  else:
    try:
      launcher.run_train_process(
          command, log_file=model_dir / LOG_FILE, env=env,
          cwd=run["cwd"] if os.path.isdir(run["cwd"]) else None,
          header=f"\n=== attempt {len(attempts) + 1}: {' '.join(command)}",
          what=f"recast {trial['command']} for {trial['name']}", on_poll=report_progress,
          die_with_parent=True)
    except launcher.TrainProcessError as e:
      # A `recast fuse` exits the same way when a contributor died, which a retry resumes.
      if e.returncode != errors.USAGE_EXIT or trial["command"] != "train":
        raise
      atomic_files.write_json(model_dir / REJECTED_FILE, {"error": str(e)})
      print(f"{trial['name']}: not retried: its input was rejected\n{e}", flush=True)
      return
  summary = summarize_metrics(metrics_writer.read_metrics(model_dir))
  atomic_files.write_json(model_dir / DONE_FILE, {
      "trial": trial["name"], "point": trial["point"], "finished": time.time(),
      "attempts": len(attempts) + 1, **summary})
  tune.report({"step": summary["step"], "done": True, **summary["final"]})


def _report(tune, tail: MetricsTail, model_dir: Path, checkpoint_step: Optional[int]) -> None:
  metrics = {"step": tail.step, "done": False, **tail.latest}
  if checkpoint_step is None:
    tune.report(metrics)
    return
  with tempfile.TemporaryDirectory() as folder:
    atomic_files.write_json(Path(folder) / "recast_checkpoint.json", {
        "model_dir": str(model_dir), "step": checkpoint_step})
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


# ------------------------------------------------------------------------------------------
# The driver


@dataclasses.dataclass
class SweepOutcome:
  """What one `run_sweep` call did: trial names that ran now, were already done, failed."""
  experiment_dir: Path
  ran: list
  skipped: list
  failed: list
  results_dir: Optional[Path] = None


def run_sweep(spec: SweepSpec, *, resume: bool = False, address: Optional[str] = None,
              num_cpus: Optional[int] = None, num_gpus: Optional[float] = None,
              verbose: int = 1, trials: Optional[Sequence[Trial]] = None) -> SweepOutcome:
  """Validates every trial, runs those not done on Ray Tune, writes the results tables.

  Uses the running Ray when `ray.is_initialized()`, else joins `address`, else starts a
  local Ray (no dashboard; `num_cpus`/`num_gpus` override detection). `trials`: these
  instead of `spec.trials()` (recast.jobs.study's, with bindings resolved per run).
  """
  trials = list(trials) if trials is not None else spec.trials()
  validate_trials(spec, trials)
  experiment_dir = spec.experiment_dir
  with hold_experiment(spec, trials, resume=resume):
    done = [t for t in trials if is_done(t)]
    pending = [t for t in trials if t not in done]
    outcome = SweepOutcome(experiment_dir=experiment_dir, ran=[t.name for t in pending],
                           skipped=[t.name for t in done], failed=[])
    if done:
      print(f"{len(done)} of {len(trials)} trials already done; running {len(pending)}",
            flush=True)
    if pending:
      outcome.failed = _tune(spec, pending, address=address, num_cpus=num_cpus,
                             num_gpus=num_gpus, verbose=verbose)
    outcome.results_dir = write_results(spec, trials)
  return outcome


def is_done(trial: Trial) -> bool:
  """Whether the trial's run finished (it wrote DONE_FILE)."""
  return (Path(trial.model_dir) / DONE_FILE).exists()


@contextlib.contextmanager
def hold_experiment(spec: SweepSpec, trials: Sequence[Trial], *, resume: bool):
  """The sweep driver's hold on its experiment folder while it runs: the folder checked
  (a started one only with `resume` and the same trials), locked (one driver) and its
  SWEEP_FILE written."""
  check_experiment_dir(spec, trials, resume=resume)
  with run_lock.hold(spec.experiment_dir, what="experiment folder"):  # one sweep driver
    spec.experiment_dir.mkdir(parents=True, exist_ok=True)
    atomic_files.write_json(spec.experiment_dir / SWEEP_FILE, _describe(spec, trials))
    yield


def _describe(spec: SweepSpec, trials: Sequence[Trial]) -> dict:
  return {"name": spec.name, "axes": spec.axis_names, "seed_axis": spec.seed_axis,
          "trials": [{"name": t.name, "point": t.point, "gin_files": list(t.gin_files),
                      "bindings": list(t.bindings)} for t in trials]}


def trials_changed(spec: SweepSpec, trials: Sequence[Trial]) -> Optional[str]:
  """What differs between the trials a started sweep in `spec`'s folder was given and
  `trials` ("first differing trial: before -> now", or the counts); None when the folder
  holds no started sweep or the same trials."""
  saved_path = spec.experiment_dir / SWEEP_FILE
  if not saved_path.exists():
    return None
  saved = json.loads(saved_path.read_text())["trials"]
  now = _describe(spec, trials)["trials"]
  if saved == now:
    return None
  return next((f"{a['name']} -> {b['name']}" for a, b in zip(saved, now) if a != b),
              f"{len(saved)} trials -> {len(now)}")


def check_experiment_dir(spec: SweepSpec, trials: Sequence[Trial], *, resume: bool) -> None:
  """A started sweep continues only with --resume, and only with the same trials."""
  if not (spec.experiment_dir / SWEEP_FILE).exists():
    return
  if not resume:
    raise SweepSpecError(
        f"sweep {spec.name} already started in {spec.experiment_dir}; run it again with "
        "--resume to finish it, or give the spec another name or storage_path")
  changed = trials_changed(spec, trials)
  if changed:
    raise SweepSpecError(
        f"the grid of {spec.name} changed since it started ({changed}); --resume needs the "
        "same gin files, bindings and grid; start a new sweep under another name instead")


def _tune(spec: SweepSpec, trials: Sequence[Trial], *, address: Optional[str],
          num_cpus: Optional[int], num_gpus: Optional[float], verbose: int) -> list[str]:
  """Runs `trials` as one Tune experiment; returns the names of those that failed."""
  failed = tune_trials([(spec, t) for t in trials], tune_dir=spec.experiment_dir / "tune",
                       max_concurrent_trials=spec.max_concurrent_trials,
                       max_failures=spec.max_failures, address=address, num_cpus=num_cpus,
                       num_gpus=num_gpus, verbose=verbose)
  return [trial.name for _, trial in failed]


def ready_first_searcher(keys: Sequence[str], after: Mapping[str, Sequence[str]],
                         finished: Callable[[str], bool],
                         groups: Optional[Mapping[str, tuple[str, Optional[int]]]] = None):
  """A Tune searcher that hands out `keys` in order, each only once every key it waits for
  (`after[key]`) completed and is `finished` (a rejected input completes without error but
  is not): a free slot goes to the first ready trial, so a run starts as soon as the runs
  it needs are done. A key waiting on a failed one is never handed out. `groups[key]`:
  (group, limit): at most `limit` trials of a group at once (a study's stage)."""
  groups = groups or {}
  from ray.tune.search import Searcher

  class ReadyFirst(Searcher):
    def __init__(self):
      super().__init__()
      self.pending, self.done, self.failed, self.ids = list(keys), set(), set(), {}
      self.running: dict[str, int] = {}

    def _room(self, key: str) -> bool:
      group, limit = groups.get(key, (None, None))
      return not limit or self.running.get(group, 0) < limit

    def suggest(self, trial_id: str):
      blocked = True
      while blocked:  # drop what waits (through any chain) on a failed trial
        blocked = [k for k in self.pending if set(after.get(k, ())) & self.failed]
        self.pending = [k for k in self.pending if k not in blocked]
        self.failed |= set(blocked)
      if not self.pending:
        return Searcher.FINISHED
      ready = next((k for k in self.pending
                    if set(after.get(k, ())) <= self.done and self._room(k)), None)
      if ready is None:
        return None  # asked again when a trial completes
      self.pending.remove(ready)
      self.ids[trial_id] = ready
      group = groups.get(ready, (None, None))[0]
      self.running[group] = self.running.get(group, 0) + 1
      return {"trial": ready}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
      key = self.ids.get(trial_id)
      if key is not None:
        group = groups.get(key, (None, None))[0]
        self.running[group] -= 1
        (self.done if not error and finished(key) else self.failed).add(key)

    # Tune saves its searcher with the experiment (and warns when it cannot); a study
    # started again rebuilds this state from the runs' folders, so this is for Tune alone.
    def get_state(self) -> dict:
      return {"pending": list(self.pending), "done": sorted(self.done),
              "failed": sorted(self.failed), "ids": dict(self.ids),
              "running": dict(self.running)}

    def set_state(self, state: Mapping[str, Any]) -> None:
      self.pending, self.ids = list(state["pending"]), dict(state["ids"])
      self.done, self.failed = set(state["done"]), set(state["failed"])
      self.running = dict(state["running"])

    def save(self, checkpoint_path: str) -> None:
      atomic_files.write_json(checkpoint_path, self.get_state())

    def restore(self, checkpoint_path: str) -> None:
      with open(checkpoint_path) as f:
        self.set_state(json.load(f))

  return ReadyFirst()


def tune_trials(entries: Sequence[tuple[SweepSpec, Trial]], *, tune_dir: Path,
                max_concurrent_trials: Optional[int], max_failures: int,
                address: Optional[str], num_cpus: Optional[int], num_gpus: Optional[float],
                verbose: int, after: Optional[Sequence[Sequence[int]]] = None,
                group_limits: Optional[Sequence[tuple[str, Optional[int]]]] = None
                ) -> list[tuple[SweepSpec, Trial]]:
  """Runs trials, each with its own spec's command, environment and resources (trials of
  several sweeps, as a study's runs), as one Tune experiment in `tune_dir`; returns the
  (spec, trial) pairs that failed: after retries, or at once when `recast train` rejected
  its input (REJECTED_FILE).

  `after[i]`: the indices of the entries entry i needs finished first (a study's
  references); it starts as soon as they are, in the first free slot (entries earlier in
  the list first). An entry whose requirement failed is not started, and is not returned.
  `group_limits[i]`: (group, limit): at most `limit` entries of that group run at once (a
  study's stage); `max_concurrent_trials` caps them all.
  """
  from ray import tune
  launcher.connect_ray(address=address, num_cpus=num_cpus, num_gpus=num_gpus)
  attempt = 1 + (len(list(tune_dir.iterdir())) if tune_dir.is_dir() else 0)
  several = len({spec.name for spec, _ in entries}) > 1
  keys = [f"{spec.name}.{t.name}" if several else t.name for spec, t in entries]
  runs, resources = {}, {}
  for key, (spec, t) in zip(keys, entries):
    runs[key] = {"trial": dataclasses.asdict(t), "run": {
        "env": spec.env, "gpus": spec.resources["gpu"], "cwd": spec.cwd,
        "launch": dataclasses.asdict(spec.launch) if spec.launch else None,
        "command": t.train_command(spec)}}
    resources[key] = trial_resources(spec)
  shared = next(iter(resources.values()))
  if all(r == shared for r in resources.values()):
    per_trial = shared
  else:  # a callable must give placement group factories
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory
    factories = {k: resource_dict_to_pg_factory(r) if isinstance(r, dict) else r
                 for k, r in resources.items()}
    per_trial = lambda config: factories[config["trial"]]
  if after and any(after):
    waits = {keys[i]: [keys[j] for j in needs] for i, needs in enumerate(after)}
    done = {k: Path(t.model_dir) / DONE_FILE for k, (_, t) in zip(keys, entries)}
    groups = dict(zip(keys, group_limits)) if group_limits else None
    space = {"search_alg": ready_first_searcher(keys, waits, lambda k: done[k].is_file(),
                                                groups),
             "num_samples": len(keys)}
    # Without a concurrency limit Tune keeps one trial of a searcher pending at a time: a run
    # waiting for a GPU would hold back the CPU runs behind it while their CPUs sit idle.
    # Capped as Tune caps its own pending trials (200, or 1.1 per cluster CPU), so a study
    # of thousands of runs does not ask for thousands of placement groups at once.
    if max_concurrent_trials is None:
      import ray
      cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else 1
      max_concurrent_trials = min(len(keys), max(200, int(1.1 * cpus)))
  else:
    space = {}
  tuner = tune.Tuner(
      tune.with_resources(tune.with_parameters(run_trial, runs=runs), per_trial),
      param_space={} if space else {"trial": tune.grid_search(keys)},
      tune_config=tune.TuneConfig(
          max_concurrent_trials=max_concurrent_trials, **space,
          trial_dirname_creator=lambda t: t.config["trial"],
          trial_name_creator=lambda t: t.config["trial"]),
      run_config=tune.RunConfig(
          name=f"driver_{attempt}", storage_path=str(tune_dir), verbose=verbose,
          failure_config=tune.FailureConfig(max_failures=max_failures),
          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
  results = tuner.fit()
  started = {result.config["trial"] for result in results}
  failed = {result.config["trial"] for result in results if result.error is not None}
  failed |= {key for key, (_, t) in zip(keys, entries)  # (an old one of a run not started
             if key in started and (Path(t.model_dir) / REJECTED_FILE).is_file()}  # now)
  return [entry for key, entry in sorted(zip(keys, entries), key=lambda x: x[0])
          if key in failed]


# ------------------------------------------------------------------------------------------
# Results


def summarize_metrics(rows: Sequence[Mapping[str, Any]]) -> dict:
  """A run's last step, and each metric's final (at its last step) and best value.

  rows: metrics.jsonl rows. Returns {"step": int, "final": {key: value}, "best": {key:
  value}} with keys from `metric_key`. Evaluation rows go through report.build_tables
  (its choice of metrics per task, `validation/average` and benchmark scores); the others
  (train) are summarised here. Best is the minimum for losses, else the maximum.
  Throughput and learning-rate rows are left out.
  """
  final, best, last_step, step = {}, {}, {}, 0
  for row in rows:
    step = max(step, int(row["step"]))
    if (row["metric"] in UNTABULATED_METRICS or row["value"] is None
        or row["split"] == report.EVAL_SPLIT):
      continue
    key, value = metric_key(row), float(row["value"])
    if int(row["step"]) >= last_step.get(key, -1):
      final[key], last_step[key] = value, int(row["step"])
    pick = min if _lower_is_better(row["metric"]) else max
    best[key] = pick(best[key], value) if key in best else value
  tables = report.build_tables({"run": rows})
  for kind, out in (("final", final), ("best", best)):
    for column, value in tables[kind].rows["run"].items():
      if value is not None:
        out[f"{report.EVAL_SPLIT}/{column}"] = value
  return {"step": step, "final": final, "best": best}


def _lower_is_better(metric: str) -> bool:
  return "loss" in metric or "perplexity" in metric or metric == "grad_norm"


def trial_records(trials: Sequence[Trial]) -> list[dict]:
  """Per trial: name, status (done, incomplete, not started), point, and its summary."""
  records = []
  for trial in trials:
    model_dir = Path(trial.model_dir)
    rows = metrics_writer.read_metrics(model_dir)
    status = ("done" if (model_dir / DONE_FILE).exists() else
              "incomplete" if rows or model_dir.exists() else "not started")
    records.append({"trial": trial.name, "status": status, "point": dict(trial.point),
                    **summarize_metrics(rows)})
  return records


def _metric_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
  keys = {k for r in records for k in r["final"]}
  return sorted(keys, key=lambda k: (not k.startswith("train/"), k))


def trials_table(records: Sequence[Mapping[str, Any]], axes: Sequence[str]
                 ) -> tuple[list[str], list[dict]]:
  """(columns, rows): one row per trial with its axes and each metric's final and best."""
  keys = _metric_keys(records)
  columns = ["trial", "status", "step", *axes,
             *[f"{k} {kind}" for k in keys for kind in ("final", "best")]]
  rows = []
  for r in records:
    row = {"trial": r["trial"], "status": r["status"], "step": r["step"],
           **{a: r["point"].get(a) for a in axes}}
    for k in keys:
      row[f"{k} final"], row[f"{k} best"] = r["final"].get(k), r["best"].get(k)
    rows.append(row)
  return columns, rows


def groups_table(records: Sequence[Mapping[str, Any]], axes: Sequence[str], *,
                 seed_axis: Optional[str]) -> tuple[list[str], list[dict]]:
  """(columns, rows): finished trials grouped by every axis but the seed axis, with the
  mean and standard deviation (over seeds: report.mean_std, the sample std, empty for one
  seed) of each metric's final and best value."""
  group_axes = [a for a in axes if a != seed_axis]
  done = [r for r in records if r["status"] == "done"]
  keys = _metric_keys(done)
  groups: dict[tuple, list] = {}
  for r in done:
    groups.setdefault(tuple(_hashable(r["point"].get(a)) for a in group_axes), []).append(r)
  columns = [*group_axes, "seeds",
             *[f"{k} {kind} {stat}" for k in keys for kind in ("final", "best")
               for stat in ("mean", "std")]]
  rows = []
  for members in groups.values():
    row = {a: members[0]["point"].get(a) for a in group_axes}
    row["seeds"] = len(members)
    for k in keys:
      for kind in ("final", "best"):
        mean, std = report.mean_std([m[kind][k] for m in members if k in m[kind]])
        row[f"{k} {kind} mean"], row[f"{k} {kind} std"] = mean, std
    rows.append(row)
  return columns, rows


def _hashable(value: Any) -> Any:
  return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def recycling_rows(records: Sequence[Mapping[str, Any]], *, row_axes: Sequence[str],
                   metric: str, baseline: Mapping[str, Any]) -> tuple[list[str], list[dict]]:
  """(columns, rows): model-recycling style. Per row (a combination of `row_axes`; seeds
  and tasks averaged), per task: the final validation `metric` (mean over seeds) minus
  the baseline row's; then the mean gain over the tasks both have and the mean score.
  Each row is report.recycling_table of the row ("base") against the baseline row
  ("reference").

  E.g. rows = base models, tasks = a MIXTURE_OR_TASK_NAME axis (or a mixture's tasks):
  `ColD Fusion +2.25 over roberta-base` is one cell of the "mean gain" column.
  """
  scores: dict[tuple, dict[str, list]] = {}
  points: dict[tuple, dict] = {}
  for r in records:
    if r["status"] != "done":
      continue
    row = tuple(_hashable(r["point"].get(a)) for a in row_axes)
    points[row] = {a: r["point"].get(a) for a in row_axes}
    for key, value in r["final"].items():
      split, _, rest = key.partition("/")
      task, _, name = rest.rpartition("/")
      if split == "validation" and task and task != report.AVERAGE and name == metric:
        scores.setdefault(row, {}).setdefault(task, []).append(value)
  base_row = next((row for row, p in points.items()
                   if all(p.get(a) == v for a, v in baseline.items())), None)
  if base_row is None or base_row not in scores:
    return [], []
  tasks = sorted({t for by_task in scores.values() for t in by_task})
  columns = [*row_axes, *[f"{t} gain" for t in tasks], "mean gain", f"mean {metric}"]
  rows = []
  for row, by_task in scores.items():
    table = report.recycling_table({"base": by_task, "reference": scores[base_row]})
    gains = {r["task"]: r["gain"] for r in table["rows"] if "gain" in r}
    rows.append({**points[row], **{f"{t} gain": gains.get(t) for t in tasks},
                 "mean gain": table["average"]["all"].get("gain"),
                 f"mean {metric}": table["average"]["all"]["base"]})
  base_point = points[base_row]  # The baseline first, then the largest mean gain.
  rows.sort(key=lambda r: (any(r[a] != base_point[a] for a in row_axes),
                           -(r["mean gain"] or 0.0)))
  return columns, rows


def write_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]],
                stem: str | os.PathLike, *, markdown_columns: Optional[Sequence[str]] = None
                ) -> list[Path]:
  """Writes `stem`.csv (every column) and `stem`.md (`markdown_columns`, default all;
  numbers to 4 significant digits; a column "X" missing from a row but with "X mean" and
  "X std" there shows as "mean ± std")."""
  stem = Path(stem)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
  shown = list(markdown_columns or columns)
  lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
  lines += ["| " + " | ".join(_markdown_cell(row, c) for c in shown) + " |" for row in rows]
  paths = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
  atomic_files.write_text(paths[0], buffer.getvalue())
  atomic_files.write_text(paths[1], "\n".join(lines) + "\n")
  return paths


def _markdown_cell(row: Mapping[str, Any], column: str) -> str:
  if column not in row and f"{column} mean" in row:
    mean, std = row[f"{column} mean"], row.get(f"{column} std")
    return _cell(mean) + (f" ± {_cell(std)}" if std is not None else "")
  return _cell(row.get(column))


def _headline_keys(keys: Sequence[str]) -> list[str]:
  """The metrics the markdown tables show: train loss and accuracy, all evaluation ones."""
  return [k for k in keys if not k.startswith("train/") or k in ("train/loss",
                                                                 "train/accuracy")]


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value).replace("|", "\\|")


def write_results(spec: SweepSpec, trials: Sequence[Trial]) -> Path:
  """Tables and plots of every trial's run folder into <experiment>/results."""
  results = spec.experiment_dir / "results"
  results.mkdir(parents=True, exist_ok=True)
  records = trial_records(trials)
  axes = spec.axis_names
  headline = _headline_keys(_metric_keys(records))
  write_table(*trials_table(records, axes), results / "trials", markdown_columns=[
      "trial", "status", "step", *axes,
      *[f"{k} {kind}" for k in headline for kind in ("final", "best")]])
  group_columns, group_rows = groups_table(records, axes, seed_axis=spec.seed_axis)
  write_table(group_columns, group_rows, results / "groups", markdown_columns=[
      *[a for a in axes if a != spec.seed_axis], "seeds",
      *[f"{k} {kind}" for k in headline for kind in ("final", "best")]])
  if spec.baseline:
    row_axes = [a for a in axes if a != spec.seed_axis and a not in TASK_AXES]
    columns, rows = recycling_rows(records, row_axes=row_axes, metric=spec.metric,
                                    baseline=spec.baseline)
    if rows:
      write_table(columns, rows, results / "recycling")
    else:
      print(f"no recycling table: the baseline {spec.baseline} has no finished trial with "
            f"validation {spec.metric}", file=sys.stderr)
  _plot(trials, group_rows, [a for a in axes if a != spec.seed_axis], results)
  return results


def _plot(trials: Sequence[Trial], group_rows: Sequence[Mapping[str, Any]],
          group_axes: Sequence[str], results: Path) -> None:
  """plots/: report.write_plots's curves (train loss, evaluation metrics; a line per
  trial) and groups_<metric>.png, a bar per group (mean +- std over seeds of the final
  value)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  report.write_plots({t.name: metrics_writer.read_metrics(t.model_dir) for t in trials},
                     results)
  means = [c[:-len(" final mean")] for c in (group_rows[0] if group_rows else {})
           if c.endswith(" final mean")]
  labels = [", ".join(f"{a.split('.')[-1]}={_short_value(r[a])}" for a in group_axes)
            for r in group_rows]
  for key in [k for k in means if k == "train/loss" or k.startswith("validation/")][:12]:
    values = [r[f"{key} final mean"] or 0.0 for r in group_rows]
    stds = [r[f"{key} final std"] or 0.0 for r in group_rows]
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 5))
    axis.bar(range(len(values)), values, yerr=stds, capsize=3)
    axis.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=7)
    axis.set(ylabel=f"{key} (final; mean, std over seeds)", title=key)
    name = re.sub(r"[^\w.-]+", "_", key)
    report.save_png(figure, results / "plots" / f"groups_{name}.png")
    plt.close(figure)


# ------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("spec", metavar="SPEC", help="sweep spec (YAML); see docs/sweeps.md")
  parser.add_argument("--resume", action="store_true",
                      help="finish a started sweep: run only trials without sweep_done.json "
                      "(unfinished ones resume from their newest checkpoint)")
  launcher.add_ray_arguments(parser)
  parser.add_argument("--dry_run", action="store_true",
                      help="check the spec and every trial's gin, list the trials, run none")
  parser.add_argument("--results_only", action="store_true",
                      help="rewrite the results tables and plots from the run folders")


def main(args: argparse.Namespace) -> int:
  """`recast sweep SPEC [--resume] [--address=auto] [--gin.NAME=VALUE ...]`."""
  spec = load_spec(args.spec, extra_gin_files=args.gin_file,
                   extra_bindings=args.gin_bindings, extra_tasks_files=args.tasks_file,
                   extra_search_paths=args.gin_search_paths)
  trials = spec.trials()
  if args.results_only:
    print(f"results: {write_results(spec, trials)}")
    return 0
  if args.dry_run:
    validate_trials(spec, trials)
    for trial in trials:
      print(f"{trial.name}: {' '.join(trial.train_command(spec)[2:])}")
    print(f"{len(trials)} trials; gin checked; MODEL_DIRs under {spec.experiment_dir}/runs")
    return 0
  outcome = run_sweep(spec, resume=args.resume, address=args.address,
                      num_cpus=args.num_cpus, num_gpus=args.num_gpus)
  print(f"ran {len(outcome.ran)} trials ({len(outcome.skipped)} were already done); "
        f"results in {outcome.results_dir}")
  if outcome.failed:
    print(f"{len(outcome.failed)} trials failed (retried unless their input was rejected): "
          f"{', '.join(outcome.failed)}; see runs/<trial>/{LOG_FILE}, then run again with "
          "--resume", file=sys.stderr)
    return 1
  return 0
