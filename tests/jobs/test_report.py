"""`recast report`: final/best tables with averages and benchmark scores, CSV and markdown
files, plots, from metrics.jsonl rows written by MetricsWriter."""

import csv

import pytest

from recast.trainer import benchmark_scores
from recast import cli, metrics_writer
from recast.jobs import report

# A full set of GLUE metrics (percent), as the evaluator writes them for the glue mixture.
GLUE_FINAL = {
    "glue_cola": {"matthews_corrcoef": 40.0},
    "glue_sst2": {"accuracy": 90.0},
    "glue_mrpc": {"f1": 88.0, "accuracy": 84.0},
    "glue_stsb": {"pearson_corrcoef": 86.0, "spearman_corrcoef": 85.0},
    "glue_qqp": {"f1": 70.0, "accuracy": 88.0},
    "glue_mnli_matched": {"accuracy": 80.0},
    "glue_mnli_mismatched": {"accuracy": 82.0},
    "glue_qnli": {"accuracy": 91.0},
    "glue_rte": {"accuracy": 70.0},
    "glue_wnli": {"accuracy": 10.0},  # not in T5's GLUE score
}
# T5: average multi-metric tasks and MNLI m/mm first, then the 8 groups:
# (40 + 90 + 86 + 85.5 + 79 + 81 + 91 + 70) / 8 = 622.5 / 8.
GLUE_SCORE = 77.8125


def _write(model_dir, rows_by_step, *, train_losses=()):
  writer = metrics_writer.MetricsWriter(model_dir, tensorboard=False)
  for step, loss in train_losses:
    writer.write(step, "train", "", {"loss": loss, "learning_rate": 1e-3})
  for step, results in rows_by_step:
    for task, values in results.items():
      writer.write(step, "validation", task, values)


def test_glue_score_is_t5s_average_of_task_averages():
  assert benchmark_scores.benchmark_scores(GLUE_FINAL) == {
      "glue_score": pytest.approx(GLUE_SCORE)}
  missing = {k: v for k, v in GLUE_FINAL.items() if k != "glue_mnli_mismatched"}
  assert benchmark_scores.benchmark_scores(missing) == {}
  # WNLI does not move it.
  other_wnli = dict(GLUE_FINAL, glue_wnli={"accuracy": 99.0})
  assert benchmark_scores.benchmark_scores(other_wnli)["glue_score"] == pytest.approx(GLUE_SCORE)


def test_super_glue_score_hand_values():
  results = {"super_glue_boolq": {"accuracy": 76.0},
             "super_glue_cb": {"macro_f1": 80.0, "accuracy": 90.0},
             "super_glue_copa": {"accuracy": 60.0},
             "super_glue_multirc": {"f1a": 70.0, "exact_match": 30.0},
             "super_glue_record": {"f1": 72.0, "em": 70.0},
             "super_glue_rte": {"accuracy": 74.0},
             "super_glue_wic": {"accuracy": 66.0},
             "super_glue_wsc": {"accuracy": 64.0}}
  expected = (76 + 85 + 60 + 50 + 71 + 74 + 66 + 64) / 8
  assert benchmark_scores.benchmark_scores(results) == {
      "super_glue_score": pytest.approx(expected)}
  assert expected == pytest.approx(68.25)


