"""`recast study SPEC.yaml`: a comparison as stages of sweeps, run in order, and its report.

A study spec is YAML. Each stage is a grid of `recast train` runs written as a sweep's
(gin_files, bindings, grid, points; recast.jobs.sweep parses and checks it, and runs it on
Ray Tune); a later stage names an earlier stage's runs by their bindings:

    name: sp_smoke
    storage_path: studies            # runs in studies/sp_smoke/<stage>/runs/<run>
    vocabulary: /path/spiece.model   # one for every run; absent: built once from the text
    bindings: {DATA_DIR: ../shared/data}          # every run of every stage
    stages:
      pretrain_self:
        gin_files: [models/t5_1_1/tiny.gin, experiments/self_pretraining/pretrain_self.gin]
        grid: {TASK: [glue_rte]}
      finetune:
        gin_files: [models/t5_1_1/tiny.gin, experiments/self_pretraining/finetune.gin]
        labels: [INIT]                # axes that name runs only (not gin bindings)
        grid: {TASK: [glue_rte], SEED: [0, 1]}
        points:
          - {INIT: random, INITIAL_CHECKPOINT_PATH: null}
          - {INIT: self, INITIAL_CHECKPOINT_PATH: {stage: pretrain_self, TASK: same}}
    arms:                             # what is compared: runs of one stage by their axes
      random: {stage: finetune, INIT: random}
      self: {stage: finetune, INIT: self}
    reference: random                 # the arm the others are compared with

`{stage: S, AXIS: same, OTHER: value}` is the MODEL_DIR of the one run of stage S whose AXIS
equals this run's and whose OTHER is value (`{stage: S}`: S's only run). A stage with
`command: fuse` runs `recast fuse` (ColD Fusion rounds) instead, its FUSION_DIR the run's
folder; a reference to one of its runs names its last fused model (a FUSION_DIR resolves
to it: recast.trainer.checkpoints.resolve). Each run starts as soon as the runs it names
are done and a slot is free, whatever its stage (runs others wait on first; a stage is
listed after the stages it references, else as written). Everything that can reject the spec
(unknown keys, stages, axes; a cycle; arms that select nothing; a second vocabulary; and
every run's gin, as `recast sweep` checks it) is checked before any run starts, and a
spec error names its line. A run is finished when it wrote sweep_done.json (it reached
TRAIN_STEPS): a killed study started again reruns nothing finished and resumes the rest.
At the end (and with `recast report STUDY_DIR`) recast.jobs.study_report writes
<study>/report/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from recast import atomic_files, errors, gin_config
from recast.jobs import launcher, sweep

STUDY_KEYS = {
    "name": "the study's folder under storage_path (default: the spec file's name)",
    "storage_path": "folder for the study (default ./studies)",
    "gin_search_paths": "folders searched for gin files",
    "tasks_files": "declarative task files every run registers",
    "vocabulary": "one SentencePiece model (a path) or 'byte' for every run; default: built "
                  "once from the compared tasks' training text (VOCABULARY=auto)",
    "bindings": "{NAME: VALUE} gin bindings of every run of every stage",
    "env": "{VAR: value} environment of every run process",
    "resources_per_trial": "{gpu: N, cpu: N} reserved for each run",
    "max_concurrent_trials": "at most this many runs at once",
    "max_failures": "retries of a failed run, each resuming its checkpoint (default 3)",
    "stages": "{stage: {gin_files, bindings, grid, points, labels}}: grids of runs, in order",
    "arms": "{arm: {stage: S, AXIS: value, ...}}: the compared selections of runs",
    "reference": "the arm the others are compared with",
    "metric": "the compared validation metric (default: each task's first decoded metric)",
}
STAGE_KEYS = {
    "gin_files": "gin files of every run of the stage, in order",
    "bindings": "{NAME: VALUE} gin bindings of the stage (a value may be {stage: S, ...})",
    "grid": "{NAME: [values]}: cartesian axes",
    "points": "[{NAME: VALUE, ...}]: explicit points, crossed with the grid",
    "labels": "[AXIS, ...]: axes that only name runs (for arms), not gin bindings",
    "resources_per_trial": "{gpu: N, cpu: N} for this stage's runs",
    "max_concurrent_trials": "at most this many of this stage's runs at once",
    "command": "train (default): each run a `recast train`; fuse: each run a `recast fuse` "
               "(ColD Fusion rounds, FUSION_DIR = the run's folder; a later stage naming it "
               "starts from its last fused model)",
}
STUDY_FILE = "study.json"
REPORT_DIR = "report"
# A stage's command -> the macro its runs' folders are bound to.
COMMANDS = {"train": "MODEL_DIR", "fuse": "FUSION_DIR"}
SAME = "same"
VOCABULARY = "VOCABULARY"


class StudySpecError(errors.UserError):
  """A study spec that cannot run as written; nothing has started."""


# ------------------------------------------------------------------------------------------
# YAML lines


class _Lines:
  """The line (1-based) of each key and list item of a YAML file, by its path of keys."""

  def __init__(self, text: str, path: Path):
    self.path, self.marks = path, {}
    try:
      root = yaml.compose(text)
    except yaml.YAMLError:
      root = None
    if root is not None:
      self._walk(root, ())

  def _walk(self, node: Any, at: tuple) -> None:
    if isinstance(node, yaml.MappingNode):
      for key, value in node.value:
        self.marks[at + (str(key.value),)] = key.start_mark.line + 1
        self._walk(value, at + (str(key.value),))
    elif isinstance(node, yaml.SequenceNode):
      for i, value in enumerate(node.value):
        self.marks[at + (i,)] = value.start_mark.line + 1
        self._walk(value, at + (i,))

  def line(self, *at: Any) -> int:
    at = tuple(a if isinstance(a, int) else str(a) for a in at)
    while at and at not in self.marks:
      at = at[:-1]
    return self.marks.get(at, 1)

  def error(self, at: Sequence[Any], message: str) -> StudySpecError:
    return StudySpecError(f"{self.path}, line {self.line(*at)}: {message}")


def _unknown_keys(raw: Mapping, allowed: Mapping[str, str], what: str) -> Optional[str]:
  unknown = [k for k in raw if k not in allowed]
  if not unknown:
    return None
  key = unknown[0]
  close = difflib.get_close_matches(str(key), list(allowed), n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  return f"unknown key {key!r} in {what}{hint}; allowed: {', '.join(allowed)}"


def _resolve_path(path: Any, cwd: str) -> str:
  path = os.path.expanduser(str(path))
  return path if os.path.isabs(path) else os.path.normpath(os.path.join(cwd, path))


BUILT_IN_DIR = gin_config.GIN_DIR / "experiments" / "studies"


def built_in_studies() -> list[str]:
  """Names of the studies under gin/experiments/studies (`recast study NAME` runs one)."""
  return sorted(p.stem for p in BUILT_IN_DIR.glob("*.yaml") if not p.stem.endswith("_tasks"))


def find_spec(path: Path) -> Path:
  """`path` when it is a file, else the built-in study of that name; StudySpecError naming
  close built-in names otherwise."""
  if path.is_file():
    return path
  built_in = BUILT_IN_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
  if path.parent == Path(".") and built_in.is_file():
    return built_in
  close = difflib.get_close_matches(path.name.removesuffix(".yaml"), built_in_studies(), n=3)
  hint = (f"; did you mean {' or '.join(close)} (built in)?" if close else
          f"; the built-in studies are {', '.join(built_in_studies())}")
  raise StudySpecError(f"study spec {path} not found{hint}")


def _beside_spec(file: Any, spec_path: Path) -> Any:
  """A relative task file found beside the spec is that one (so a study runs from any
  folder); otherwise the path as given (relative to the working folder)."""
  if isinstance(file, str) and not os.path.isabs(os.path.expanduser(file)):
    beside = spec_path.resolve().parent / file
    if beside.is_file():
      return str(beside)
  return file


def is_reference(value: Any) -> bool:
  """Whether a YAML value is a reference to another stage's runs ({stage: S, ...})."""
  return isinstance(value, dict) and "stage" in value


