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
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import seqio
import yaml

from recast.tasks import metrics as metrics_lib
from recast.tasks import sources
from recast.tasks import registry, specs as specs_lib
from recast import errors

_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_ENTRY_KEYS = {"name", "files", "inputs", "targets", "labels", "regression", "metrics"}
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


def read_task_file(path: str | os.PathLike) -> list[specs_lib.TextTaskSpec]:
  """Parses a YAML task file and checks every task and data file; registers nothing."""
  path = Path(path)
  try:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
  except OSError as e:
    raise TaskFileError(f"cannot read task file {path}: {e.strerror}") from None
  except UnicodeDecodeError:
    raise TaskFileError(_not_utf8(path)) from None
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    raise TaskFileError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
  entries = document.get("tasks") if isinstance(document, dict) else None
  if not isinstance(entries, list) or not entries:
    raise TaskFileError(f"{path}: expected a top-level 'tasks:' list of task entries")
  found, names = [], set()
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or "name" not in entry:
      raise TaskFileError(f"{path}: task entry {i + 1} is not a mapping with a 'name'")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
      raise TaskFileError(f"{path}: task '{entry['name']}' has unknown key(s) "
                          f"{', '.join(sorted(unknown))}; allowed: "
                          f"{', '.join(sorted(_ENTRY_KEYS))}")
    missing = {"files", "inputs", "targets"} - set(entry)
    if missing:
      raise TaskFileError(f"{path}: task '{entry['name']}' needs {', '.join(sorted(missing))}")
    if entry["name"] in names:
      raise TaskFileError(f"{path}: task '{entry['name']}' appears twice")
    names.add(entry["name"])
    found.append(task_spec_for_files(
        name=entry["name"], files=entry["files"], inputs=entry["inputs"],
        targets=entry["targets"], labels=entry.get("labels"),
        regression=entry.get("regression", False), metrics=entry.get("metrics"),
        base_dir=path.parent, where=f"{path}: "))
  return found


# ------------------------------------------------------------------------ registering


def _register_all(found: Sequence[specs_lib.TextTaskSpec], where: str) -> list[str]:
  """Registers checked specs all or nothing; an identical spec already registered is kept."""
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
  done = []
  try:
    for spec in new:
      registry.register_text_task(spec)
      done.append(spec.name)
  except BaseException:
    for name in done:
      registry.unregister_text_task(name)
    raise
  return [spec.name for spec in found]


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
  """Checks every task of a YAML task file, then registers them all; returns their names.

  Nothing is registered when any task or data row is bad (TaskFileError names the file,
  line and column). Registering the same file again is a no-op.
  """
  return _register_all(read_task_file(path), where=f"{path}: ")
