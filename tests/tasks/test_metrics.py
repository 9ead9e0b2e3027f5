"""Metric functions agree with scikit-learn/scipy and with the official MultiRC, ReCoRD and
SQuAD definitions."""

import collections

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from recast.tasks import metrics

SEEDS = range(5)


def _random_labels(seed, num_classes, n=60):
  rng = np.random.default_rng(seed)
  return list(rng.integers(0, num_classes, n)), list(rng.integers(0, num_classes, n))


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_agree_with_sklearn(seed):
  t, p = _random_labels(seed, 2)
  assert metrics.accuracy(t, p)["accuracy"] == pytest.approx(
      100 * sklearn.metrics.accuracy_score(t, p))
  assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
      100 * sklearn.metrics.matthews_corrcoef(t, p))
  got = metrics.f1_and_accuracy(t, p)
  assert got["f1"] == pytest.approx(100 * sklearn.metrics.f1_score(t, p))
  assert got["accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score(t, p))


@pytest.mark.parametrize("seed", SEEDS)
def test_macro_f1_agrees_with_sklearn(seed):
  t, p = _random_labels(seed, 3)
  got = metrics.macro_f1_and_accuracy(t, p)
  assert got["macro_f1"] == pytest.approx(
      100 * sklearn.metrics.f1_score(t, p, average="macro"))
  assert got["accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score(t, p))
  # A multiclass MCC too (CoLA is binary, but the function is general).
  assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
      100 * sklearn.metrics.matthews_corrcoef(t, p))


def test_unparseable_predictions_add_no_class():
  t, p = [0, 1, 2, 2], [0, 1, -1, 2]
  assert metrics.macro_f1(t, p)["macro_f1"] == pytest.approx(
      100 * sklearn.metrics.f1_score(t, p, labels=[0, 1, 2], average="macro"))
  assert metrics.f1_and_accuracy([1, 1, 0], [1, -1, 0])["f1"] == pytest.approx(100 * 2 / 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_agree_with_scipy(seed):
  rng = np.random.default_rng(seed)
  t = rng.uniform(0, 5, 50)
  p = t + rng.normal(0, 1.5, 50)
  got = metrics.pearson_spearman(list(t), list(p))
  assert got["pearson_corrcoef"] == pytest.approx(100 * scipy.stats.pearsonr(t, p)[0])
  assert got["spearman_corrcoef"] == pytest.approx(100 * scipy.stats.spearmanr(t, p)[0])


def test_constant_predictions_have_no_correlation():
  assert metrics.pearson_spearman([1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == {
      "pearson_corrcoef": 0.0, "spearman_corrcoef": 0.0}


def _multirc_reference(rows):
  """The official MultiRC definition, written out: rows of (paragraph, question, gold, pred)."""
  tp = sum(1 for *_, g, p in rows if g == 1 and p == 1)
  n_pred = sum(1 for *_, g, p in rows if p == 1)
  n_gold = sum(1 for *_, g, p in rows if g == 1)
  precision = tp / n_pred if n_pred else 0.0
  recall = tp / n_gold if n_gold else 0.0
  f1a = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  by_question = collections.defaultdict(list)
  for para, q, g, p in rows:
    by_question[(para, q)].append(g == p)
  em = sum(all(v) for v in by_question.values()) / len(by_question)
  return 100 * f1a, 100 * em


def test_multirc_hand_computed():
  # Question (0,0): 2 options, both right; question (0,1): 2 options, one wrong;
  # question (1,0): one option, right. Positives: gold {a,c,e}, predicted {a,c,d}.
  rows = [(0, 0, 1, 1), (0, 0, 0, 0), (0, 1, 1, 1), (0, 1, 0, 1), (1, 0, 1, 0)]
  targets = [{"idx": {"paragraph": pa, "question": q, "answer": i}, "value": g}
             for i, (pa, q, g, _) in enumerate(rows)]
  predictions = [{"value": p} for *_, p in rows]
  got = metrics.multirc_f1a_em(targets, predictions)
  # tp=2, predicted positives 3, gold positives 3 -> F1a 2/3; EM: only (0,0) -> 1/3.
  assert got["f1a"] == pytest.approx(100 * 2 / 3)
  assert got["exact_match"] == pytest.approx(100 / 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_multirc_matches_official_definition(seed):
  rng = np.random.default_rng(seed)
  rows = [(int(pa), int(q), int(rng.integers(2)), int(rng.integers(2)))
          for pa in range(4) for q in range(rng.integers(1, 4)) for _ in range(rng.integers(1, 5))]
  targets = [{"idx": {"paragraph": pa, "question": q, "answer": i}, "value": g}
             for i, (pa, q, g, _) in enumerate(rows)]
  got = metrics.multirc_f1a_em(targets, [p for *_, p in rows])
  f1a, em = _multirc_reference(rows)
  assert got["f1a"] == pytest.approx(f1a)
  assert got["exact_match"] == pytest.approx(em)
  # Question ids repeat across paragraphs: grouping must use both.
  perfect = metrics.multirc_f1a_em(targets, [g for *_, g, _ in rows])
  assert perfect == {"f1a": 100.0 if any(g for *_, g, _ in rows) else 0.0, "exact_match": 100.0}


def test_squad_normalisation_and_max_over_answers():
  assert metrics.normalize_squad_answer("  The  Eiffel-Tower, an icon! ") == "eiffeltower icon"
  got = metrics.squad_em_f1([["Barack Obama", "Obama"], ["Denver Broncos"]],
                            ["the obama", "Broncos of Denver"])
  # 1: "obama" == "obama" -> EM 1, F1 1. 2: gold {denver, broncos}, pred {broncos, of,
  # denver}: common 2, precision 2/3, recall 1 -> F1 0.8, EM 0.
  assert got["em"] == pytest.approx(50.0)
  assert got["f1"] == pytest.approx(100 * (1 + 0.8) / 2)


def _record_reference(golds, prediction):
  """ReCoRD's official script: normalise, then max over gold answers of EM and token F1."""
  def norm(s):
    return metrics.normalize_squad_answer(s).split()
  ems, f1s = [], []
  for gold in golds:
    g, p = norm(gold), norm(prediction)
    ems.append(float(g == p))
    common = sum((collections.Counter(g) & collections.Counter(p)).values())
    f1s.append(0.0 if common == 0 else 2 * common / (len(g) + len(p)))
  return max(ems), max(f1s)


@pytest.mark.parametrize("seed", SEEDS)
def test_record_matches_official_definition(seed):
  rng = np.random.default_rng(seed)
  words = ["New", "York", "the", "City", "Mets", "of", "Obama", "U.S.", "Army"]
  def phrase():
    return " ".join(rng.choice(words, rng.integers(1, 4)))
  golds = [[phrase() for _ in range(rng.integers(1, 4))] for _ in range(20)]
  predictions = [g[0] if rng.random() < 0.3 else phrase() for g in golds]
  # Each query appears twice (one training example per gold answer); counted once.
  targets = [{"idx": {"passage": i, "query": i}, "answers": g} for i, g in enumerate(golds)]
  got = metrics.record_em_f1(targets + targets, predictions + ["nothing"] * len(predictions))
  ref = np.array([_record_reference(g, p) for g, p in zip(golds, predictions)])
  assert got["em"] == pytest.approx(100 * ref[:, 0].mean())
  assert got["f1"] == pytest.approx(100 * ref[:, 1].mean())


def test_span_f1_hand_computed():
  targets = ["PERSON: John Smith; ORG: Acme", "", "GPE: Paris"]
  predictions = ["PERSON: John Smith; ORG: Acme Corp", "DATE: today", "GPE: Paris"]
  got = metrics.span_f1(targets, predictions)
  # gold 3 spans, predicted 4, correct 2 -> P 1/2, R 2/3, F1 4/7.
  assert got["span_precision"] == pytest.approx(50.0)
  assert got["span_recall"] == pytest.approx(100 * 2 / 3)
  assert got["span_f1"] == pytest.approx(100 * 4 / 7)
  assert metrics.parse_entity_spans("PERSON: A;ORG:B; junk") == [
      ("PERSON", "A"), ("ORG", "B"), ("", "junk")]


@pytest.mark.parametrize("fn,targets", [
    (metrics.accuracy, [0, 1, 2]),
    (metrics.f1_and_accuracy, [0, 1, 1]),
    (metrics.macro_f1_and_accuracy, [0, 1, 2]),
    (metrics.matthews_corrcoef, [0, 1, 1]),
    (metrics.pearson_spearman, [0.5, 1.0, 4.2]),
    (metrics.squad_em_f1, [["a cat"], ["dog", "the dog"], ["x"]]),
    (metrics.span_f1, ["PER: A", "", "ORG: B; LOC: C"]),
])
def test_perfect_predictions_score_100(fn, targets):
  predictions = [t[0] if isinstance(t, list) else t for t in targets]
  assert all(v == pytest.approx(100.0) for v in fn(targets, predictions).values())


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy([0, 1], [0])


def test_every_named_metric_is_a_metric_function():
  for name, fn in metrics.METRICS_BY_NAME.items():
    assert fn.__name__ == name
