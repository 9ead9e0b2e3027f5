"""Pretraining tasks: a task's own text under an objective (self-pretraining), and corpora.

For every text task T (built in, or registered later from Python or a YAML task file),
`T_<objective>` is a pretraining task made of the text of T's train split: every natural
text field of the spec (`TextTaskSpec.natural_text_fields`: the input fields, never the
label), joined by spaces into one document per example, tokenized, concatenated and cut to
the pretraining length, then corrupted by the objective (tasks/objectives.py):

    glue_rte train row  {"sentence1": "A cat sat.", "sentence2": "A cat.", "label": 0}
    document            "A cat sat. A cat."            (no "rte sentence1:", no label)
    glue_rte_span_corruption example
                        {"inputs": [.. <extra_id_0> .. EOS], "targets": [<extra_id_0> .. EOS]}

Derived tasks are registered on first use: `pretraining_task("glue_rte", "prefix_lm")`;
`ensure_pretraining_task(name)`, which name lookups call so that
`MIXTURE_OR_TASK_NAME='glue_rte_span_corruption'` needs no code; or, in gin,
`@tasks.pretraining_task_name()` (gin/experiments/self_pretraining.gin). Plain-text corpora (one
document per line) register with `register_text_corpus`; `wikipedia_en` (the general-domain
corpus of the self-pretraining study) reads `<DATA_DIR>/text/wikipedia_en/part-*.txt`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import random
from pathlib import Path
from typing import Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from recast.tasks import objectives, preprocessors, registry, sources, specs, vocabularies
from recast import errors

TRAIN_SPLIT = "train"
WIKIPEDIA_EN = "wikipedia_en"


class PretrainingTaskError(errors.UserError):
  """A pretraining task that cannot be built; the message says what to change."""


# --------------------------------------------------------------------------- sources


class TrainTextSource(seqio.DataSource):
  """The train split of another task's source, and nothing else (labels are dropped later)."""

  def __init__(self, base: seqio.DataSource):
    self.base = base
    super().__init__(splits=(TRAIN_SPLIT,), num_input_examples=None,
                     caching_permitted=base.caching_permitted)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self.base.supports_arbitrary_sharding

  def list_shards(self, split: str) -> Sequence[str]:
    return self.base.list_shards(TRAIN_SPLIT)

  def get_dataset(self, split: str = TRAIN_SPLIT, shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1
                  ) -> tf.data.Dataset:
    if split != TRAIN_SPLIT:
      raise PretrainingTaskError(f"self-pretraining tasks read only the {TRAIN_SPLIT!r} "
                                 f"split of their task's text, not {split!r}")
    return self.base.get_dataset(split=TRAIN_SPLIT, shuffle=shuffle, seed=seed,
                                 shard_info=shard_info)

  def num_input_examples(self, split: str) -> Optional[int]:
    return self.base.num_input_examples(TRAIN_SPLIT) if split == TRAIN_SPLIT else None

  def __repr__(self) -> str:
    return f"TrainTextSource({self.base!r})"


@dataclasses.dataclass(frozen=True)
class TextCorpus:
  """Plain-text files, one document per line.

  Attributes:
    name: the corpus name; its tasks are `<name>_<objective>`.
    files: glob patterns per split; relative patterns are under the data directory.
    data_dir: a data directory for this corpus alone; else DATA_DIR / $RECAST_DATA_DIR
      (as for tasks, see tasks/sources.py), resolved when the data is read.
    description: one line for `recast tasks list`.
  """
  name: str
  files: Mapping[str, Sequence[str]]
  data_dir: Optional[str] = None
  description: str = ""

  def paths(self, split: str) -> list[str]:
    """The files of `split`, sorted; PretrainingTaskError when there are none."""
    if split not in self.files:
      raise PretrainingTaskError(f"corpus {self.name!r} has no split {split!r}; available: "
                                 f"{', '.join(self.files)}")
    # tasks/sources.py resolves data directories from a spec; a bare one names this corpus.
    where = sources.data_dir_for(specs.TextTaskSpec(
        name=self.name, source="", splits=tuple(self.files), inputs_template="{text}",
        data_dir=self.data_dir))
    found = []
    for pattern in self.files[split]:
      pattern = os.path.expanduser(pattern)
      if not os.path.isabs(pattern):
        if where is None:
          raise PretrainingTaskError(
              f"corpus {self.name!r} reads {pattern!r} under a data directory, and none is "
              f"set: pass --gin.DATA_DIR=/path/to/data (or set ${sources.ENV_VAR})")
        pattern = os.path.join(where, pattern)
      found.extend(sorted(glob.glob(pattern)))
    if not found:
      raise PretrainingTaskError(f"corpus {self.name!r}: no files match "
                                 f"{list(self.files[split])} (data directory: {where})")
    return found


