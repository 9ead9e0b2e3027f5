"""Benchmark metrics as SeqIO metric functions, in percent like T5.

Every function here has SeqIO's predict-metric signature `fn(targets, predictions)`:
two equally long sequences of postprocessed values (label ids, floats, strings or the
structured values named in each docstring), returning `{metric_name: value}` with values
scaled to 0-100 (correlations to -100..100) as T5 reports them. A prediction the
postprocessor could not parse (e.g. label id -1) simply counts as wrong.

Example:
  >>> accuracy([0, 1, 1, 0], [0, 1, 0, 0])
  {'accuracy': 75.0}
  >>> squad_em_f1([["the Eiffel Tower", "Eiffel Tower"]], ["eiffel tower."])
  {'em': 100.0, 'f1': 100.0}
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics

# Text-to-text form of entity spans (CoNLL NER targets): "PERSON: John Smith; ORG: Acme".
# An example without entities has the empty string as target.
ENTITY_SEPARATOR = "; "
ENTITY_TYPE_SEPARATOR = ": "
_PUNCTUATION = frozenset(string.punctuation)


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"got {len(targets)} targets but {len(predictions)} predictions; "
                     "metric functions need one prediction per target")


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Share of predictions equal to their target (any comparable values), in percent."""
  _check_lengths(targets, predictions)
  if not targets:
    return {"accuracy": 0.0}
  return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation (CoLA), x100; 0 when undefined (a constant column)."""
  _check_lengths(targets, predictions)
  return {"matthews_corrcoef": 100.0 * float(sklearn.metrics.matthews_corrcoef(
      targets, predictions))}


def _class_f1(targets: np.ndarray, predictions: np.ndarray, label: Hashable) -> float:
  """F1 of one class from true/false positives and negatives; 0 when undefined."""
  tp = np.sum((targets == label) & (predictions == label))
  fp = np.sum((targets != label) & (predictions == label))
  fn = np.sum((targets == label) & (predictions != label))
  return 0.0 if tp == 0 else float(2 * tp / (2 * tp + fp + fn))


def f1_and_accuracy(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Binary F1 of class 1 (MRPC, QQP) and accuracy, in percent."""
  _check_lengths(targets, predictions)
  f1 = _class_f1(np.asarray(targets), np.asarray(predictions), 1)
  return {"f1": 100.0 * f1, **accuracy(targets, predictions)}


