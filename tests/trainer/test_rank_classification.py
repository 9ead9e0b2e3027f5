"""Rank classification: every label string scored, the most likely one taken.

A tiny model trained 20 steps on an imbalanced two-label task decodes the majority label
("not entailment") for every input, so its decoded accuracy is the majority baseline, while
the likelihoods it gives the two labels already differ from input to input (and favour the
shorter label): rank classification's score differs from the baseline.
Its accuracy is checked against a hand computation from `recast infer` score-mode
log-likelihoods of every (input, label) pair.
"""

import json
import random

import numpy as np
import pytest

from recast import cli, metrics_writer
from recast.trainer import evaluation

TASK = "rank_toy_reviews"
LABELS = ("not entailment", "entailment")
GOOD, BAD = ("good", "great", "fine", "lovely"), ("bad", "awful", "dull", "poor", "weak")


def _rows(n, seed):
  rng = random.Random(seed)
  rows = []
  for _ in range(n):
    label = 1 if rng.random() < 0.3 else 0  # 70% "not entailment": the majority label
    word = rng.choice(GOOD if label else BAD)
    filler = " ".join(rng.choice(("the", "film", "was", "very", "plot", "a")) for _ in range(3))
    rows.append({"text": f"{filler} {word}", "label": LABELS[label]})
  return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  folder = tmp_path_factory.mktemp("rank")
  for split, n, seed in (("train", 256, 0), ("validation", 40, 1)):
    (folder / f"{split}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _rows(n, seed)))
  (folder / "tasks.yaml").write_text(
      f"tasks:\n  - name: {TASK}\n    files: {{train: train.jsonl, validation: "
      f"validation.jsonl}}\n    inputs: \"review: {{text}}\"\n    targets: \"{{label}}\"\n"
      f"    labels: [{', '.join(LABELS)}]\n")  # YAML reads them unquoted
  model_dir = folder / "run"
  assert cli.main([
      "train", f"--tasks_file={folder / 'tasks.yaml'}", "--gin_file=models/t5_1_1/tiny.gin",
      "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 16}", "--gin.TRAIN_STEPS=20",
      "--gin.BATCH_SIZE=16", "--gin.VOCABULARY='byte'", "--gin.LEARNING_RATE=0.003",
      "--gin.DROPOUT_RATE=0.0", "--gin.EVAL_PERIOD=20"]) == 0
  return folder, model_dir


def test_label_candidates_come_from_the_task_spec(run):
  from recast.mixtures import lookup
  assert evaluation.label_candidates(lookup.get_mixture_or_task(TASK)) == list(LABELS)
  assert evaluation.label_candidates(lookup.get_mixture_or_task("glue_rte")) == [
      "entailment", "not_entailment"]
  assert evaluation.label_candidates(lookup.get_mixture_or_task("glue_stsb")) is None
  assert evaluation.label_candidates(lookup.get_mixture_or_task(
      "glue_rte_span_corruption")) is None


def test_rank_accuracy_equals_the_argmax_of_infer_scores(run, tmp_path):
  folder, model_dir = run
  final = {r["metric"]: r["value"] for r in metrics_writer.read_metrics(model_dir)
           if r["split"] == "validation" and r["task"] == TASK and r["step"] == 20}
  validation = [json.loads(l) for l in (folder / "validation.jsonl").read_text().splitlines()]
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"inputs": f"review: {r['text']}", "targets": label})
                           + "\n" for r in validation for label in LABELS))
  assert cli.main(["infer", f"--tasks_file={folder / 'tasks.yaml'}",
                   f"--gin.CHECKPOINT_PATH='{model_dir}'", f"--gin.INPUT_FILE='{pairs}'",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 16}",
                   f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'out'}'",
                   "--gin.INFER_MODE='score'"]) == 0
  scored = [json.loads(l) for l in next((tmp_path / "out").glob("*score*.jsonl"))
            .read_text().splitlines()]
  scores = np.array([r["score"] for r in scored]).reshape(len(validation), len(LABELS))
  by_hand = 100 * np.mean([LABELS[k] == r["label"] for k, r in
                           zip(scores.argmax(axis=1), validation)])
  assert final["rank_accuracy"] == pytest.approx(by_hand)

  # The model decodes one label for every input: its decoded accuracy is the majority's...
  majority = 100 * max(np.mean([r["label"] == l for r in validation]) for l in LABELS)
  baseline = {r["metric"]: r["value"] for r in metrics_writer.read_metrics(model_dir)
              if r["split"] == metrics_writer.BASELINE_SPLIT}
  assert baseline == {"accuracy": pytest.approx(majority),
                      "rank_accuracy": pytest.approx(majority)}
  assert final["accuracy"] == pytest.approx(majority)
  predictions = [json.loads(l)["prediction"] for l in next(
      (model_dir / "inference_eval").glob("*")).read_text().splitlines()]
  assert len(set(map(str, predictions))) == 1
  # ...while its likelihoods already tell the labels apart, and rank classification says so.
  assert len(set(scores.argmax(axis=1))) == 2
  assert final["rank_accuracy"] != pytest.approx(majority)


def test_length_normalised_scores_divide_by_label_length(run):
  from recast.trainer import checkpoints
  folder, model_dir = run
  ref = checkpoints.resolve(str(model_dir), what="run")[-1]
  config, params = evaluation.load_checkpoint(ref, vocabulary=evaluation.carried_vocabulary(ref))
  plain, normalised = (evaluation.Evaluator(
      mixture_or_task_name=TASK, task_feature_lengths={"inputs": 40, "targets": 16},
      config=config, rank_length_normalize=flag, num_examples=8) for flag in (False, True))
  lengths = np.array([len(l.encode()) + 1 for l in LABELS])  # bytes + EOS
  np.testing.assert_allclose(normalised.label_scores(params, TASK),
                             plain.label_scores(params, TASK) / lengths, rtol=1e-6)