# ------------------------------------------------------------------------------------------
# The spec


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a stage: its sweep trial (bindings resolved) and what it depends on."""
  stage: str
  trial: sweep.Trial
  depends_on: tuple  # keys of the runs it names ("stage/run", ...)

  @property
  def key(self) -> str:
    """"stage/run": how other runs' depends_on name this one."""
    return f"{self.stage}/{self.trial.name}"


@dataclasses.dataclass
class Stage:
  name: str
  spec: sweep.SweepSpec
  labels: tuple
  refs: dict           # binding name -> (reference, YAML path) of the stage's bindings
  runs: list = dataclasses.field(default_factory=list)
  command: str = "train"  # "fuse": ColD Fusion runs (COMMANDS)

  @property
  def folder_macro(self) -> str:
    """The macro each run's folder is bound to."""
    return COMMANDS[self.command]

  @property
  def axes(self) -> list[str]:
    return self.spec.axis_names


@dataclasses.dataclass
class Study:
  """A parsed, checked study (see the module docstring)."""
  name: str
  path: Path
  study_dir: Path
  stages: dict          # name -> Stage, in run order
  vocabulary: Optional[str]   # a path or "byte"; None: built from the text at the start
  arms: dict            # arm -> {"stage": S, "select": {axis: value}, "runs": [names]}
  reference: Optional[str]
  metric: Optional[str]
  max_concurrent_runs: Optional[int] = None  # the study's max_concurrent_trials: all stages

  def all_runs(self) -> list[Run]:
    return [run for stage in self.stages.values() for run in stage.runs]


