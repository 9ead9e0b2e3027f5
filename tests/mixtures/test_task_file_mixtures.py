"""Mixtures declared in a YAML task file, with no Python: their rates (checked by hand), every
key checked, and a three-task mixture trained with `recast train`, metrics per task."""

import json
import textwrap

import gin
import pytest
import seqio

from recast import cli, metrics_writer
from recast.tasks import task_files, vocabularies
from recast.tasks.task_files import TaskFileError

TASKS = """\
tasks:
  - name: tfm_cls
    files: {train: cls_train.jsonl, validation: cls_val.jsonl}
    inputs: "cls: {q}"
    targets: "{y}"
    labels: ["yes", "no"]
  - name: tfm_reg
    files: {train: reg_train.jsonl, validation: reg_val.jsonl}
    inputs: "reg: {s}"
    targets: "{v}"
    regression: 0.5
  - name: tfm_gen
    files: {train: gen_train.jsonl, validation: gen_val.jsonl}
    inputs: "gen: {x}"
    targets: "{t}"
"""
MIXTURES = """\
mixtures:
  - name: tfm_capped
    tasks: [tfm_cls, tfm_reg, tfm_gen]
    maximum: 20
  - name: tfm_t2
    tasks: [tfm_cls, tfm_reg, tfm_gen]
    rate: temperature
    temperature: 2
  - name: tfm_equal
    tasks: [tfm_cls, tfm_reg, tfm_gen]
    rate: equal
  - name: tfm_weighted
    tasks: {tfm_cls: 3, tfm_capped: 1}
"""
ALL = ["tfm_cls", "tfm_reg", "tfm_gen", "tfm_capped", "tfm_t2", "tfm_equal", "tfm_weighted"]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_data(root):
  """12 / 6 / 30 training rows, 4 validation rows each."""
  _jsonl(root / "cls_train.jsonl", [{"q": f"is {i} even", "y": ["yes", "no"][i % 2]}
                                    for i in range(12)])
  _jsonl(root / "cls_val.jsonl", [{"q": f"is {i} even", "y": ["yes", "no"][i % 2]}
                                  for i in range(4)])
  _jsonl(root / "reg_train.jsonl", [{"s": f"score {i}", "v": i / 2} for i in range(6)])
  _jsonl(root / "reg_val.jsonl", [{"s": f"score {i}", "v": i / 2} for i in range(4)])
  _jsonl(root / "gen_train.jsonl", [{"x": f"copy {i}", "t": f"copied {i}"} for i in range(30)])
  _jsonl(root / "gen_val.jsonl", [{"x": f"copy {i}", "t": f"copied {i}"} for i in range(4)])


