"""The registry of text tasks: a `specs.TextTaskSpec` validated and registered as a
`seqio.Task` (source, text-to-text preprocessors, tokenization, postprocessor, metrics), and
the specs of the registered tasks for code that needs to know a task's data.

>>> task = register_text_task(spec)          # a seqio.Task in seqio.TaskRegistry
>>> task_spec(spec.name) is spec
True
"""

from __future__ import annotations

import difflib
from typing import Callable

import seqio
import tensorflow as tf

from recast.tasks import metrics, postprocessors, preprocessors, sources, specs, vocabularies

_SPECS: dict[str, specs.TextTaskSpec] = {}


def task_spec(name: str) -> specs.TextTaskSpec:
  """The spec of a registered text task; TaskSpecError with close matches otherwise."""
  if name not in _SPECS:
    close = difflib.get_close_matches(name, list(_SPECS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else \
        "; `recast tasks list` shows every task"
    raise specs.TaskSpecError(f"no text task named {name!r}{hint}")
  return _SPECS[name]


def registered_specs() -> dict[str, specs.TextTaskSpec]:
  """Name -> spec of every task registered through `register_text_task`."""
  return dict(_SPECS)


def validate_spec(spec: specs.TextTaskSpec) -> None:
  """Raises TaskSpecError naming the first thing wrong with `spec` (registers nothing)."""
  where = f"task {spec.name!r}"
  if not spec.name or spec.name != spec.name.lower() or not spec.name.replace("_", "") \
      .replace(".", "").isalnum():
    raise specs.TaskSpecError(f"{where}: names are lower case letters, digits, '_' and '.'")
  if not spec.source and not spec.files:
    raise specs.TaskSpecError(f"{where}: give a TFDS `source` or local `files` per split")
  if not spec.splits:
    raise specs.TaskSpecError(f"{where}: no splits")
  if spec.files and set(spec.files) != set(spec.splits):
    raise specs.TaskSpecError(f"{where}: `files` gives splits {sorted(spec.files)} but `splits` "
                        f"is {list(spec.splits)}; they must be the same")
  if spec.is_classification and spec.is_regression:
    raise specs.TaskSpecError(f"{where}: set label_names (classification) or regression_step "
                        "(regression), not both")
  if spec.is_classification and len(set(spec.label_names)) != len(spec.label_names):
    raise specs.TaskSpecError(f"{where}: label names repeat: {list(spec.label_names)}")
  for template in (spec.inputs_template, spec.targets_template):
    try:
      specs.template_fields(template)
    except ValueError as e:
      raise specs.TaskSpecError(f"{where}: bad template {template!r}: {e}") from e
  if not spec.input_fields:
    raise specs.TaskSpecError(f"{where}: inputs_template {spec.inputs_template!r} names no field")
  unknown = [m for m in spec.metric_names if m not in metrics.METRICS_BY_NAME]
  if unknown:
    raise specs.TaskSpecError(f"{where}: unknown metrics {unknown}; known: "
                        f"{', '.join(sorted(metrics.METRICS_BY_NAME))}")
  if spec.postprocessor_name not in postprocessors.POSTPROCESSORS:
    raise specs.TaskSpecError(f"{where}: unknown postprocessor {spec.postprocessor_name!r}; "
                        f"known: {', '.join(sorted(postprocessors.POSTPROCESSORS))}")


def text_preprocessors(spec: specs.TextTaskSpec) -> list[Callable[..., tf.data.Dataset]]:
  """The steps that turn source examples into {"inputs": str, "targets": str, ...}.

  Objectives that reuse a task's text (span corruption on its inputs) start from these.
  """
  return [*spec.prepare, preprocessors.make_text_to_text(spec)]


def register_text_task(spec: specs.TextTaskSpec, *, overwrite: bool = False) -> seqio.Task:
  """Validates `spec` and registers it as a `seqio.Task` (all or nothing).

  Raises TaskSpecError when the spec is invalid or the name is taken (unless
  `overwrite`, which replaces the old task and spec).
  """
  validate_spec(spec)
  taken = spec.name in seqio.TaskRegistry.names() or spec.name in _SPECS
  if taken and not overwrite:
    raise specs.TaskSpecError(f"task {spec.name!r} is already registered; choose another name "
                        "or pass overwrite=True to replace it")
  task = seqio.Task(
      name=spec.name,
      source=sources.TaskDataSource(spec),
      output_features=vocabularies.output_features(),
      preprocessors=[*text_preprocessors(spec), seqio.preprocessors.tokenize,
                     seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=postprocessors.make_postprocessor(spec),
      metric_fns=[metrics.METRICS_BY_NAME[m] for m in spec.metric_names])
  if taken:
    seqio.TaskRegistry.remove(spec.name)
  seqio.TaskRegistry.add_provider(spec.name, task)
  _SPECS[spec.name] = spec
  return task


def unregister_text_task(name: str) -> None:
  """Removes a task and its spec (tests, and task files replacing their own tasks)."""
  seqio.TaskRegistry.remove(name)
  _SPECS.pop(name, None)
