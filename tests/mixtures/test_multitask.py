"""Multitask fine-tuning on real GLUE tasks (RTE, MRPC, CoLA from ../shared/data): per-task
metrics and the mixture average in metrics.jsonl, then `recast report` on the run; and the
experiment gin files (MT-DNN, T5 multitask + fine-tuning, leave-one-out) resolve."""

import csv
import json

import gin
import numpy as np
import pytest
import seqio

from recast.mixtures import benchmarks, rates
from recast import cli, gin_config, metrics_writer

MIXTURE = "glue_rte_mrpc_cola"
TASKS = ("glue_cola", "glue_mrpc", "glue_rte")
METRICS = {"glue_cola": ["matthews_corrcoef"], "glue_mrpc": ["accuracy", "f1"],
           "glue_rte": ["accuracy"]}
# The label words must be pieces of the vocabulary too (they are not in the inputs' text).
LABEL_TEXT = "acceptable unacceptable equivalent not_equivalent entailment not_entailment"
STEPS, EVAL_PERIOD = 30, 15


@pytest.fixture(autouse=True)
def no_gin_bindings_left():
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def multitask_run(shared_data, tmp_path_factory):
  """A tiny T5 trained 30 steps on the examples-proportional mixture of the three tasks,
  evaluated (32 validation examples per task) at steps 15 and 30; a 1000-piece
  SentencePiece vocabulary built from their train text. Returns (MODEL_DIR, stdout)."""
  import contextlib
  import io
  import os
  from recast.tasks import vocab_build
  root = tmp_path_factory.mktemp("multitask")
  os.environ["RECAST_DATA_DIR"] = str(shared_data)
  try:
    lines = [*vocab_build.task_text(list(TASKS)), *[LABEL_TEXT] * 100,
             *["cola sentence: mrpc sentence1: sentence2: rte"] * 100]
  finally:
    del os.environ["RECAST_DATA_DIR"]
  vocab = vocab_build.build_vocabulary(lines, vocab_size=1000, out=root / "spiece.model")
  benchmarks.add_mixture(MIXTURE, TASKS, default_rate=rates.examples_proportional())
  model_dir = root / "run"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = cli.main([
        "train", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/finetune.gin",
        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
        f"--gin.DATA_DIR='{shared_data}'", f"--gin.VOCABULARY='{vocab}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 8}",
        f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=32", "--gin.DROPOUT_RATE=0.0",
        "--gin.LEARNING_RATE=0.01", f"--gin.EVAL_PERIOD={EVAL_PERIOD}",
        f"--gin.CHECKPOINT_PERIOD={STEPS}", "--gin.train.stats_period=5",
        "--gin.train.max_truncated_fraction=1.0", "--gin.Evaluator.num_examples=32",
        "--gin.Evaluator.batch_size=32"])
  assert code == 0, out.getvalue()
  return model_dir, out.getvalue()


def test_multitask_run_has_per_task_metrics_and_the_mixture_average(multitask_run):
  model_dir, _ = multitask_run
  rows = metrics_writer.read_metrics(model_dir)
  evals = {(r["step"], r["task"], r["metric"]): r["value"] for r in rows
           if r["split"] == "validation"}
  for step in (EVAL_PERIOD, STEPS):
    for task in TASKS:
      for metric in METRICS[task] + ["loss", "token_accuracy"]:
        assert evals[(step, task, metric)] is not None
      for metric in METRICS[task]:
        assert -100.0 <= evals[(step, task, metric)] <= 100.0
    task_means = [np.mean([evals[(step, t, m)] for m in METRICS[t]]) for t in TASKS]
    assert evals[(step, MIXTURE, "average")] == pytest.approx(np.mean(task_means))
    assert evals[(step, MIXTURE, "loss")] == pytest.approx(
        np.mean([evals[(step, t, "loss")] for t in TASKS]))
    assert (step, MIXTURE, "glue_score") not in evals  # needs every GLUE task
  losses = [r["value"] for r in rows if r["split"] == "train" and r["metric"] == "loss"]
  assert len(losses) == STEPS // 5 and losses[-1] < losses[0]
  print(json.dumps({f"{t}/{m}": evals[(STEPS, t, m)] for t in TASKS for m in METRICS[t]}))