@pytest.fixture
def task_file(tmp_path):
  _write_data(tmp_path)
  path = tmp_path / "tasks.yaml"
  path.write_text(TASKS + MIXTURES)
  yield path
  task_files.unregister_task_file(path)
  assert not set(ALL) & (set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def test_rates_of_yaml_mixtures_match_t5s_formulas(task_file, capsys, monkeypatch):
  """e = 12, 6, 30. K=20: r = 12, 6, 20 (of 38). T=2: r = sqrt(e). Explicit {cls: 3, capped:
  1}: cls gets 3 + 12/38 of 4, the capped mixture's others 6/38 and 20/38 of 1 of 4."""
  monkeypatch.setenv(vocabularies.ENV_VAR, "byte")
  shown = {}
  for name in ("tfm_capped", "tfm_t2", "tfm_equal", "tfm_weighted"):
    # --tasks_file after the subcommand's own arguments, twice under two spellings
    assert cli.main(["tasks", "show", name, "-n", "0", "--json", "--tasks_file",
                     str(task_file), f"--tasks_file={task_file.parent}/./tasks.yaml"]) == 0
    shown[name] = json.loads(capsys.readouterr().out)["rates"]
  fraction = lambda name: {t: round(r["fraction"], 6) for t, r in shown[name].items()}
  assert fraction("tfm_capped") == {"tfm_cls": round(12 / 38, 6), "tfm_reg": round(6 / 38, 6),
                                    "tfm_gen": round(20 / 38, 6)}
  assert shown["tfm_capped"]["tfm_gen"]["rate"] == 20.0
  assert shown["tfm_capped"]["tfm_gen"]["rule"] == "examples-proportional min(e, 20)"
  roots = 12 ** 0.5 + 6 ** 0.5 + 30 ** 0.5
  assert fraction("tfm_t2") == {"tfm_cls": round(12 ** 0.5 / roots, 6),
                                "tfm_reg": round(6 ** 0.5 / roots, 6),
                                "tfm_gen": round(30 ** 0.5 / roots, 6)}
  assert fraction("tfm_equal") == {t: round(1 / 3, 6) for t in ("tfm_cls", "tfm_reg", "tfm_gen")}
  assert fraction("tfm_weighted") == {"tfm_cls": round((3 + 12 / 38) / 4, 6),
                                      "tfm_reg": round(6 / 38 / 4, 6),
                                      "tfm_gen": round(20 / 38 / 4, 6)}


@pytest.mark.parametrize("mixture, message", [
    ("  - name: m\n    tasks: [tfm_cls]\n    rates: equal\n",
     r"mixture 'm' has unknown key\(s\) rates; allowed: maximum, name, rate, tasks, temperature"),
    ("  - name: m\n    tasks: [tfm_cls]\n    rate: proportional\n",
     "unknown rate 'proportional'; use one of examples_proportional, temperature, equal, "
     "explicit"),
    ("  - name: m\n    tasks: [tfm_cls, tfm_gne]\n",
     r"no task or mixture named 'tfm_gne'; did you mean tfm_gen"),
    ("  - name: m\n    tasks: [tfm_cls]\n    rate: temperature\n",
     r"rate 'temperature' needs 'temperature: T'"),
    ("  - name: m\n    tasks: [tfm_cls]\n    rate: equal\n    maximum: 10\n",
     "rate 'equal' takes no maximum"),
    ("  - name: m\n    tasks: [tfm_cls]\n    maximum: 0\n", "'maximum' .* positive whole"),
    ("  - name: m\n    tasks: [glue_rte, glue]\n", "member 'glue' is a mixture, which has no "
     "example count; give the mixture 'rate: equal' or explicit rates"),
    ("  - name: m\n    tasks: {tfm_cls: 1}\n    rate: equal\n", "'tasks' gives explicit rates"),
    ("  - name: m\n    tasks: {tfm_cls: -1}\n", "non-negative numbers"),
    ("  - name: tfm_cls\n    tasks: [tfm_gen]\n", "the name is taken by a task of this file"),
])
def test_bad_mixture_entries_name_the_problem_and_register_nothing(tmp_path, mixture, message):
  import recast.mixtures  # noqa: F401  (glue, for the sub-mixture case)
  _write_data(tmp_path)
  path = tmp_path / "tasks.yaml"
  path.write_text(TASKS + "mixtures:\n" + mixture)
  with pytest.raises(TaskFileError, match=message):
    task_files.register_task_file(path)
  assert not {"tfm_cls", "m"} & (set(seqio.TaskRegistry.names())
                                 | set(seqio.MixtureRegistry.names()))


def test_tasks_file_without_a_path_is_a_one_line_error(capsys):
  assert cli.main(["tasks", "list", "--tasks_file"]) == 2
  assert "--tasks_file needs the path of a YAML task file" in capsys.readouterr().err


def test_unknown_top_level_key_is_an_error(tmp_path):
  _write_data(tmp_path)
  path = tmp_path / "tasks.yaml"
  path.write_text(TASKS + MIXTURES.replace("mixtures:", "mixture:"))
  with pytest.raises(TaskFileError, match=r"the file has unknown key\(s\) mixture; allowed: "
                     "mixtures, tasks"):
    task_files.read_task_file(path)


def test_a_yaml_only_mixture_of_three_file_tasks_trains_with_metrics_per_task(
    task_file, tmp_path):
  """`recast train` on the mixture, 2 steps and an evaluation: metrics.jsonl holds each
  member task's declared metrics (and teacher-forced loss), and the mixture's average."""
  gin.clear_config()
  model_dir = tmp_path / "run"
  assert cli.main([
      "train", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/finetune.gin",
      f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=tfm_capped",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.TRAIN_STEPS=2",
      "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=2", "--gin.VOCABULARY=byte",
      "--tasks_file", str(task_file)]) == 0
  rows = [r for r in metrics_writer.read_metrics(model_dir) if r["split"] == "validation"]
  found = {(r["task"], r["metric"]) for r in rows}
  # The metrics each entry declares (defaults: accuracy; regression: pearson_spearman), the
  # teacher-forced loss of each, and the mixture's average (evaluation may add more, such as
  # rank classification of the labelled task).
  assert found >= {
      ("tfm_cls", "accuracy"), ("tfm_cls", "loss"), ("tfm_cls", "token_accuracy"),
      ("tfm_reg", "pearson_corrcoef"), ("tfm_reg", "spearman_corrcoef"), ("tfm_reg", "loss"),
      ("tfm_reg", "token_accuracy"),
      ("tfm_gen", "accuracy"), ("tfm_gen", "loss"), ("tfm_gen", "token_accuracy"),
      ("tfm_capped", "average"), ("tfm_capped", "loss"), ("tfm_capped", "token_accuracy")}
  assert {task for task, _ in found} == {"tfm_cls", "tfm_reg", "tfm_gen", "tfm_capped"}
  assert not {m for t, m in found if t != "tfm_reg"} & {"pearson_corrcoef", "spearman_corrcoef"}
  assert {r["step"] for r in rows} == {2}
  loss = {r["task"]: r["value"] for r in rows if r["metric"] == "loss"}
  # A random model over 359 byte ids: about ln(359) = 5.9 nats per target token.
  assert all(4.5 < v < 7.5 for v in loss.values()), loss
  assert loss["tfm_capped"] == pytest.approx(
      (loss["tfm_cls"] + loss["tfm_reg"] + loss["tfm_gen"]) / 3)
  predictions = sorted(p.name for p in (model_dir / "inference_eval").iterdir())
  assert predictions == ["tfm_cls-2.jsonl", "tfm_gen-2.jsonl", "tfm_reg-2.jsonl"]
  assert len((model_dir / "inference_eval" / "tfm_gen-2.jsonl").read_text().splitlines()) == 4
