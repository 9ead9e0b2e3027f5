"""GLUE and SuperGLUE as T5 casts them: exact renderings, real examples from ../shared/data,
perfect metrics on gold targets and the expected majority-class baselines."""

import collections
import json

import gin
import numpy as np
import pytest
import seqio

import recast.tasks  # noqa: F401
from recast.tasks import glue, registry, sources, super_glue, vocabularies

MAX_EXAMPLES = 300
BUILT_IN = [s.name for s in glue.GLUE_SPECS + super_glue.SUPER_GLUE_SPECS]


@pytest.fixture(autouse=True)
def _byte_vocabulary(monkeypatch):
  monkeypatch.delenv(sources.ENV_VAR, raising=False)
  gin.clear_config()
  with vocabularies.use_vocabulary(vocabularies.byte_vocabulary()):
    yield
  gin.clear_config()


def _render(name, rows, tmp_path, split="validation"):
  spec = registry.task_spec(name)
  folder = tmp_path / spec.builder_name
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split=split,
                                                   shuffle=False)
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("name, row, expected", [
    ("glue_mrpc", {"sentence1": "A b.", "sentence2": "C d.", "label": 1, "idx": 0},
     ("mrpc sentence1: A b. sentence2: C d.", "equivalent")),
    ("glue_mnli", {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
     ("mnli hypothesis: H. premise: P.", "contradiction")),
    ("glue_stsb", {"sentence1": "A.", "sentence2": "B.", "label": 3.71, "idx": 0},
     ("stsb sentence1: A. sentence2: B.", "3.8")),
    ("glue_stsb", {"sentence1": "A.", "sentence2": "B.", "label": 0.0, "idx": 1},
     ("stsb sentence1: A. sentence2: B.", "0.0")),
    ("glue_cola", {"sentence": "Him went.", "label": -1, "idx": 0},
     ("cola sentence: Him went.", "<unk>")),
    ("super_glue_cb", {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
     ("cb hypothesis: H. premise: P.", "neutral")),
    ("super_glue_copa", {"premise": "P.", "choice1": "A.", "choice2": "B.",
                         "question": "cause", "label": 1, "idx": 0},
     ("copa choice1: A. choice2: B. premise: P. question: cause", "choice2")),
    ("super_glue_wic", {"word": "bank", "sentence1": "S1.", "sentence2": "S2.", "start1": 0,
                        "start2": 0, "end1": 1, "end2": 1, "label": 0, "idx": 0},
     ("wic sentence1: S1. sentence2: S2. word: bank", "False")),
    ("super_glue_wsc", {"text": "Mark told Pete many lies about himself .",
                        "span1_index": 0, "span1_text": "Mark", "span2_index": 6,
                        "span2_text": "himself", "label": 1, "idx": 0},
     ("wsc text: * Mark * told Pete many lies about # himself # .", "True")),
    ("super_glue_axb", {"sentence1": "S1.", "sentence2": "S2.", "label": 1, "idx": 0},
     ("rte hypothesis: S2. premise: S1.", "not_entailment")),
])
def test_t5_renderings(name, row, expected, tmp_path):
  splits = registry.task_spec(name).splits
  split = "validation" if "validation" in splits else splits[-1]
  assert _render(name, [row], tmp_path, split=split) == [expected]


def test_record_one_example_per_answer(tmp_path):
  row = {"passage": "Ann met Bob.\n@highlight\nBob is tall", "query": "@placeholder met Bob",
         "entities": ["Ann", "Bob"], "answers": ["Ann", "Bob"],
         "idx": {"passage": 0, "query": 0}}
  rendered = _render("super_glue_record", [row], tmp_path)
  inputs = "record query: @placeholder met Bob entities: Ann, Bob passage: Ann met Bob. Bob is tall"
  assert rendered == [(inputs, "Ann"), (inputs, "Bob")]


def _shared_tasks(root):
  return [n for n in BUILT_IN if (root / registry.task_spec(n).builder_name).is_dir()]


def _eval_split(task):
  splits = list(task.splits)
  return next((s for s in ("validation", "validation_matched") if s in splits), splits[0])


def _majority_baseline(metric_name, labels, targets):
  counts = collections.Counter(labels)
  majority, top = counts.most_common(1)[0]
  n = len(labels)
  p = top / n
  if metric_name == "accuracy":
    return {"accuracy": 100 * p}
  if metric_name == "matthews_corrcoef":
    return {"matthews_corrcoef": 0.0}
  if metric_name == "f1_and_accuracy":
    return {"f1": 100 * 2 * p / (1 + p) if majority == 1 else 0.0, "accuracy": 100 * p}
  if metric_name == "macro_f1_and_accuracy":
    return {"accuracy": 100 * p, "macro_f1": 100 * 2 * p / (1 + p) / len(counts)}
  if metric_name == "pearson_spearman":
    return {"pearson_corrcoef": 0.0, "spearman_corrcoef": 0.0}
  if metric_name == "multirc_f1a_em":
    groups = collections.defaultdict(list)
    for t in targets:
      groups[t["group"]].append(t["value"])
    em = np.mean([all(v == majority for v in vs) for vs in groups.values()])
    return {"f1a": 100 * 2 * p / (1 + p) if majority == 1 else 0.0, "exact_match": 100 * em}
  raise AssertionError(f"no baseline for {metric_name}")


def test_real_data_renders_and_scores(shared_data):
  names = _shared_tasks(shared_data)
  assert len(names) >= 13
  gin.parse_config(f"DATA_DIR = '{shared_data}'")
  for name in names:
    spec = registry.task_spec(name)
    task = seqio.get_mixture_or_task(name)
    split = _eval_split(task)
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
    examples = list(ds.take(MAX_EXAMPLES).as_numpy_iterator())
    assert len(examples) == min(MAX_EXAMPLES, task.num_input_examples(split)), name
    prefix = spec.inputs_template.split("{")[0]
    targets, labels = [], []
    for ex in examples:
      assert ex["inputs_pretokenized"].decode().startswith(prefix)
      assert len(ex["inputs"]) > len(prefix)
      targets.append(task.postprocess_fn(ex["targets_pretokenized"].decode(), example=ex,
                                         is_target=True))
      labels.append(float(spec.render_label(ex["label"])) if spec.is_regression
                    else int(ex["label"]))
    gold = [task.postprocess_fn(ex["targets_pretokenized"].decode(), example=ex)
            for ex in examples]
    majority = collections.Counter(labels).most_common(1)[0][0]
    majority_text = spec.render_label(majority) if spec.is_classification else "2.6"
    constant = [task.postprocess_fn(majority_text, example=ex) for ex in examples]
    for metric_name, fn in zip(spec.metric_names, task.metric_fns):
      perfect = fn(targets, gold)
      assert all(v == pytest.approx(100.0) for v in perfect.values()), (name, perfect)
      baseline = fn(targets, constant)
      expected = _majority_baseline(metric_name, labels, targets)
      assert baseline == pytest.approx(expected), (name, baseline, expected)


def test_real_counts_match_sources_md(shared_data):
  gin.parse_config(f"DATA_DIR = '{shared_data}'")
  expected = {"glue_rte": {"train": 2490, "validation": 277},
              "glue_stsb": {"train": 5749, "validation": 1500},
              "super_glue_cb": {"train": 250, "validation": 56},
              "super_glue_multirc": {"validation": 4848}}
  for name, counts in expected.items():
    task = seqio.get_mixture_or_task(name)
    assert {s: task.num_input_examples(s) for s in task.splits} == counts
    # Local counts agree with the TFDS metadata recorded in the spec.
    assert all(registry.task_spec(name).num_examples[s] == c for s, c in counts.items())
