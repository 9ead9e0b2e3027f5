"""Declarative task files: new SeqIO tasks from the user's own JSONL/CSV/TSV, without Python.

A task file is YAML with a list of tasks (`recast ... --tasks_file tasks.yaml`):

    tasks:
      - name: trec_coarse_local
        files: {train: data/trec/train.jsonl, validation: data/trec/test.tsv}
        inputs: "trec question: {text}"
        targets: "{coarse}"
        labels: [ABBR, ENTY, DESC, HUM, LOC, NUM]
        metrics: [accuracy, macro_f1]

File paths are relative to the YAML file. `inputs`/`targets` are templates over the
columns. With `labels`, the target is one label column whose values are label names or
integer indices into `labels` (-1: unlabelled); with `regression: true` (or the rounding
step, e.g. `regression: 0.2`) it is one numeric column; otherwise the target is free
text. `metrics` are names in `tasks.metrics.METRICS_BY_NAME` (default: accuracy, or
pearson_spearman for regression).

Every file is read and checked before anything is registered: a misspelt column, a label
outside the list, an empty split or an unreadable row is a `TaskFileError` naming the
file, line and column, and no task of the file is registered. In Python,
`register_task(name=..., files=..., inputs=..., targets=..., labels=...)` does the same
for one task. Each task becomes a `specs.TextTaskSpec` with `files`, registered with
`registry.register_text_task`, so it reads its data through `tasks.sources` like any task.

A task file may also declare mixtures of its tasks, of built-in tasks (and derived
`<task>_<objective>` tasks) and of mixtures registered before (or earlier in the file):

    mixtures:
      - name: trec_sst_stsb
        tasks: [trec_coarse_local, sst_local, stsb_local]
        rate: examples_proportional      # T5's r = min(e, K); the default
        maximum: 65536                   # K, optional (also for temperature)
      - name: trec_sst_t2
        tasks: [trec_coarse_local, sst_local]
        rate: temperature                # r = min(e, K) ** (1 / T)
        temperature: 2
      - name: trec_sst_equal
        tasks: [trec_coarse_local, sst_local]
        rate: equal
      - name: trec_mostly
        tasks: {trec_coarse_local: 3, sst_local: 1}   # explicit rates

Counting rates (examples-proportional, temperature) use each member's train split, so a
member mixture needs `equal` or explicit rates. Any key not listed here (at the top, in a
task or in a mixture) is an error that names the allowed keys.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import seqio
import yaml

from recast.mixtures import rates as rates_lib
from recast.tasks import metrics as metrics_lib
from recast.tasks import pretraining, sources
from recast.tasks import registry, specs as specs_lib
from recast import errors

_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_TOP_LEVEL_KEYS = {"tasks", "mixtures"}
_ENTRY_KEYS = {"name", "files", "inputs", "targets", "labels", "regression", "metrics"}
_MIXTURE_KEYS = {"name", "tasks", "rate", "maximum", "temperature"}
# rate name -> the keys it takes besides name and tasks
MIXTURE_RATES = {"examples_proportional": {"maximum"}, "temperature": {"maximum", "temperature"},
                 "equal": set(), "explicit": set()}
_NAME = re.compile(r"[a-z0-9_.]+")
DEFAULT_REGRESSION_STEP = 0.1


class TaskFileError(errors.UserError):
  """A task file (or a data file it names) that cannot be registered as written."""


# ------------------------------------------------------------------------ reading rows


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (line number, row) from a JSONL, CSV or TSV file; raises TaskFileError on bad rows."""
  kind = _FORMATS.get(path.suffix)
  if kind is None:
    raise TaskFileError(f"{path}: unknown file type '{path.suffix}'; use .jsonl, .csv or .tsv")
  if not path.is_file():
    raise TaskFileError(f"{path}: no such file; paths in a task file are relative to it")
  try:
    yield from _decoded_rows(path, kind)
  except UnicodeDecodeError:
    raise TaskFileError(_not_utf8(path)) from None


def _not_utf8(path: Path) -> str:
  return sources.not_utf8(path) or f"{path} is not UTF-8 text; save it as UTF-8"