def load_study(path: str | os.PathLike, *, extra_tasks_files: Sequence[str] = (),
               extra_gin_files: Sequence[str] = (), extra_bindings: Sequence[str] = (),
               extra_search_paths: Sequence[str] = (), cwd: Optional[str] = None,
               vocabulary: Optional[str] = None) -> Study:
  """Reads and checks a study spec; every error names the spec's line.

  `extra_*` come from the command line (`--gin_file`, `--gin.NAME=VALUE`, ...) and apply to
  every run of every stage, after the spec's own (as `recast sweep`'s do); one may not set a
  grid axis, a binding that names another stage's runs, or VOCABULARY (the spec's
  `vocabulary:` is the study's one).
  `vocabulary`: the study's vocabulary when the spec gives none (run_study passes the one it
  built); runs are resolved with it. Gin is checked by `validate_study`.
  """
  path = Path(path)
  cwd = cwd or os.getcwd()
  path = find_spec(path)
  text = path.read_text()
  try:
    raw = yaml.safe_load(text) or {}
  except yaml.YAMLError as e:
    raise StudySpecError(f"{path} is not valid YAML: {e}") from None
  lines = _Lines(text, path)
  if not isinstance(raw, dict):
    raise lines.error((), "a study spec is a YAML mapping with keys " + ", ".join(STUDY_KEYS))
  problem = _unknown_keys(raw, STUDY_KEYS, "the study")
  if problem:
    raise lines.error((next(k for k in raw if k not in STUDY_KEYS),), problem)
  stages_raw = raw.get("stages")
  if not isinstance(stages_raw, dict) or not stages_raw:
    raise lines.error(("stages",), "a study needs stages: {name: {gin_files: [...], grid: "
                      "{...}}, ...}")
  name = str(raw.get("name") or path.stem)
  storage = _resolve_path(raw.get("storage_path") or "studies", cwd)
  study_dir = Path(storage) / name
  common_bindings = raw.get("bindings") or {}
  if not isinstance(common_bindings, dict):
    raise lines.error(("bindings",), "bindings must be a mapping {NAME: VALUE}")
  vocab = _study_vocabulary(raw, stages_raw, lines, cwd) or vocabulary
  cli_names = {gin_config.binding_name(b) for b in extra_bindings}
  if VOCABULARY in cli_names:
    raise StudySpecError(f"--gin.{VOCABULARY} would give the runs of {path} another "
                         "vocabulary than the study's one; set `vocabulary:` in the spec")

  stages: dict[str, Stage] = {}
  for stage_name, stage_raw in stages_raw.items():
    at = ("stages", stage_name)
    if stage_name == REPORT_DIR or not re.fullmatch(r"[A-Za-z0-9._+-]+", str(stage_name)):
      raise lines.error(at, f"stage name {stage_name!r} must be a folder name (letters, "
                        f"digits, . _ + -) other than {REPORT_DIR!r}")
    if not isinstance(stage_raw, dict):
      raise lines.error(at, f"stage {stage_name} must be a mapping with keys "
                        f"{', '.join(STAGE_KEYS)}")
    problem = _unknown_keys(stage_raw, STAGE_KEYS, f"stage {stage_name}")
    if problem:
      raise lines.error(at + (next(k for k in stage_raw if k not in STAGE_KEYS),), problem)
    stage_bindings = stage_raw.get("bindings") or {}
    if not isinstance(stage_bindings, dict):
      raise lines.error(at + ("bindings",), "bindings must be a mapping {NAME: VALUE}")
    refs = {k: (v, at + ("bindings", k)) for k, v in stage_bindings.items() if is_reference(v)}
    replaced = sorted(cli_names & set(refs))
    if replaced:
      raise lines.error(at + ("bindings", replaced[0]), f"--gin.{replaced[0]} would replace "
                        f"stage {stage_name}'s reference to another stage's runs; change the "
                        "spec")
    axes = set((stage_raw.get("grid") or {}) if isinstance(stage_raw.get("grid"), dict)
               else ()) | {k for p in (stage_raw.get("points") or []) if isinstance(p, dict)
                           for k in p}
    bindings = {k: v for k, v in common_bindings.items() if k not in axes}
    bindings.update({k: v for k, v in stage_bindings.items() if k not in refs})
    bindings.pop(VOCABULARY, None)  # bound per run (one vocabulary; checked above)
    sweep_raw = {
        "name": str(stage_name), "storage_path": str(study_dir),
        "gin_files": stage_raw.get("gin_files") or [],
        "gin_search_paths": raw.get("gin_search_paths") or [],
        "tasks_files": [_beside_spec(f, path) for f in raw.get("tasks_files") or []],
        "bindings": bindings, "grid": stage_raw.get("grid") or {},
        "points": stage_raw.get("points") or [], "env": raw.get("env") or {},
        "resources_per_trial": stage_raw.get("resources_per_trial",
                                             raw.get("resources_per_trial") or {}),
        "max_concurrent_trials": stage_raw.get("max_concurrent_trials",
                                               raw.get("max_concurrent_trials")),
        "max_failures": raw.get("max_failures", 3)}
    try:
      spec = sweep.parse_spec(sweep_raw, Path(f"stage {stage_name}"), cwd=cwd,
                              extra_tasks_files=extra_tasks_files,
                              extra_gin_files=extra_gin_files, extra_bindings=extra_bindings,
                              extra_search_paths=extra_search_paths)
    except sweep.SweepSpecError as e:
      raise lines.error(at, str(e)) from None
    command = stage_raw.get("command", "train")
    if command not in COMMANDS:
      close = difflib.get_close_matches(str(command), list(COMMANDS), n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise lines.error(at + ("command",), f"stage {stage_name}: command {command!r} is not "
                        f"one a stage runs; {hint}use one of {', '.join(COMMANDS)}")
    labels = stage_raw.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
      raise lines.error(at + ("labels",), "labels must be a list of axis names, e.g. [INIT]")
    for i, label in enumerate(labels):
      if label not in spec.axis_names:
        raise lines.error(at + ("labels", i), f"label {label!r} is not an axis of stage "
                          f"{stage_name}; its axes: {', '.join(spec.axis_names)}")
    stages[str(stage_name)] = Stage(name=str(stage_name), spec=spec, labels=tuple(labels),
                                    refs=refs, command=command)

  _check_references(stages, stages_raw, lines)
  order = _run_order(stages, stages_raw, lines)
  stages = {n: stages[n] for n in order}
  for stage in stages.values():
    stage.runs = _resolve_runs(stage, stages, stages_raw, lines, vocab)
  arms, reference = _arms(raw, stages, lines)
  metric = raw.get("metric")
  return Study(name=name, path=path, study_dir=study_dir, stages=stages, vocabulary=vocab,
               arms=arms, reference=reference, metric=str(metric) if metric else None,
               max_concurrent_runs=raw.get("max_concurrent_trials"))


def _study_vocabulary(raw: Mapping, stages_raw: Mapping, lines: _Lines, cwd: str
                      ) -> Optional[str]:
  """The study's one vocabulary (`vocabulary:`, or the VOCABULARY every binding agrees on);
  a stage binding another one, or a VOCABULARY axis, is an error."""
  def normal(value: Any) -> str:
    text = str(value)
    return text if text in ("byte", "auto") else _resolve_path(text, cwd)

  found: list[tuple[str, tuple]] = []
  if raw.get("vocabulary") is not None:
    found.append((normal(raw["vocabulary"]), ("vocabulary",)))
  if VOCABULARY in (raw.get("bindings") or {}):
    found.append((normal(raw["bindings"][VOCABULARY]), ("bindings", VOCABULARY)))
  for name, stage in stages_raw.items():
    if not isinstance(stage, dict):
      continue
    grid = stage.get("grid") if isinstance(stage.get("grid"), dict) else {}
    points = stage.get("points") if isinstance(stage.get("points"), list) else []
    if VOCABULARY in grid or any(isinstance(p, dict) and VOCABULARY in p for p in points):
      at = ("stages", name, "grid", VOCABULARY) if VOCABULARY in grid else ("stages", name,
                                                                               "points")
      raise lines.error(at, f"stage {name} varies VOCABULARY; a study has one vocabulary "
                        "for every run (set `vocabulary:` once)")
    bindings = stage.get("bindings") if isinstance(stage.get("bindings"), dict) else {}
    if VOCABULARY in bindings:
      found.append((normal(bindings[VOCABULARY]), ("stages", name, "bindings", VOCABULARY)))
  for value, at in found[1:]:
    if value != found[0][0]:
      raise lines.error(at, f"VOCABULARY {value} differs from the study's vocabulary "
                        f"{found[0][0]} (line {lines.line(*found[0][1])}); every stage "
                        "shares one vocabulary: remove this binding or make them equal")
  vocab = found[0][0] if found else None
  return None if vocab == "auto" else vocab


def _references(stage: Stage, stages_raw: Mapping) -> list[tuple[str, dict, tuple]]:
  """(binding name, reference, YAML path) of every reference in a stage's spec."""
  out = [(name, ref, at) for name, (ref, at) in stage.refs.items()]
  raw = stages_raw[stage.name]
  grid = raw.get("grid") or {}
  for axis, values in grid.items():
    out += [(axis, v, ("stages", stage.name, "grid", axis, i)) for i, v in enumerate(values)
            if is_reference(v)]
  for i, point in enumerate(raw.get("points") or []):
    out += [(axis, v, ("stages", stage.name, "points", i, axis)) for axis, v in point.items()
            if is_reference(v)]
  return out


def _check_references(stages: Mapping[str, Stage], stages_raw: Mapping, lines: _Lines) -> None:
  for stage in stages.values():
    for name, ref, at in _references(stage, stages_raw):
      target = ref["stage"]
      if target not in stages:
        raise lines.error(at, f"{name} names stage {target!r}, which is not a stage of the "
                          f"study; stages: {', '.join(stages)}")
      for axis, value in ref.items():
        if axis == "stage":
          continue
        if axis not in stages[target].axes:
          raise lines.error(at, f"{name} selects {axis}, which is not an axis of stage "
                            f"{target}; its axes: {', '.join(stages[target].axes) or 'none'}")
        if value == SAME and axis not in stage.axes:
          raise lines.error(at, f"{name}: {axis}: same needs {axis} as an axis of stage "
                            f"{stage.name} too; its axes: {', '.join(stage.axes)}")


def _run_order(stages: Mapping[str, Stage], stages_raw: Mapping, lines: _Lines) -> list[str]:
  """Stages in spec order, each after the stages it references; a cycle is an error."""
  needs = {n: [(ref["stage"], at) for _, ref, at in _references(s, stages_raw)]
           for n, s in stages.items()}
  order: list[str] = []
  visiting: list[str] = []

  def visit(name: str) -> None:
    if name in order:
      return
    if name in visiting:
      cycle = visiting[visiting.index(name):] + [name]
      at = next(at for target, at in needs[cycle[-2]] if target == name)
      raise lines.error(at, f"stages form a cycle: {' -> '.join(cycle)} (each needs the "
                        "next one's runs); a stage can only use runs of stages before it")
    visiting.append(name)
    for target, _ in needs[name]:
      visit(target)
    visiting.pop()
    order.append(name)

  for name in stages:
    visit(name)
  return order


def _display(value: Any) -> Any:
  return f"{value['stage']}" if is_reference(value) else value


def _resolve_runs(stage: Stage, stages: Mapping[str, Stage], stages_raw: Mapping,
                  lines: _Lines, vocabulary: Optional[str]) -> list[Run]:
  """The stage's trials with references replaced by the MODEL_DIR of the run they name,
  label axes left out of the gin bindings and VOCABULARY bound."""
  spec = stage.spec
  refs_at = {}
  for name, ref, at in _references(stage, stages_raw):
    refs_at.setdefault((name, repr(ref)), at)
  runs = []
  for trial in spec.trials():
    point = {k: _display(v) for k, v in trial.point.items()}
    run_name = sweep.trial_name(trial.index, point)
    model_dir = str(spec.experiment_dir / "runs" / run_name)
    values = {k: v for k, v in trial.point.items()
              if k not in stage.labels and k != sweep.GIN_FILE_AXIS}
    values.update({k: ref for k, (ref, _) in stage.refs.items()})
    bindings, depends = list(spec.bindings), []
    for key, value in values.items():
      if is_reference(value):
        target = _select(value, trial.point, stages[value["stage"]],
                         lines, refs_at[(key, repr(value))], key)
        depends.append(target.key)
        value = target.trial.model_dir
      bindings.append(sweep.gin_binding(key, value))
    if vocabulary:
      bindings.append(sweep.gin_binding(VOCABULARY, vocabulary))
    bindings.append(sweep.gin_binding(stage.folder_macro, model_dir))
    runs.append(Run(stage=stage.name, depends_on=tuple(depends), trial=dataclasses.replace(
        trial, name=run_name, point=point, bindings=tuple(bindings), model_dir=model_dir,
        command=stage.command)))
  return runs


def _select(ref: Mapping, point: Mapping, target: Stage, lines: _Lines, at: tuple,
            key: str) -> Run:
  wanted = {a: (point[a] if v == SAME else v) for a, v in ref.items() if a != "stage"}
  matches = [r for r in target.runs if all(_equal(r.trial.point.get(a), v)
                                            for a, v in wanted.items())]
  if len(matches) != 1:
    shown = ", ".join(f"{a}={v}" for a, v in wanted.items()) or "no axes"
    if not matches:
      raise lines.error(at, f"{key}: no run of stage {target.name} has {shown}; its runs: "
                        f"{', '.join(r.trial.name for r in target.runs)}")
    free = [a for a in target.axes if a not in wanted]
    raise lines.error(at, f"{key}: {len(matches)} runs of stage {target.name} have {shown}; "
                      f"add one of {', '.join(free)} (a value, or `same`) to pick one")
  return matches[0]


def _equal(a: Any, b: Any) -> bool:
  return a == b or (a is not None and b is not None and str(a) == str(b))


def _arms(raw: Mapping, stages: Mapping[str, Stage], lines: _Lines
          ) -> tuple[dict, Optional[str]]:
  arms_raw = raw.get("arms") or {}
  if not isinstance(arms_raw, dict):
    raise lines.error(("arms",), "arms must be a mapping {arm: {stage: S, AXIS: value}}")
  arms = {}
  for arm, select in arms_raw.items():
    at = ("arms", arm)
    if not isinstance(select, dict) or "stage" not in select:
      raise lines.error(at, f"arm {arm} must name a stage and axis values, e.g. "
                        "{stage: finetune, INIT: random}")
    stage = stages.get(select["stage"])
    if stage is None:
      raise lines.error(at, f"arm {arm} names stage {select['stage']!r}, which is not a stage "
                        f"of the study; stages: {', '.join(stages)}")
    for axis in select:
      if axis != "stage" and axis not in stage.axes:
        raise lines.error(at + (axis,), f"arm {arm} selects {axis}, which is not an axis of "
                          f"stage {stage.name}; its axes: {', '.join(stage.axes)}")
    wanted = {a: v for a, v in select.items() if a != "stage"}
    runs = [r.trial.name for r in stage.runs
            if all(_equal(r.trial.point.get(a), v) for a, v in wanted.items())]
    if not runs:
      raise lines.error(at, f"arm {arm} selects no run of stage {stage.name} "
                        f"({', '.join(f'{a}={v}' for a, v in wanted.items())}); its runs: "
                        f"{', '.join(r.trial.name for r in stage.runs)}")
    arms[str(arm)] = {"stage": stage.name, "select": wanted, "runs": runs}
  reference = raw.get("reference")
  if arms and reference is None:
    raise lines.error(("arms",), f"arms need a reference: the arm the others are compared "
                      f"with (one of {', '.join(arms)})")
  if reference is not None and str(reference) not in arms:
    raise lines.error(("reference",), f"reference arm {reference!r} is not among the arms"
                      + (f" ({', '.join(arms)})" if arms else "; declare arms: first"))
  return arms, (str(reference) if reference is not None else None)


# ------------------------------------------------------------------------------------------
# Gin, the vocabulary, running


def validate_study(study: Study, out=None) -> None:
  """Every run's gin, as its `recast train` will read it (sweep.validate_trials); with the
  study's vocabulary known, also every training run's truncation check, a fuse stage's
  contributors included (sweep.check_trial_lengths), so lengths that cut too much stop the study before its first
  run, not when a later stage starts. Warnings go to `out` (stderr)."""
  for stage in study.stages.values():
    try:
      sweep.validate_trials(stage.spec, [r.trial for r in stage.runs])
    except errors.UserError as e:
      raise type(e)(f"{study.path}, stage {stage.name}: {e}") from None
  if study.vocabulary is None:
    return  # (lengths depend on the vocabulary, built when the study starts)
  for stage in study.stages.values():
    try:  # (a finished run was checked when it started)
      warnings = sweep.check_trial_lengths(
          stage.spec, [r.trial for r in stage.runs if not sweep.is_done(r.trial)])
    except errors.UserError as e:
      raise type(e)(f"{study.path}, stage {stage.name}: {e}") from None
    for warning in warnings:
      print(f"warning: stage {stage.name}, {warning}", file=out or sys.stderr, flush=True)


def compared_task_names(study: Study) -> list[str]:
  """The tasks of the arms' runs (else of the last stage's): the study's text."""
  import gin
  from recast.mixtures import lookup
  from recast.tasks import task_files
  names = {a["stage"] for a in study.arms.values()} or {list(study.stages)[-1]}
  found = []
  for stage in (study.stages[n] for n in names):
    for path in stage.spec.tasks_files:
      task_files.register_task_file(path)
    for run in stage.runs:
      try:
        sweep.parse_trial_gin(stage.spec, run.trial)
        for task in sweep.trial_task_names():
          lookup.get_mixture_or_task(task)
          if task not in found:
            found.append(task)
      finally:
        gin.clear_config(clear_constants=False)
  return found


def build_vocabulary(study: Study) -> str:
  """VOCABULARY=auto over the compared tasks' training text (cached by content:
  recast.tasks.vocabularies); returns the model file every run is given."""
  import gin
  import seqio
  from recast.tasks import vocabularies
  tasks = compared_task_names(study)
  if not tasks:
    raise StudySpecError(f"{study.path}: no compared task to build the study's vocabulary "
                         "from; set `vocabulary:` to a SentencePiece model or 'byte'")
  name = tasks[0]
  if len(tasks) > 1:
    name = f"study_{study.name}_text"
    if name not in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)
  # The task is bound through a training run's gin (a fuse stage's names a pool instead).
  compared = {a["stage"] for a in study.arms.values()} or {list(study.stages)[-1]}
  trains = [s for s in study.stages.values() if s.command == "train"]
  stage = next((s for s in trains if s.name in compared), trains[0] if trains else None)
  if stage is None:
    raise StudySpecError(f"{study.path}: a study of fuse stages alone cannot build its "
                         "vocabulary; set `vocabulary:` to a SentencePiece model or 'byte'")
  run = stage.runs[0]
  try:
    gin_config.parse_run_flags(argparse.Namespace(
        gin_file=list(run.trial.gin_files), gin_search_paths=list(stage.spec.gin_search_paths),
        gin_bindings=list(run.trial.bindings) + [sweep.gin_binding("MIXTURE_OR_TASK_NAME",
                                                                   name)]),
        command="train", finalize=False)
    vocab = vocabularies.auto_vocabulary()
    path = vocabularies.vocabulary_file(vocab)
  finally:
    gin.clear_config(clear_constants=False)
  if not path:
    raise StudySpecError(f"{study.path}: the built vocabulary has no file; set `vocabulary:`")
  return str(path)


