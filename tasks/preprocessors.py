"""Text-to-text casting: source examples -> {"inputs": str, "targets": str, ...} in tf.data.

`make_text_to_text(spec)` renders a spec's templates (T5's "rte sentence1: ... sentence2:
..." -> "not_entailment"); the task-specific steps T5 applies before that (WSC's span
marks, ReCoRD's one example per answer) are here too, as `TextTaskSpec.prepare` steps.
"""

from __future__ import annotations

import string
from typing import Callable

import seqio
import tensorflow as tf

from recast.tasks import specs as specs_lib

ALWAYS_KEPT = ("idx",)


def _as_text(value: tf.Tensor) -> tf.Tensor:
  """A field as one string: strings as they are, lists joined by ", ", numbers printed."""
  if value.dtype != tf.string:
    value = tf.strings.as_string(value)
  if value.shape.rank and value.shape.rank > 0:
    value = tf.strings.reduce_join(value, separator=", ")
  return value


def _label_text(label: tf.Tensor, spec: specs_lib.TextTaskSpec) -> tf.Tensor:
  """Label id -> name (UNKNOWN_LABEL for -1); float -> rounded text ("3.8")."""
  if spec.is_classification:
    names = tf.constant(list(spec.label_names) + [specs_lib.UNKNOWN_LABEL])
    label = tf.cast(label, tf.int32)
    in_range = tf.logical_and(label >= 0, label < len(spec.label_names))
    return tf.gather(names, tf.where(in_range, label, len(spec.label_names)))
  if spec.is_regression:
    step = spec.regression_step
    rounded = tf.round(tf.cast(label, tf.float64) / step) * step
    return tf.strings.as_string(rounded, precision=specs_lib.regression_decimals(step))
  return _as_text(label)


def render_template(template: str, example: dict, spec: specs_lib.TextTaskSpec
                    ) -> tf.Tensor:
  """Fills a `str.format` template with an example's fields (scalar tf.string)."""
  pieces = []
  for literal, field, _, _ in string.Formatter().parse(template):
    if literal:
      pieces.append(tf.constant(literal))
    if field:
      value = example[field]
      pieces.append(_label_text(value, spec) if field == spec.label_field
                    else _as_text(value))
  return tf.strings.join(pieces) if pieces else tf.constant("")


def make_text_to_text(spec: specs_lib.TextTaskSpec) -> Callable[[tf.data.Dataset],
                                                                tf.data.Dataset]:
  """The preprocessor rendering `spec`'s templates; keeps idx, the label and keep_fields.

  Example (glue_rte):
    {"sentence1": "A cat sat.", "sentence2": "A cat.", "label": 0, "idx": 3}
    -> {"inputs": "rte sentence1: A cat sat. sentence2: A cat.",
        "targets": "entailment", "label": 0, "idx": 3}
  """
  kept = [*ALWAYS_KEPT, *([spec.label_field] if spec.label_field else []),
          *spec.keep_fields]

  @seqio.map_over_dataset
  def text_to_text(example):
    out = {k: example[k] for k in dict.fromkeys(kept) if k in example}
    out["inputs"] = render_template(spec.inputs_template, example, spec)
    out["targets"] = render_template(spec.targets_template, example, spec)
    return out

  text_to_text.__name__ = f"text_to_text_{spec.name}"
  return text_to_text


def _mark_span(text: tf.Tensor, span: tf.Tensor, word_index: tf.Tensor, mark: str
               ) -> tf.Tensor:
  """Surrounds `span` starting at word `word_index` of `text` with `mark` ("* span *").

  Leaves the text unchanged when the span is not at that word (as T5 does).
  """
  escaped = tf.strings.regex_replace(span, r"([\\.^$|?*+()\[\]{}])", r"\\\1")
  pattern = tf.strings.join([r"^((?:\S+\s+){", tf.strings.as_string(word_index), r"})(",
                             escaped, ")"])
  marked = tf.strings.join([r"\1", mark, r" \2 ", mark])
  return tf.strings.regex_replace(text, pattern, marked)


@seqio.map_over_dataset
def mark_wsc_spans(example: dict) -> dict:
  """WSC: marks the candidate noun phrase with * and the pronoun with # in `text`.

  {"text": "Mark told Pete many lies about himself", "span1_index": 0,
   "span1_text": "Mark", "span2_index": 5, "span2_text": "himself"}
  -> "text": "* Mark * told Pete many lies about # himself #"
  """
  text = _mark_span(example["text"], example["span1_text"], example["span1_index"], "*")
  # Marking span 1 added two words in front of span 2 when it came first.
  span2_index = example["span2_index"] + 2 * tf.cast(
      example["span1_index"] < example["span2_index"], example["span2_index"].dtype)
  text = _mark_span(text, example["span2_text"], span2_index, "#")
  text.set_shape([])
  return {**example, "text": text}


def _clean_record_passage(passage: tf.Tensor) -> tf.Tensor:
  passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record_one_example_per_answer(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD as T5 casts it: one example per gold answer ("answer": the target), keeping
  all gold `answers` and `idx` for the metric; a query without answers (test) gets one
  example with answer UNKNOWN_LABEL."""

  def expand(example):
    answers = example["answers"]
    n = tf.maximum(tf.size(answers), 1)
    answer = tf.cond(tf.size(answers) > 0, lambda: answers,
                     lambda: tf.constant([specs_lib.UNKNOWN_LABEL]))
    repeated = {k: tf.repeat(tf.expand_dims(v, 0), n, axis=0) if not isinstance(v, dict)
                else {kk: tf.repeat(tf.expand_dims(vv, 0), n, axis=0)
                      for kk, vv in v.items()}
                for k, v in example.items() if k not in ("answers", "entities")}
    repeated["passage"] = tf.repeat(
        tf.expand_dims(_clean_record_passage(example["passage"]), 0), n, axis=0)
    repeated["entities"] = tf.repeat(tf.expand_dims(
        tf.strings.reduce_join(example["entities"], separator=", "), 0), n, axis=0)
    repeated["answers"] = tf.repeat(tf.expand_dims(answers, 0), n, axis=0)
    repeated["answer"] = answer
    return tf.data.Dataset.from_tensor_slices(repeated)

  return dataset.flat_map(expand)