def _decoded_rows(path: Path, kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
  with open(path, encoding="utf-8", newline="") as f:
    if kind == "jsonl":
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise TaskFileError(f"{path}, line {line_number}, column {e.colno}: not valid JSON "
                              f"({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
          raise TaskFileError(f"{path}, line {line_number}: expected a JSON object, got "
                              f"{type(row).__name__}")
        yield line_number, row
      return
    # The same dialect `tasks.sources` reads these files with at training time.
    reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",")
    try:
      header = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise TaskFileError(f"{path}, line 1: unreadable header ({e})") from None
    start = reader.line_num
    try:
      for values in reader:
        if not values:  # a blank line, skipped as csv.DictReader does
          continue
        if len(values) != len(header):
          raise TaskFileError(
              f"{path}, line {reader.line_num}: {len(values)} fields but the header has "
              f"{len(header)} ({', '.join(header)}); quote fields that contain the delimiter")
        yield reader.line_num, dict(zip(header, values))
    except csv.Error as e:
      raise TaskFileError(f"{path}, line {reader.line_num or start}: unreadable row ({e})") \
          from None


# ------------------------------------------------------------------------ checking


def template_columns(template: str) -> list[str]:
  """The column names a template uses: "q: {text} ({topic})" -> ["text", "topic"]."""
  try:
    return specs_lib.template_fields(template)
  except ValueError as e:
    raise TaskFileError(f"template {template!r} is not valid ({e}); write columns as {{name}} "
                        "and literal braces as {{ and }}") from None


def _is_label(value: Any, labels: Sequence[str]) -> bool:
  """What `tasks.sources` accepts as a label: a name (text), or an index (-1 unlabelled)."""
  if isinstance(value, str) and value in labels:
    return True
  if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
    return False
  try:
    return -1 <= int(value) < len(labels)
  except (TypeError, ValueError):
    return False


def _check_split(spec: specs_lib.TextTaskSpec, split: str, path: Path) -> int:
  """Reads one split file, checking every row; returns its number of examples."""
  columns = list(dict.fromkeys(template_columns(spec.inputs_template)
                               + template_columns(spec.targets_template)))
  label = spec.label_field
  n = 0
  for line_number, row in _read_rows(path):
    for column in columns:
      if column not in row:
        raise TaskFileError(
            f"{path}, line {line_number}, column '{column}': task '{spec.name}' uses column "
            f"'{column}' but the row has only: {', '.join(sorted(row))}")
    if spec.is_classification and not _is_label(row[label], spec.label_names):
      raise TaskFileError(
          f"{path}, line {line_number}, column '{label}': label {row[label]!r} is not in the "
          f"labels of task '{spec.name}' ({', '.join(spec.label_names)}) nor an index into "
          "them")
    if spec.is_regression:
      try:
        float(row[label])
      except (TypeError, ValueError):
        raise TaskFileError(f"{path}, line {line_number}, column '{label}': {row[label]!r} is "
                            f"not a number (task '{spec.name}' is a regression)") from None
    n += 1
  if n == 0:
    raise TaskFileError(f"{path}: split '{split}' of task '{spec.name}' has no examples")
  for _ in sources.read_rows(path, spec):  # exactly what training will read
    pass
  return n


def task_spec_for_files(*, name: str, files: Mapping[str, str | os.PathLike], inputs: str,
                        targets: str, labels: Optional[Sequence[str]] = None,
                        regression: bool | float = False,
                        metrics: Optional[Sequence[str]] = None,
                        base_dir: str | os.PathLike = ".",
                        where: str = "") -> specs_lib.TextTaskSpec:
  """Checks one task's settings and every row of its files; returns its spec (unregistered).

  Args:
    name: the task name (lower case letters, digits, underscores).
    files: split name -> JSONL/CSV/TSV path (relative paths resolve against `base_dir`).
    inputs: template over the columns, e.g. "trec question: {text}".
    targets: the target template; one column ("{coarse}") with labels or regression.
    labels: class names for classification; values in the data are names or indices.
    regression: True (round targets to 0.1) or the rounding step; exclusive with labels.
    metrics: names in `tasks.metrics.METRICS_BY_NAME`.
    base_dir: folder that relative paths are relative to (the task file's folder).
    where: prefix for error messages (the task file).

  Raises:
    TaskFileError naming the file, line and column of the first problem.
  """
  prefix = f"{where}task '{name}': "
  if not isinstance(files, Mapping) or not files:
    raise TaskFileError(f"{prefix}'files' must map split names to files, e.g. "
                        "{train: train.jsonl, validation: dev.tsv}")
  for key, template in (("inputs", inputs), ("targets", targets)):
    if not isinstance(template, str) or not template_columns(template):
      raise TaskFileError(f"{prefix}'{key}' must be a template naming at least one column, "
                          "e.g. \"question: {text}\"")
  if labels is not None and regression:
    raise TaskFileError(f"{prefix}give 'labels' (classification) or 'regression', not both")
  if labels is not None:
    labels = tuple(str(label) for label in labels)
    if not labels or len(set(labels)) != len(labels):
      raise TaskFileError(f"{prefix}'labels' must be a non-empty list of distinct names")
  label_field = None
  if labels is not None or regression:
    label_field = template_columns(targets)[0]
    if targets.strip() != "{%s}" % label_field:
      raise TaskFileError(f"{prefix}with labels or regression, 'targets' must be one column, "
                          f"e.g. \"{{label}}\"; got {targets!r}")
  step = None
  if regression:
    step = DEFAULT_REGRESSION_STEP if regression is True else float(regression)
  metrics = (metrics,) if isinstance(metrics, str) else tuple(
      metrics or (("pearson_spearman",) if step else ("accuracy",)))
  unknown = [m for m in metrics if m not in metrics_lib.METRICS_BY_NAME]
  if unknown:
    raise TaskFileError(f"{prefix}unknown metric(s) {', '.join(unknown)}; available: "
                        f"{', '.join(sorted(metrics_lib.METRICS_BY_NAME))}")
  paths = {str(split): Path(base_dir) / os.path.expanduser(str(path))
           for split, path in files.items()}
  for path in paths.values():
    if path.suffix not in _FORMATS:
      raise TaskFileError(f"{path}: unknown file type '{path.suffix}'; use .jsonl, .csv or .tsv")
  spec = specs_lib.TextTaskSpec(
      name=name, source="", splits=tuple(paths), inputs_template=inputs,
      targets_template=targets, label_field=label_field, label_names=labels,
      regression_step=step, metric_names=metrics,
      files={split: str(path) for split, path in paths.items()},
      description=f"from task file {where.rstrip(': ')}" if where else "from local files")
  try:
    registry.validate_spec(spec)
  except specs_lib.TaskSpecError as e:
    raise TaskFileError(f"{where}{e}") from None
  num_examples = {split: _check_split(spec, split, path) for split, path in paths.items()}
  return dataclasses.replace(spec, num_examples=num_examples)


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  """One `mixtures:` entry, checked: members and how their mixing rates are computed.

  `rate` is a key of MIXTURE_RATES; `weights` (explicit rates) is parallel to `members`.
  """

  name: str
  members: tuple[str, ...]
  rate: str = "examples_proportional"
  maximum: Optional[int] = None
  temperature: Optional[float] = None
  weights: Optional[tuple[float, ...]] = None
  path: str = ""  # the task file (absolute), for `recast tasks list`

  def mixing_rates(self) -> list[tuple[str, Any]]:
    """[(member, rate)] for `seqio.Mixture`: a number, or a strategy of mixtures.rates."""
    if self.rate == "explicit":
      return list(zip(self.members, self.weights))
    rate = {"examples_proportional": lambda: rates_lib.examples_proportional(self.maximum),
            "temperature": lambda: rates_lib.temperature_scaled(self.temperature,
                                                                maximum=self.maximum),
            "equal": lambda: rates_lib.equal}[self.rate]()
    return [(member, rate) for member in self.members]


@dataclasses.dataclass(frozen=True)
class TaskFile:
  """A parsed and checked task file: its tasks and mixtures, in file order."""

  tasks: tuple[specs_lib.TextTaskSpec, ...]
  mixtures: tuple[MixtureSpec, ...]


def _load_yaml(path: Path) -> Any:
  try:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
  except OSError as e:
    raise TaskFileError(f"cannot read task file {path}: {e.strerror}") from None
  except UnicodeDecodeError:
    raise TaskFileError(_not_utf8(path)) from None
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    raise TaskFileError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None


def _check_keys(keys: Any, allowed: set[str], what: str) -> None:
  unknown = set(map(str, keys)) - allowed
  if unknown:
    raise TaskFileError(f"{what} has unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(sorted(allowed))}")


def parse_task_file(path: str | os.PathLike) -> TaskFile:
  """Parses a YAML task file and checks every task, data file and mixture; registers nothing.

  The file is known by its absolute path, so one file named two ways is one file.
  """
  shown = Path(path)
  absolute = Path(os.path.abspath(os.path.expanduser(str(path))))
  document = _load_yaml(absolute)
  if isinstance(document, dict):
    _check_keys(document, _TOP_LEVEL_KEYS, f"{shown}: the file")
  if not isinstance(document, dict) or not (document.get("tasks") or document.get("mixtures")):
    raise TaskFileError(f"{shown}: expected a top-level 'tasks:' list of task entries "
                        "(and/or a 'mixtures:' list)")
  entries = document.get("tasks") or []
  if not isinstance(entries, list):
    raise TaskFileError(f"{shown}: 'tasks' must be a list of task entries")
  found, names = [], set()
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or "name" not in entry:
      raise TaskFileError(f"{shown}: task entry {i + 1} is not a mapping with a 'name'")
    _check_keys(entry, _ENTRY_KEYS, f"{shown}: task '{entry['name']}'")
    missing = {"files", "inputs", "targets"} - set(entry)
    if missing:
      raise TaskFileError(f"{shown}: task '{entry['name']}' needs {', '.join(sorted(missing))}")
    if entry["name"] in names:
      raise TaskFileError(f"{shown}: task '{entry['name']}' appears twice")
    if isinstance(entry.get("labels"), list) and any(isinstance(v, bool) or v is None
                                                     for v in entry["labels"]):
      raise TaskFileError(f"{shown}: task '{entry['name']}': YAML reads labels such as yes, "
                          f"no, on, off, null as {entry['labels']}; quote them: "
                          "labels: ['yes', 'no']")
    names.add(entry["name"])
    spec = task_spec_for_files(
        name=entry["name"], files=entry["files"], inputs=entry["inputs"],
        targets=entry["targets"], labels=entry.get("labels"),
        regression=entry.get("regression", False), metrics=entry.get("metrics"),
        base_dir=absolute.parent, where=f"{shown}: ")
    found.append(dataclasses.replace(spec, description=f"from task file {absolute}"))
  mixtures = document.get("mixtures") or []
  if not isinstance(mixtures, list):
    raise TaskFileError(f"{shown}: 'mixtures' must be a list of mixture entries")
  parsed: list[MixtureSpec] = []
  for i, entry in enumerate(mixtures):
    parsed.append(_mixture_spec(entry, i, tasks={s.name: s for s in found},
                                earlier={m.name for m in parsed}, where=f"{shown}: ",
                                path=str(absolute)))
  return TaskFile(tuple(found), tuple(parsed))


def read_task_file(path: str | os.PathLike) -> list[specs_lib.TextTaskSpec]:
  """The checked task specs of a YAML task file (mixtures checked too); registers nothing."""
  return list(parse_task_file(path).tasks)


def _mixture_spec(entry: Any, index: int, *, tasks: Mapping[str, specs_lib.TextTaskSpec],
                  earlier: set[str], where: str, path: str) -> MixtureSpec:
  """Checks one `mixtures:` entry against the file's tasks and what is registered."""
  if not isinstance(entry, dict) or "name" not in entry:
    raise TaskFileError(f"{where}mixture entry {index + 1} is not a mapping with a 'name'")
  name = entry["name"]
  what = f"{where}mixture '{name}'"
  _check_keys(entry, _MIXTURE_KEYS, what)
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise TaskFileError(f"{what}: names are lower case letters, digits, '_' and '.'")
  if name in tasks or name in earlier:
    raise TaskFileError(f"{what}: the name is taken by a {'task' if name in tasks else 'mixture'}"
                        " of this file")
  members = entry.get("tasks")
  weights = None
  if isinstance(members, dict):
    weights = tuple(members.values())
    members = tuple(members)
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float))
           or not w >= 0]
    if bad or not any(w > 0 for w in weights):
      raise TaskFileError(f"{what}: explicit rates must be non-negative numbers, at least one "
                          f"positive; got {dict(zip(members, weights))}")
    weights = tuple(float(w) for w in weights)
  elif isinstance(members, list):
    members = tuple(members)
  else:
    raise TaskFileError(f"{what}: 'tasks' must list its members ([task_a, task_b]) or map "
                        "them to explicit rates ({task_a: 2, task_b: 1})")
  if not members or not all(isinstance(m, str) for m in members) \
      or len(set(members)) != len(members):
    raise TaskFileError(f"{what}: 'tasks' must name one or more distinct tasks or mixtures")
  rate = entry.get("rate", "explicit" if weights is not None else "examples_proportional")
  if rate not in MIXTURE_RATES:
    raise TaskFileError(f"{what}: unknown rate {rate!r}; use one of "
                        f"{', '.join(MIXTURE_RATES)}")
  if (rate == "explicit") != (weights is not None):
    raise TaskFileError(f"{what}: " + (
        "explicit rates are given as 'tasks: {task_a: 2, task_b: 1}'" if weights is None else
        f"'tasks' gives explicit rates, so 'rate' must be left out (it says {rate!r})"))
  extra = set(entry) - {"name", "tasks", "rate"} - MIXTURE_RATES[rate]
  if extra:
    raise TaskFileError(f"{what}: rate '{rate}' takes no {', '.join(sorted(extra))}" + (
        f"; it takes {', '.join(sorted(MIXTURE_RATES[rate]))}" if MIXTURE_RATES[rate] else ""))
  maximum, temperature = entry.get("maximum"), entry.get("temperature")
  if maximum is not None and (isinstance(maximum, bool) or not isinstance(maximum, int)
                              or maximum <= 0):
    raise TaskFileError(f"{what}: 'maximum' (T5's K) must be a positive whole number of "
                        f"examples, got {maximum!r}")
  if rate == "temperature" and (isinstance(temperature, bool) or not isinstance(
      temperature, (int, float)) or not temperature > 0):
    raise TaskFileError(f"{what}: rate 'temperature' needs 'temperature: T', a positive "
                        f"number (T5's best: 2); got {temperature!r}")
  for member in members:
    _check_member(member, rate, tasks=tasks, earlier=earlier, what=what)
  return MixtureSpec(name=name, members=members, rate=rate, maximum=maximum,
                     temperature=None if temperature is None else float(temperature),
                     weights=weights, path=path)