def describe(study: Study) -> dict:
  """study.json: the graph of runs, the arms and the reference (read by study_report)."""
  return {
      "name": study.name, "vocabulary": study.vocabulary, "reference": study.reference,
      "metric": study.metric, "arms": study.arms,
      "arm_order": list(study.arms),  # the spec's order (the file's keys are sorted)
      "stages": {name: {
          "command": stage.command, "seed_axis": stage.spec.seed_axis, "axes": stage.axes,
          "labels": list(stage.labels),
          "runs": [{"name": r.trial.name, "point": r.trial.point,
                    "model_dir": os.path.relpath(r.trial.model_dir, study.study_dir),
                    "depends_on": list(r.depends_on), "bindings": list(r.trial.bindings)}
                   for r in stage.runs]} for name, stage in study.stages.items()}}


def print_graph(study: Study, out=None) -> None:
  """--dry_run: per stage, each run, its bindings and the runs it depends on."""
  out = out or sys.stdout
  vocab = study.vocabulary or "built from the compared tasks' text at the start"
  print(f"study {study.name}: {study.study_dir}; vocabulary: {vocab}", file=out)
  for stage in study.stages.values():
    command = "" if stage.command == "train" else f", recast {stage.command}"
    print(f"stage {stage.name} ({len(stage.runs)} runs{command}):", file=out)
    for run in stage.runs:
      shown = [b for b in run.trial.bindings if not b.startswith(f"{stage.folder_macro}=")]
      deps = f"  <- {', '.join(run.depends_on)}" if run.depends_on else ""
      print(f"  {run.trial.name}: {' '.join(shown)}{deps}", file=out)
  for index, level in enumerate(levels(study)):
    print(f"level {index}: {len(level)} runs ({stage_counts(study, level)})", file=out)
  for arm, selection in study.arms.items():
    mark = " (reference)" if arm == study.reference else ""
    print(f"arm {arm}{mark}: {selection['stage']}: {', '.join(selection['runs'])}", file=out)


