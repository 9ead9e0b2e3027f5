"""The GLUE score and the SuperGLUE score, as T5 computes them from per-task metrics.

T5 (t5/evaluation/eval_utils.py) averages each task's metrics first (MRPC: F1 and
accuracy; STS-B: Pearson and Spearman; QQP: F1 and accuracy; MNLI: matched and mismatched
accuracy; CB: macro-F1 and accuracy; MultiRC: F1a and EM; ReCoRD: F1 and EM), then takes
the unweighted mean over tasks. A score is defined only when every metric it needs is
present. The GLUE score leaves out AX (diagnostics, no training data) and, as T5 does,
WNLI (T5 trains and scores WSC instead); the SuperGLUE score leaves out AX-b and AX-g.

Worked example (GLUE, values in percent):

    results = {"glue_cola": {"matthews_corrcoef": 40.0}, "glue_sst2": {"accuracy": 90.0},
               "glue_mrpc": {"f1": 88.0, "accuracy": 84.0}, ...,
               "glue_mnli_matched": {"accuracy": 80.0},
               "glue_mnli_mismatched": {"accuracy": 82.0}, ...}
    benchmark_scores(results)  # {"glue_score": mean(40, 90, 86, ..., 81, ...)}

MNLI's two validation sets are the eval-only tasks `glue_mnli_matched` and
`glue_mnli_mismatched` (mixtures/benchmarks.py), as in T5.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

# score name -> {group: ((task, metric), ...)}; a group's metrics are averaged first.
Groups = Mapping[str, Sequence[tuple[str, str]]]

GLUE_GROUPS: Groups = {
    "cola": (("glue_cola", "matthews_corrcoef"),),
    "sst2": (("glue_sst2", "accuracy"),),
    "mrpc": (("glue_mrpc", "f1"), ("glue_mrpc", "accuracy")),
    "stsb": (("glue_stsb", "pearson_corrcoef"), ("glue_stsb", "spearman_corrcoef")),
    "qqp": (("glue_qqp", "f1"), ("glue_qqp", "accuracy")),
    "mnli": (("glue_mnli_matched", "accuracy"), ("glue_mnli_mismatched", "accuracy")),
    "qnli": (("glue_qnli", "accuracy"),),
    "rte": (("glue_rte", "accuracy"),),
}

SUPER_GLUE_GROUPS: Groups = {
    "boolq": (("super_glue_boolq", "accuracy"),),
    "cb": (("super_glue_cb", "macro_f1"), ("super_glue_cb", "accuracy")),
    "copa": (("super_glue_copa", "accuracy"),),
    "multirc": (("super_glue_multirc", "f1a"), ("super_glue_multirc", "exact_match")),
    "record": (("super_glue_record", "f1"), ("super_glue_record", "em")),
    "rte": (("super_glue_rte", "accuracy"),),
    "wic": (("super_glue_wic", "accuracy"),),
    "wsc": (("super_glue_wsc", "accuracy"),),
}

BENCHMARKS: dict[str, Groups] = {"glue_score": GLUE_GROUPS,
                                 "super_glue_score": SUPER_GLUE_GROUPS}


def group_means(results: Mapping[str, Mapping[str, float]], groups: Groups
                ) -> Optional[dict[str, float]]:
  """{group: mean of its metrics}, or None when any metric of any group is missing.

  Args:
    results: {task name: {metric name: value}} (e.g. one step of `Evaluator.evaluate`).
    groups: GLUE_GROUPS, SUPER_GLUE_GROUPS or a benchmark of the same shape.
  """
  means = {}
  for group, members in groups.items():
    values = [results.get(task, {}).get(metric) for task, metric in members]
    if any(v is None or not np.isfinite(v) for v in values):
      return None
    means[group] = float(np.mean(values))
  return means


def benchmark_score(results: Mapping[str, Mapping[str, float]], groups: Groups
                    ) -> Optional[float]:
  """The mean over groups of each group's mean metric; None when it is not defined."""
  means = group_means(results, groups)
  return None if means is None else float(np.mean(list(means.values())))


def benchmark_scores(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """{"glue_score": ..., "super_glue_score": ...}: each benchmark whose metrics are all in
  `results` ({task: {metric: value}}); benchmarks with a missing metric are left out."""
  scores = {}
  for name, groups in BENCHMARKS.items():
    score = benchmark_score(results, groups)
    if score is not None:
      scores[name] = score
  return scores