def test_final_and_best_tables_with_averages(tmp_path):
  a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
  _write(a, [(100, {"glue_rte": {"accuracy": 60.0, "loss": 0.9, "token_accuracy": 0.5},
                    "glue_mrpc": {"f1": 80.0, "accuracy": 70.0},
                    "mix": {"average": 1.0, "loss": 5.0}}),  # a mixture row: recomputed
             (200, {"glue_rte": {"accuracy": 55.0, "loss": 0.8},
                    "glue_mrpc": {"f1": 82.0, "accuracy": 72.0}})],
         train_losses=[(100, 2.0), (200, 1.5)])
  _write(b, [(100, {"glue_rte": {"accuracy": 50.0},
                    "wikipedia_en_span_corruption": {"loss": 3.0, "token_accuracy": 0.2}}),
             (200, {"glue_rte": {"accuracy": 65.0},
                    "wikipedia_en_span_corruption": {"loss": 3.5}})])
  tables = report.build_tables(report.read_runs([a, b]))
  final, best = tables["final"], tables["best"]
  assert final.columns == ["glue_mrpc/accuracy", "glue_mrpc/f1", "glue_rte/accuracy",
                           "wikipedia_en_span_corruption/loss", "average", "average/accuracy"]
  assert final.rows["a"] == {"glue_mrpc/accuracy": 72.0, "glue_mrpc/f1": 82.0,
                             "glue_rte/accuracy": 55.0, "average": (77.0 + 55.0) / 2,
                             "average/accuracy": (72.0 + 55.0) / 2}  # accuracy alone
  assert best.rows["a"]["glue_rte/accuracy"] == 60.0
  assert best.steps["a"]["glue_rte/accuracy"] == 100
  assert best.rows["a"]["average"] == pytest.approx((60.0 + 77.0) / 2)
  # A task without inference metrics shows its loss; best loss is the minimum.
  assert final.rows["b"]["wikipedia_en_span_corruption/loss"] == 3.5
  assert best.rows["b"]["wikipedia_en_span_corruption/loss"] == 3.0
  assert final.rows["b"]["average"] == 65.0
  assert "average/accuracy" not in final.rows["b"]  # one scored task: nothing to average
  assert "glue_mrpc/f1" not in final.rows["b"]

  out = tmp_path / "report"
  assert cli.main(["report", str(a), str(b), "--out", str(out)]) == 0
  with open(out / "final.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["a", "b"]
  assert float(rows[0]["glue_rte/accuracy"]) == 55.0 and rows[1]["glue_mrpc/f1"] == ""
  with open(out / "best.csv") as f:
    assert float(list(csv.DictReader(f))[1]["glue_rte/accuracy"]) == 65.0
  markdown = (out / "report.md").read_text()
  assert "| a | 72 | 82 | 55 | - | 66 | 63.5 |" in markdown
  assert "it mixes metrics" in markdown and "majority class" not in markdown
  assert "60 (@100)" in markdown
  for name in ("train_loss", "eval_glue_rte", "eval_glue_mrpc",
               "eval_wikipedia_en_span_corruption"):
    png = out / "plots" / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plots/{name}.png" in markdown
  assert not (out / "plots" / "eval_mix.png").exists()


def test_glue_score_column_final_and_best(tmp_path):
  run = tmp_path / "glue_run"
  worse = {task: {m: v - 10 for m, v in values.items()} for task, values in GLUE_FINAL.items()}
  _write(run, [(100, GLUE_FINAL), (200, worse)])
  tables = report.build_tables(report.read_runs([run]))
  assert tables["final"].columns[-4:] == ["average", "average/accuracy", "average/f1",
                                          "glue_score"]
  assert tables["final"].rows["glue_run"]["glue_score"] == pytest.approx(GLUE_SCORE - 10)
  assert tables["best"].rows["glue_run"]["glue_score"] == pytest.approx(GLUE_SCORE)


def test_run_names_are_unique_and_errors_name_the_folder(tmp_path, capsys):
  x, y = tmp_path / "s1" / "run", tmp_path / "s2" / "run"
  assert list(report.run_names([x, y])) == ["s1/run", "s2/run"]
  empty = tmp_path / "empty"
  empty.mkdir()
  assert cli.main(["report", str(empty)]) != 0
  err = capsys.readouterr().err
  assert str(empty) in err and "metrics.jsonl" in err and "Traceback" not in err
  _write(x, [], train_losses=[(10, 1.0)])
  assert cli.main(["report", str(x), "--out", str(tmp_path / "r")]) != 0
  assert "EVAL_PERIOD" in capsys.readouterr().err


def test_majority_class_baseline_row_and_averages(tmp_path):
  run = tmp_path / "run"
  _write(run, [(100, {"glue_rte": {"accuracy": 60.0}, "glue_cola": {"mcc": 10.0}}),
               (200, {"glue_rte": {"accuracy": 64.0}, "glue_cola": {"mcc": 20.0}})])
  writer = metrics_writer.MetricsWriter(run, tensorboard=False)
  writer.write(0, metrics_writer.BASELINE_SPLIT, "glue_rte", {"accuracy": 52.7})
  writer.write(0, metrics_writer.BASELINE_SPLIT, "glue_cola", {"mcc": 0.0})
  writer.write(0, metrics_writer.BASELINE_SPLIT, "glue_sst2", {"accuracy": 50.9})  # not run
  tables = report.build_tables(report.read_runs([run]))
  final = tables["final"]
  assert final.rows["run"] == {"glue_cola/mcc": 20.0, "glue_rte/accuracy": 64.0,
                               "average": 42.0}
  assert final.baseline == {"glue_cola/mcc": 0.0, "glue_rte/accuracy": 52.7,
                            "average": pytest.approx(26.35)}
  assert list(final.rows) == ["run"]  # the baseline is no run
  out = tmp_path / "report"
  assert cli.main(["report", str(run), "--out", str(out)]) == 0
  with open(out / "final.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["run", "majority class"]
  assert float(rows[1]["glue_rte/accuracy"]) == 52.7 and float(rows[1]["average"]) == 26.35
  markdown = (out / "report.md").read_text()
  assert "| majority class | 0 | 52.7 | 26.35 |" in markdown
  assert "most common label" in markdown