@dataclasses.dataclass
class StudyOutcome:
  study_dir: Path
  ran: dict           # stage -> [run names run now]
  skipped: dict       # stage -> [run names already done]
  failed: dict        # stage -> [run names that failed]
  not_started: dict = dataclasses.field(default_factory=dict)  # stage -> [runs needing one]
  report_dir: Optional[Path] = None


def levels(study: Study) -> list[list[Run]]:
  """The study's runs by depth (--dry_run prints them): level k holds the runs whose longest
  chain of references has k links (level 0: runs that need no other run), whatever their
  stage. Runs do not wait for their level: each starts once the runs it names are done."""
  level: dict[str, int] = {}
  for run in study.all_runs():  # in run order: a run's dependencies come first
    level[run.key] = 1 + max((level[d] for d in run.depends_on), default=-1)
  out: list[list[Run]] = [[] for _ in range(1 + max(level.values(), default=-1))]
  for run in study.all_runs():
    out[level[run.key]].append(run)
  return out


def start_order(study: Study, runs: Sequence[Run]) -> list[Run]:
  """`runs` in the order they take free slots: the runs with the longest chain of runs
  waiting below them first, then the spec's order; a run comes after the runs it names."""
  below: dict[str, int] = {}
  for run in reversed(study.all_runs()):  # dependents come later in run order
    below.setdefault(run.key, 0)
    for d in run.depends_on:
      below[d] = max(below.get(d, 0), below[run.key] + 1)
  order = {r.key: i for i, r in enumerate(study.all_runs())}
  return sorted(runs, key=lambda r: (-below.get(r.key, 0), order[r.key]))