def _check_member(member: str, rate: str, *, tasks: Mapping[str, specs_lib.TextTaskSpec],
                  earlier: set[str], what: str) -> None:
  counting = rate in ("examples_proportional", "temperature")
  is_mixture = member in earlier or member in seqio.MixtureRegistry.names()
  if is_mixture and counting:
    raise TaskFileError(f"{what}: member '{member}' is a mixture, which has no example count; "
                        "give the mixture 'rate: equal' or explicit rates")
  if member in tasks:
    if counting and "train" not in tasks[member].files:
      raise TaskFileError(f"{what}: task '{member}' has no train split to count for rate "
                          f"'{rate}'; give it a train file, or give the mixture explicit rates")
    return
  if is_mixture or member in seqio.TaskRegistry.names():
    return
  derived = pretraining.parse_derived_task_name(member)
  if derived and (derived[0] in tasks or derived[0] in registry.registered_specs()):
    return
  known = sorted(set(tasks) | earlier | set(seqio.TaskRegistry.names())
                 | set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(member, known, n=3, cutoff=0.6)
  raise TaskFileError(f"{what}: no task or mixture named '{member}'" + (
      f"; did you mean {', '.join(close)}?" if close else
      "; members are tasks of this file, earlier mixtures of it, or registered tasks and "
      "mixtures (`recast tasks list`)"))


# ------------------------------------------------------------------------ registering

# Mixtures registered from task files, by name: registering the same file again is a no-op.
_FILE_MIXTURES: dict[str, MixtureSpec] = {}


def _register_all(found: Sequence[specs_lib.TextTaskSpec], where: str,
                  mixtures: Sequence[MixtureSpec] = ()) -> list[str]:
  """Registers checked specs and mixtures all or nothing; identical ones already registered
  are kept."""
  registered = registry.registered_specs()
  new = []
  for spec in found:
    if spec.name in registered and registered[spec.name] == spec:
      continue
    if spec.name in registered or spec.name in seqio.TaskRegistry.names() \
        or spec.name in seqio.MixtureRegistry.names():
      raise TaskFileError(f"{where}task '{spec.name}' is already registered (a built-in task or "
                          "another task file); choose another name")
    new.append(spec)
  new_mixtures = []
  for mixture in mixtures:
    if _FILE_MIXTURES.get(mixture.name) == mixture \
        and mixture.name in seqio.MixtureRegistry.names():
      continue
    if mixture.name in seqio.MixtureRegistry.names() \
        or mixture.name in seqio.TaskRegistry.names():
      raise TaskFileError(f"{where}mixture '{mixture.name}' is already registered (a built-in "
                          "task or mixture, or another task file); choose another name")
    new_mixtures.append(mixture)
  done, done_mixtures = [], []
  try:
    for spec in new:
      registry.register_text_task(spec)
      done.append(spec.name)
    for mixture in new_mixtures:
      for member, _ in mixture.mixing_rates():
        pretraining.ensure_pretraining_task(member)  # `<task>_<objective>` on first use
      seqio.MixtureRegistry.add(mixture.name, mixture.mixing_rates())
      done_mixtures.append(mixture.name)
      _FILE_MIXTURES[mixture.name] = mixture
  except BaseException:
    for name in done_mixtures:
      seqio.MixtureRegistry.remove(name)
      _FILE_MIXTURES.pop(name, None)
    for name in done:
      registry.unregister_text_task(name)
    raise
  return [spec.name for spec in found] + [mixture.name for mixture in mixtures]


def register_task(*, name: str, files: Mapping[str, str | os.PathLike], inputs: str,
                  targets: str, labels: Optional[Sequence[str]] = None,
                  regression: bool | float = False, metrics: Optional[Sequence[str]] = None,
                  base_dir: str | os.PathLike = ".") -> seqio.Task:
  """Registers one task over local files, checked exactly as a task file entry is.

  Example:
    register_task(name="trec_coarse_local",
                  files={"train": "trec/train.jsonl", "validation": "trec/test.tsv"},
                  inputs="trec question: {text}", targets="{coarse}",
                  labels=["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"])
  """
  spec = task_spec_for_files(name=name, files=files, inputs=inputs, targets=targets,
                             labels=labels, regression=regression, metrics=metrics,
                             base_dir=base_dir)
  _register_all([spec], where="")
  return seqio.get_mixture_or_task(name)


def register_task_file(path: str | os.PathLike) -> list[str]:
  """Checks every task and mixture of a YAML task file, then registers them all; returns
  their names (tasks, then mixtures).

  Nothing is registered when any task, data row or mixture is bad (TaskFileError names the
  file, line and column). Registering the same file again, under any spelling of its path,
  is a no-op.
  """
  parsed = parse_task_file(path)
  return _register_all(parsed.tasks, where=f"{path}: ", mixtures=parsed.mixtures)


def unregister_task_file(path: str | os.PathLike) -> None:
  """Removes what `register_task_file(path)` registered (tests, long-lived processes)."""
  document = _load_yaml(Path(os.path.abspath(os.path.expanduser(str(path))))) or {}
  for entry in reversed(document.get("mixtures") or []):
    name = entry.get("name") if isinstance(entry, dict) else None
    if name in _FILE_MIXTURES:
      seqio.MixtureRegistry.remove(name)
      del _FILE_MIXTURES[name]
  for entry in document.get("tasks") or []:
    name = entry.get("name") if isinstance(entry, dict) else None
    if name in registry.registered_specs():
      registry.unregister_text_task(name)