class TextFilesSource(seqio.DataSource):
  """A corpus's lines as {"text": str}, empty lines skipped; files are listed when read."""

  def __init__(self, corpus: TextCorpus):
    self.corpus = corpus
    super().__init__(splits=tuple(corpus.files), num_input_examples=None,
                     caching_permitted=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return self.corpus.paths(split)

  def get_dataset(self, split: str = TRAIN_SPLIT, shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1
                  ) -> tf.data.Dataset:
    files = self.corpus.paths(split)
    if shuffle:  # file order only; seqio shuffles examples after preprocessing
      random.Random(seed).shuffle(files)
    ds = tf.data.TextLineDataset(files)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    ds = ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    return ds.map(lambda line: {"text": line}, num_parallel_calls=tf.data.AUTOTUNE)

  def num_input_examples(self, split: str) -> Optional[int]:
    return None

  def __repr__(self) -> str:
    return f"TextFilesSource(corpus={self.corpus.name!r})"


# --------------------------------------------------------------------------- documents


def documents_preprocessor(fields: Sequence[str], *, spec: Optional[specs.TextTaskSpec] = None):
  """seqio preprocessor: {field: text, ...} -> {"targets": the fields joined by spaces}.

  The fields are read from the source examples as they are; only when one is missing
  there (a field that the spec's `prepare` steps make, e.g. CoNLL's "sentence") do those
  steps run first. Every other field, the label included, is dropped before tokenization.
  """
  if not fields:
    raise PretrainingTaskError("a pretraining corpus needs at least one text field")
  template = " ".join(f"{{{field}}}" for field in fields)
  render_spec = spec or specs.TextTaskSpec(name="corpus", source="", splits=(TRAIN_SPLIT,),
                                           inputs_template=template, label_field=None)

  def to_documents(dataset: tf.data.Dataset) -> tf.data.Dataset:
    if spec is not None and any(f not in dataset.element_spec for f in fields):
      for step in spec.prepare:
        dataset = step(dataset)
    missing = [f for f in fields if f not in dataset.element_spec]
    if missing:
      raise PretrainingTaskError(
          f"{render_spec.name}: no text field {missing[0]!r} in its examples (fields: "
          f"{', '.join(dataset.element_spec)}); set the spec's text_fields")
    return dataset.map(
        lambda ex: {"targets": preprocessors.render_template(template, ex, render_spec)},
        num_parallel_calls=tf.data.AUTOTUNE)

  to_documents.__name__ = "documents_of_" + "_".join(fields)
  return to_documents


def _objective_task(*, name: str, source: seqio.DataSource, fields: Sequence[str],
                    objective: objectives.Objective,
                    output_features: Mapping[str, seqio.Feature],
                    spec: Optional[specs.TextTaskSpec] = None) -> seqio.Task:
  task = seqio.Task(
      name=name, source=source, output_features=output_features,
      preprocessors=[documents_preprocessor(fields, spec=spec), seqio.preprocessors.tokenize,
                     seqio.CacheDatasetPlaceholder(), objective.preprocessor(),
                     seqio.preprocessors.append_eos_after_trim],
      metric_fns=[])
  seqio.TaskRegistry.add_provider(name, task)
  return task


# ---------------------------------------------------------------------- derived tasks


def derived_task_name(base_task_name: str, objective: str = "span_corruption") -> str:
  """`glue_rte`, `prefix_lm` -> `glue_rte_prefix_lm`."""
  return f"{base_task_name}_{objective}"


def parse_derived_task_name(name: str) -> Optional[tuple[str, str]]:
  """(base name, objective name) when `name` ends in an objective's name, else None.

  >>> parse_derived_task_name("glue_rte_random_spans_d25_l10")
  ('glue_rte', 'random_spans_d25_l10')
  """
  marker = "_random_spans_d"
  if marker in name:
    base, _, rest = name.rpartition(marker)
    objective = marker[1:] + rest
    if base and objectives.parse_random_spans_name(objective) is not None:
      return base, objective
  for objective in sorted(objectives.OBJECTIVES, key=len, reverse=True):
    if name.endswith("_" + objective) and len(name) > len(objective) + 1:
      return name[:-len(objective) - 1], objective
  return None


def pretraining_task(base_task_name: str, objective: str = "span_corruption") -> seqio.Task:
  """The task `<base>_<objective>`: `base`'s train-split text (or a corpus) under `objective`.

  Registers it on first call; later calls return the registered task.

  Args:
    base_task_name: a task registered with `tasks.registry.register_text_task` (built in or
      from a task file), or a corpus registered with `register_text_corpus`.
    objective: a name from `tasks.objectives.OBJECTIVES`, or `random_spans_d<D>_l<L>`.

  Raises:
    PretrainingTaskError (or ObjectiveError) naming what is wrong.
  """
  name = derived_task_name(base_task_name, objective)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  chosen = objectives.get_objective(objective)
  if base_task_name in _CORPORA:
    corpus = _CORPORA[base_task_name]
    return _objective_task(name=name, source=TextFilesSource(corpus), fields=("text",),
                           objective=chosen, output_features=vocabularies.output_features())
  try:
    spec = registry.task_spec(base_task_name)
  except specs.TaskSpecError as e:
    raise PretrainingTaskError(
        f"cannot derive {name!r}: {e}. Pretraining tasks derive from text tasks (registered "
        f"with register_text_task or a task file) and corpora ({', '.join(_CORPORA)})") from e
  if TRAIN_SPLIT not in spec.splits:
    raise PretrainingTaskError(f"cannot derive {name!r}: task {base_task_name!r} has no "
                               f"{TRAIN_SPLIT!r} split (it has {', '.join(spec.splits)})")
  fields = spec.natural_text_fields
  if not fields:
    raise PretrainingTaskError(f"cannot derive {name!r}: task {base_task_name!r} names no "
                               "text field; set text_fields in its spec")
  base = seqio.TaskRegistry.get(base_task_name)
  return _objective_task(name=name, source=TrainTextSource(base.source), fields=fields,
                         objective=chosen, output_features=base.output_features, spec=spec)


@gin.configurable(module="tasks")
def pretraining_task_name(base_task_name: str = gin.REQUIRED,
                          objective: str = "span_corruption") -> str:
  """Registers `<base>_<objective>` and returns its name; for gin files that derive the
  task from a macro: `MIXTURE_OR_TASK_NAME = @tasks.pretraining_task_name()` with
  `tasks.pretraining_task_name.base_task_name = %TASK`."""
  return pretraining_task(base_task_name, objective).name


def ensure_pretraining_task(name: str) -> Optional[seqio.Task]:
  """The lookup hook: registers `name` if it is `<task or corpus>_<objective>` and returns
  it; None when `name` is not of that form (or its base is unknown)."""
  parsed = parse_derived_task_name(name)
  if parsed is None:
    return None
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  base, objective = parsed
  if base not in _CORPORA and base not in registry.registered_specs():
    return None
  return pretraining_task(base, objective)


# --------------------------------------------------------------------------- corpora


_CORPORA: dict[str, TextCorpus] = {}


def register_text_corpus(name: str, *, files: str | Sequence[str] | Mapping[str, Sequence[str]],
                         data_dir: Optional[str] = None, description: str = "",
                         objective: str = "span_corruption",
                         overwrite: bool = False) -> seqio.Task:
  """Registers plain-text files (one document per line) and returns `<name>_<objective>`.

  Other objectives follow on request (`pretraining_task(name, "prefix_lm")`, or the name).

  Args:
    name: the corpus name, lower case (`my_corpus` -> task `my_corpus_span_corruption`).
    files: glob pattern(s) for the train split, or {split: patterns}. Relative patterns
      are under the data directory (DATA_DIR), resolved when the data is read.
    data_dir: a data directory for this corpus alone.
    description: one line for `recast tasks list`.
    objective: the objective of the returned task.
    overwrite: replace a corpus of the same name (and drop its registered tasks).
  """
  if not name or name != name.lower() or not name.replace("_", "").isalnum():
    raise PretrainingTaskError(f"corpus name {name!r}: use lower case letters, digits, '_'")
  if isinstance(files, (str, os.PathLike)):
    files = {TRAIN_SPLIT: [str(files)]}
  elif not isinstance(files, Mapping):
    files = {TRAIN_SPLIT: [str(f) for f in files]}
  files = {split: [str(p)] if isinstance(p, (str, os.PathLike)) else [str(x) for x in p]
           for split, p in files.items()}
  if name in _CORPORA and not overwrite:
    if _CORPORA[name].files != files:
      raise PretrainingTaskError(f"corpus {name!r} is already registered with other files; "
                                 "choose another name or pass overwrite=True")
  if name in _CORPORA and overwrite:
    for task_name in list(seqio.TaskRegistry.names()):
      parsed = parse_derived_task_name(task_name)
      if parsed and parsed[0] == name:
        seqio.TaskRegistry.remove(task_name)
  _CORPORA[name] = TextCorpus(name=name, files=files, data_dir=data_dir,
                              description=description)
  return pretraining_task(name, objective)


def registered_corpora() -> dict[str, TextCorpus]:
  """Name -> corpus of every registered plain-text corpus."""
  return dict(_CORPORA)


register_text_corpus(
    WIKIPEDIA_EN, files=str(Path("text") / WIKIPEDIA_EN / "part-*.txt"),
    description="English Wikipedia articles, one per line (general-domain pretraining)")