def stage_counts(study: Study, runs: Sequence[Run]) -> str:
  """"pretrain 2, finetune 4": how many of `runs` each stage has, in the spec's order."""
  return ", ".join(f"{name} {sum(r.stage == name for r in runs)}"
                   for name in study.stages if any(r.stage == name for r in runs))


def run_study(path: str | os.PathLike, *, address: Optional[str] = None,
              num_cpus: Optional[int] = None, num_gpus: Optional[float] = None,
              extra_tasks_files: Sequence[str] = (), extra_gin_files: Sequence[str] = (),
              extra_bindings: Sequence[str] = (), extra_search_paths: Sequence[str] = (),
              verbose: int = 1) -> StudyOutcome:
  """Checks the whole study, builds its vocabulary when none is given, runs the unfinished
  runs on Ray (recast.jobs.sweep's trials and retries) as one Tune experiment in which
  each run starts as soon as the runs it names are done (`start_order` for free slots),
  writes each stage's sweep tables, then the report. A run needing a failed run is not
  started; the study then ends with the failures (started again, it retries them)."""
  from recast.jobs import study_report
  extra = dict(extra_tasks_files=extra_tasks_files, extra_gin_files=extra_gin_files,
               extra_bindings=extra_bindings, extra_search_paths=extra_search_paths)
  study = load_study(path, **extra)
  if study.vocabulary is None:
    study = load_study(path, **extra, vocabulary=build_vocabulary(study))
  validate_study(study)
  for stage in study.stages.values():  # a study started before: the same runs, or nothing
    changed = sweep.trials_changed(stage.spec, [r.trial for r in stage.runs])
    if changed:
      raise StudySpecError(
          f"stage {stage.name} of {study.study_dir} started with other runs than {path} now "
          f"gives ({changed}): the spec's or the command line's gin files or bindings "
          "changed; run it with the ones it started with, or give the study another name "
          "(`name:`) or storage_path")
  study.study_dir.mkdir(parents=True, exist_ok=True)
  atomic_files.write_json(study.study_dir / STUDY_FILE, describe(study))
  outcome = StudyOutcome(study_dir=study.study_dir, ran={}, skipped={}, failed={})
  with contextlib.ExitStack() as held:  # one driver per stage folder, for the whole study
    for stage in study.stages.values():
      held.enter_context(sweep.hold_experiment(stage.spec, [r.trial for r in stage.runs],
                                               resume=True))
      outcome.ran[stage.name] = []
      outcome.skipped[stage.name] = [r.trial.name for r in stage.runs
                                     if sweep.is_done(r.trial)]
    pending = start_order(study, [r for r in study.all_runs() if not sweep.is_done(r.trial)])
    if pending:
      print(f"{len(pending)} runs to run ({stage_counts(study, pending)}); each starts as soon "
            "as the runs it names are done", flush=True)
      index = {r.key: i for i, r in enumerate(pending)}
      failed = sweep.tune_trials(
          [(study.stages[r.stage].spec, r.trial) for r in pending],
          tune_dir=study.study_dir / "tune", max_concurrent_trials=study.max_concurrent_runs,
          max_failures=study.stages[pending[0].stage].spec.max_failures, address=address,
          num_cpus=num_cpus, num_gpus=num_gpus, verbose=verbose,
          after=[[index[d] for d in r.depends_on if d in index] for r in pending],
          group_limits=[(r.stage, study.stages[r.stage].spec.max_concurrent_trials)
                        for r in pending])
      failed_names = {(spec.name, trial.name) for spec, trial in failed}
      for run in pending:
        if (run.stage, run.trial.name) in failed_names:
          outcome.failed.setdefault(run.stage, []).append(run.trial.name)
        elif sweep.is_done(run.trial):
          outcome.ran[run.stage].append(run.trial.name)
        else:  # it needs a failed run
          outcome.not_started.setdefault(run.stage, []).append(run.trial.name)
      for stage in study.stages.values():  # tables of the stages now finished
        if any(r.stage == stage.name for r in pending) and all(
            sweep.is_done(r.trial) for r in stage.runs):
          sweep.write_results(stage.spec, [r.trial for r in stage.runs])
      if outcome.failed:
        return outcome
  if study.arms:
    outcome.report_dir = study_report.write_study_report(study.study_dir)
  return outcome


