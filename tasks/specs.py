"""One record per text-to-text task: where its data comes from and how it is cast to text.

Every task recast registers (GLUE, SuperGLUE, the self-pretraining and model-recycling
datasets, tasks from YAML task files) is a `TextTaskSpec` turned into a `seqio.Task` by
`tasks.registry.register_text_task`. Code that needs to know about a task's data (pretraining
objectives: which fields are text; mixtures: split sizes; metrics: label names) asks
`registry.task_spec(name)` instead of reverse-engineering preprocessors. This module only
defines the record (no imports of the modules that consume it, so none of them is a cycle).

Worked example (what goes in, what comes out):

  spec = TextTaskSpec(
      name="glue_mrpc", source="glue/mrpc:2.0.0", splits=("train", "validation", "test"),
      inputs_template=t5_inputs_template("mrpc", ["sentence1", "sentence2"]),
      label_names=("not_equivalent", "equivalent"),
      metric_names=("f1_and_accuracy",))
  registry.register_text_task(spec)

  source example  {"sentence1": "He said ...", "sentence2": "The ...", "label": 1, "idx": 0}
  rendered        {"inputs": "mrpc sentence1: He said ... sentence2: The ...",
                   "targets": "equivalent", "label": 1, "idx": 0}
  then tokenized with the task vocabulary and EOS appended ("inputs"/"targets" int32 [len]).
  The postprocessor maps "equivalent" back to 1 (and any unknown string to -1).
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from recast import errors

# Target text of an example whose label is unknown (test splits carry label -1), as in T5.
UNKNOWN_LABEL = "<unk>"

Preparer = Callable[[tf.data.Dataset], tf.data.Dataset]


class TaskSpecError(errors.UserError):
  """A task spec that cannot be registered, or a task name that is not registered."""


@dataclasses.dataclass(frozen=True)
class TextTaskSpec:
  """Everything recast knows about one text-to-text task.

  Attributes:
    name: the SeqIO task name, lower case (`glue_rte`).
    source: the TFDS builder with config and version (`glue/rte:2.0.0`), or a TFDS
      `huggingface:` name (`huggingface:ag_news`). Empty when `files` gives the data.
    splits: the task's split names, in order (`("train", "validation")`).
    inputs_template: `str.format` template over source fields, e.g.
      "rte sentence1: {sentence1} sentence2: {sentence2}" (see `t5_inputs_template`).
    targets_template: template of the target; `{<label_field>}` renders the label name
      (classification) or the rounded number (regression).
    label_field: the field holding the label (int id, or float for regression); None
      for tasks whose target is free text (ReCoRD, SQuAD).
    label_names: class names by id; None for regression and free-text tasks.
    regression_step: for regression, targets are rounded to this step ("3.8" for 0.2).
    postprocessor: name in `tasks.postprocessors.POSTPROCESSORS` ("class_label",
      "float", "multirc", "record", "text"); chosen from the label kind when empty.
    metric_names: names in `tasks.metrics.METRICS_BY_NAME`.
    keep_fields: source fields kept, unchanged, beside inputs/targets (for metrics).
      `idx` and the label field are always kept when present.
    prepare: task-specific steps on source examples before rendering (e.g. WSC's span
      marking, ReCoRD's one example per answer); each maps a dataset to a dataset.
    num_examples: known split sizes (TFDS metadata), used when no local files are read.
    local_name: folder under a data directory holding `<split>.jsonl|csv|tsv`; by
      default the source without version and namespace (`glue/rte`, `ag_news`).
    data_dir: a data directory for this task alone (overrides DATA_DIR).
    files: explicit local files per split (task files); wins over everything else.
    text_fields: source fields that are natural text (self-pretraining corpora); by
      default the string fields named in `inputs_template`.
    description: one line for `recast tasks list`.
    example_rows: a few source rows in the builder's layout: documentation of what a
      local file holds, and the mock data the registry tests render. Needed when
      `prepare` reads fields the templates do not name.
  """
  name: str
  source: str
  splits: Sequence[str]
  inputs_template: str
  targets_template: str = "{label}"
  label_field: Optional[str] = "label"
  label_names: Optional[Sequence[str]] = None
  regression_step: Optional[float] = None
  postprocessor: str = ""
  metric_names: Sequence[str] = ("accuracy",)
  keep_fields: Sequence[str] = ()
  prepare: Sequence[Preparer] = ()
  num_examples: Optional[Mapping[str, int]] = None
  local_name: Optional[str] = None
  data_dir: Optional[str] = None
  files: Optional[Mapping[str, str]] = None
  text_fields: Optional[Sequence[str]] = None
  description: str = ""
  example_rows: Sequence[Mapping[str, Any]] = ()

  @property
  def is_classification(self) -> bool:
    return self.label_names is not None

  @property
  def is_regression(self) -> bool:
    return self.regression_step is not None

  @property
  def input_fields(self) -> list[str]:
    """Source fields named in `inputs_template`, in order."""
    return template_fields(self.inputs_template)

  @property
  def natural_text_fields(self) -> list[str]:
    """Fields whose text a self-pretraining corpus is made of."""
    if self.text_fields is not None:
      return list(self.text_fields)
    return [f for f in self.input_fields if f != self.label_field]

  @property
  def postprocessor_name(self) -> str:
    if self.postprocessor:
      return self.postprocessor
    if self.is_classification:
      return "class_label"
    return "float" if self.is_regression else "text"

  @property
  def builder_name(self) -> str:
    """`glue/rte:2.0.0` -> `glue/rte`; `huggingface:ag_news` -> `ag_news`."""
    name = self.source.split(":", 1)[1] if self.source.startswith("huggingface:") \
        else self.source.split(":", 1)[0]
    return self.local_name or name

  def render_label(self, label: Any) -> str:
    """The target text of one label value (Python mirror of the TF rendering)."""
    if self.is_classification:
      label = int(label)
      return self.label_names[label] if 0 <= label < len(self.label_names) else UNKNOWN_LABEL
    if self.is_regression:
      return format_regression(float(label), self.regression_step)
    return str(label)


def t5_inputs_template(prefix: str, fields: Sequence[str] | Mapping[str, str]) -> str:
  """T5's casting: "mrpc sentence1: {sentence1} sentence2: {sentence2}".

  `fields` lists source field names, or maps the name shown in the text to the source
  field (`{"hypothesis": "sentence2"}` renders "hypothesis: {sentence2}").
  """
  pairs = fields.items() if isinstance(fields, Mapping) else [(f, f) for f in fields]
  return " ".join([prefix] + [f"{shown}: {{{field}}}" for shown, field in pairs])


def template_fields(template: str) -> list[str]:
  """Field names used by a `str.format` template, in order of appearance."""
  return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def regression_decimals(step: float) -> int:
  """Decimals needed to write multiples of `step` (0.2 -> 1, 0.25 -> 2, 1 -> 0)."""
  for decimals in range(7):
    if abs(round(step, decimals) - step) < 1e-9:
      return decimals
  return 6


def format_regression(value: float, step: float) -> str:
  """Rounds to the nearest multiple of `step` and writes it: (3.71, 0.2) -> "3.8"."""
  rounded = round(value / step) * step
  return f"{rounded:.{regression_decimals(step)}f}"