def macro_f1(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[str, float]:
  """Unweighted mean of per-class F1 over the classes present in the targets, in percent.

  A predicted class absent from the targets (e.g. an unparseable -1) adds no class of its
  own; it only costs the true class its recall.
  """
  _check_lengths(targets, predictions)
  t, p = np.asarray(targets), np.asarray(predictions)
  labels = sorted(set(targets))
  if not labels:
    return {"macro_f1": 0.0}
  return {"macro_f1": 100.0 * float(np.mean([_class_f1(t, p, c) for c in labels]))}


def macro_f1_and_accuracy(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """CommitmentBank: accuracy and macro-F1 over its (three) classes, in percent."""
  return {**accuracy(targets, predictions), **macro_f1(targets, predictions)}


def _correlation(fn, targets: Sequence[float], predictions: Sequence[float]) -> float:
  t, p = np.asarray(targets, np.float64), np.asarray(predictions, np.float64)
  if len(t) < 2 or np.all(t == t[0]) or np.all(p == p[0]):
    return 0.0  # undefined for a constant column: report no correlation
  return 100.0 * float(fn(t, p)[0])


def pearson_spearman(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """STS-B: Pearson and Spearman correlation x100 (0 when a column is constant)."""
  _check_lengths(targets, predictions)
  return {"pearson_corrcoef": _correlation(scipy.stats.pearsonr, targets, predictions),
          "spearman_corrcoef": _correlation(scipy.stats.spearmanr, targets, predictions)}


def _multirc_group(target: Mapping[str, Any]) -> Hashable:
  if "group" in target:
    return target["group"]
  idx = target["idx"]
  return (idx["paragraph"], idx["question"])


def _value(x: Any) -> Any:
  return x["value"] if isinstance(x, Mapping) else x


def multirc_f1a_em(targets: Sequence[Mapping[str, Any]],
                   predictions: Sequence[Any]) -> dict[str, float]:
  """MultiRC as SuperGLUE scores it: F1a over all answer options, EM per question.

  Args:
    targets: one per answer option, `{"idx": {"paragraph": p, "question": q, "answer": a},
      "value": 0|1}` (or `{"group": key, "value": 0|1}`).
    predictions: aligned with targets; `{"value": 0|1, ...}` or the bare 0/1.

  Returns:
    {"f1a": binary F1 of label 1 over every answer option, "exact_match": share of
    questions whose every answer option is predicted right}, both in percent.
  """
  _check_lengths(targets, predictions)
  t = np.asarray([_value(x) for x in targets])
  p = np.asarray([_value(x) for x in predictions])
  questions = collections.defaultdict(list)
  for target, correct in zip(targets, t == p):
    questions[_multirc_group(target)].append(bool(correct))
  em = np.mean([all(c) for c in questions.values()]) if questions else 0.0
  return {"f1a": 100.0 * _class_f1(t, p, 1), "exact_match": 100.0 * float(em)}


def normalize_squad_answer(text: str) -> str:
  """SQuAD v1.1's official normalisation: lower case, no punctuation, articles or extra space."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(gold: str, prediction: str) -> float:
  gold_tokens = normalize_squad_answer(gold).split()
  pred_tokens = normalize_squad_answer(prediction).split()
  common = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred_tokens), common / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def _answers(target: Any) -> Sequence[str]:
  if isinstance(target, Mapping):
    target = target["answers"]
  return [target] if isinstance(target, str) else list(target)


def squad_em_f1(targets: Sequence[Any], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD v1.1 exact match and token F1, each the max over the gold answers, in percent.

  Args:
    targets: per question, a list of gold answer strings (or one string, or
      `{"answers": [...]}`).
    predictions: the predicted answer strings.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {"em": 0.0, "f1": 0.0}
  em = f1 = 0.0
  for target, prediction in zip(targets, predictions):
    golds = _answers(target) or [""]
    em += max(float(normalize_squad_answer(g) == normalize_squad_answer(prediction))
              for g in golds)
    f1 += max(_token_f1(g, prediction) for g in golds)
  return {"em": 100.0 * em / len(targets), "f1": 100.0 * f1 / len(targets)}


def record_em_f1(targets: Sequence[Any], predictions: Sequence[str]) -> dict[str, float]:
  """ReCoRD as SuperGLUE scores it: max over gold entities of EM and token F1, in percent.

  Args:
    targets: per query, a list of gold entity strings, or `{"idx": {...}, "answers": [...]}`;
      with `idx`, repeated queries (one example per gold answer when training) count once,
      the first prediction for the query being scored.
    predictions: the predicted entity strings.
  """
  _check_lengths(targets, predictions)
  seen, kept_targets, kept_predictions = set(), [], []
  for target, prediction in zip(targets, predictions):
    if isinstance(target, Mapping) and "idx" in target:
      key = tuple(sorted(target["idx"].items()))
      if key in seen:
        continue
      seen.add(key)
    kept_targets.append(target)
    kept_predictions.append(prediction)
  return squad_em_f1(kept_targets, kept_predictions)


def parse_entity_spans(text: str) -> list[tuple[str, str]]:
  """"PERSON: John Smith; ORG: Acme" -> [("PERSON", "John Smith"), ("ORG", "Acme")].

  Malformed pieces (no "TYPE: ") are kept with type "" so that they count as wrong.
  """
  spans = []
  for piece in text.split(ENTITY_SEPARATOR.strip()):
    piece = piece.strip()
    if not piece:
      continue
    kind, sep, mention = piece.partition(ENTITY_TYPE_SEPARATOR.strip())
    spans.append((kind.strip(), mention.strip()) if sep else ("", piece))
  return spans


def span_f1(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Entity-level micro precision, recall and F1 (CoNLL style), in percent.

  Each example's spans are a multiset of (type, mention) pairs parsed with
  `parse_entity_spans`; a predicted span is right when the same pair is in the gold set.
  """
  _check_lengths(targets, predictions)
  correct = n_gold = n_predicted = 0
  for target, prediction in zip(targets, predictions):
    gold = collections.Counter(parse_entity_spans(target))
    predicted = collections.Counter(parse_entity_spans(prediction))
    correct += sum((gold & predicted).values())
    n_gold += sum(gold.values())
    n_predicted += sum(predicted.values())
  precision = correct / n_predicted if n_predicted else 0.0
  recall = correct / n_gold if n_gold else 0.0
  if n_gold == 0 and n_predicted == 0:
    precision = recall = 1.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"span_precision": 100.0 * precision, "span_recall": 100.0 * recall,
          "span_f1": 100.0 * f1}


# Metric functions by the name a task file uses (`metrics: [accuracy, macro_f1]`).
METRICS_BY_NAME = {
    "accuracy": accuracy,
    "matthews_corrcoef": matthews_corrcoef,
    "f1_and_accuracy": f1_and_accuracy,
    "macro_f1": macro_f1,
    "macro_f1_and_accuracy": macro_f1_and_accuracy,
    "pearson_spearman": pearson_spearman,
    "multirc_f1a_em": multirc_f1a_em,
    "record_em_f1": record_em_f1,
    "squad_em_f1": squad_em_f1,
    "span_f1": span_f1,
}