# ------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("spec", metavar="SPEC", help="study spec (YAML); see docs/studies.md")
  parser.add_argument("--dry_run", action="store_true",
                      help="check the spec and every run's gin, print the graph of runs, "
                      "run none")
  launcher.add_ray_arguments(parser)


def main(args: argparse.Namespace) -> int:
  """`recast study SPEC.yaml [--dry_run] [--address=auto] [--gin.NAME=VALUE ...]`."""
  extra = dict(extra_tasks_files=getattr(args, "tasks_file", []) or [],
               extra_gin_files=getattr(args, "gin_file", []) or [],
               extra_bindings=getattr(args, "gin_bindings", []) or [],
               extra_search_paths=getattr(args, "gin_search_paths", []) or [])
  if args.dry_run:
    study = load_study(args.spec, **extra)
    validate_study(study)
    print_graph(study)
    lengths = ("lengths checked" if study.vocabulary else
               "lengths checked when it starts (once its vocabulary is built)")
    print(f"{sum(len(s.runs) for s in study.stages.values())} runs in "
          f"{len(study.stages)} stages; gin checked, {lengths}; nothing started")
    return 0
  outcome = run_study(args.spec, address=args.address, num_cpus=args.num_cpus,
                      num_gpus=args.num_gpus, **extra)
  for stage, ran in outcome.ran.items():
    print(f"stage {stage}: ran {len(ran)} runs ({len(outcome.skipped[stage])} were already "
          "done)")
  for stage, waiting in outcome.not_started.items():
    print(f"stage {stage}: {len(waiting)} runs not started (they need a failed run)",
          file=sys.stderr)
  if outcome.failed:
    for stage, failed in outcome.failed.items():
      print(f"stage {stage}: {len(failed)} runs failed (retried unless their input was "
            f"rejected): {', '.join(failed)}; see {outcome.study_dir}/{stage}/runs/<run>/"
            f"{sweep.LOG_FILE}", file=sys.stderr)
    print("then run the study again (finished runs are kept)", file=sys.stderr)
    return 1
  if outcome.report_dir:
    print((outcome.report_dir / "report.md").read_text())
    print(f"report: {outcome.report_dir}")
  return 0