def test_report_of_the_multitask_run(multitask_run, tmp_path):
  model_dir, _ = multitask_run
  out = tmp_path / "report"
  assert cli.main(["report", str(model_dir), "--out", str(out)]) == 0
  rows = metrics_writer.read_metrics(model_dir)
  last = {(r["task"], r["metric"]): r["value"] for r in rows
          if r["split"] == "validation" and r["step"] == STEPS}
  with open(out / "final.csv") as f:
    row, baseline = list(csv.DictReader(f))
  assert row["run"] == "run" and baseline["run"] == "majority class"
  assert list(row)[1:] == [
      "glue_cola/matthews_corrcoef", "glue_cola/rank_matthews_corrcoef", "glue_mrpc/accuracy",
      "glue_mrpc/f1", "glue_mrpc/rank_accuracy", "glue_mrpc/rank_f1", "glue_rte/accuracy",
      "glue_rte/rank_accuracy", "average", "average/accuracy", "average/rank_accuracy"]
  assert float(baseline["glue_cola/matthews_corrcoef"]) == 0.0  # one label: no correlation
  for task in TASKS:
    for metric in METRICS[task]:
      assert float(row[f"{task}/{metric}"]) == pytest.approx(last[(task, metric)])
  assert float(row["average"]) == pytest.approx(last[(MIXTURE, "average")])
  with open(out / "best.csv") as f:
    best, _ = list(csv.DictReader(f))
  for column, value in best.items():
    if column != "run" and not column.startswith("average"):
      task, metric = column.split("/")
      assert float(value) == max(r["value"] for r in rows if r["split"] == "validation"
                                 and r["task"] == task and r["metric"] == metric)
  for name in ("train_loss", "eval_glue_cola", "eval_glue_mrpc", "eval_glue_rte"):
    assert (out / "plots" / f"{name}.png").stat().st_size > 1000
  assert "## Final" in (out / "report.md").read_text()


def _resolve(value):
  """A gin macro's value, following macro references and calling @fn() references."""
  while isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
  return value


@pytest.mark.parametrize("stage_file,bindings,expected", [
    ("experiments/mtdnn/multitask.gin", [], "glue"),
    ("experiments/mtdnn/finetune.gin",
     ["TASK='glue_rte'", "INITIAL_CHECKPOINT_PATH='/runs/mt'"], "glue_rte"),
    ("experiments/t5_multitask_finetune/pretrain.gin", [],
     "glue_super_glue_with_wikipedia_en_span_corruption"),
    ("experiments/t5_multitask_finetune/finetune.gin",
     ["TASK='super_glue_cb'", "INITIAL_CHECKPOINT_PATH='/runs/pt'"], "super_glue_cb"),
    ("experiments/leave_one_out/pretrain.gin", ["TASK='glue_rte'"],
     "glue_super_glue_without_glue_rte_with_wikipedia_en_span_corruption"),
    ("experiments/leave_one_out/finetune.gin",
     ["TASK='glue_rte'", "INITIAL_CHECKPOINT_PATH='/runs/loo'"], "glue_rte"),
])
def test_experiment_stages_resolve(stage_file, bindings, expected):
  gin_config.parse_gin(["models/t5_1_1/tiny.gin", stage_file],
                       ["MODEL_DIR='/runs/x'", *bindings])
  gin_config.require_macros(["MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS",
                             "TRAIN_STEPS", "INITIAL_CHECKPOINT_PATH"], run_file=stage_file)
  name = _resolve(gin_config.macro_value("MIXTURE_OR_TASK_NAME"))
  assert name == expected
  provider = seqio.get_mixture_or_task(name)
  if "without_glue_rte" in name:
    members = {t.name for t in provider.tasks}
    assert "glue_rte" not in members and "super_glue_rte" in members
    assert "wikipedia_en_span_corruption" in members


def test_finetune_stages_require_their_checkpoint():
  gin_config.parse_gin(["models/t5_1_1/tiny.gin", "experiments/mtdnn/finetune.gin"],
                       ["MODEL_DIR='/runs/x'", "TASK='glue_rte'"], finalize=False)
  with pytest.raises(gin_config.GinConfigError, match="INITIAL_CHECKPOINT_PATH"):
    gin_config.require_macros(["TASK", "INITIAL_CHECKPOINT_PATH"])
