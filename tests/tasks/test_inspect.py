"""`recast tasks list/show`: sources and splits, rendered examples, stable JSON."""

import json

import gin
import pytest

from recast.tasks import inspect as tasks_inspect
from recast.tasks import sources, vocabularies
from recast import cli


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
  monkeypatch.delenv(sources.ENV_VAR, raising=False)
  monkeypatch.setenv(vocabularies.ENV_VAR, "byte")
  gin.clear_config()
  yield
  gin.clear_config()


def _write_rte(root):
  folder = root / "glue" / "rte"
  folder.mkdir(parents=True)
  folder.joinpath("validation.jsonl").write_text(
      '{"sentence1": "A cat sat.", "sentence2": "A cat.", "label": 0, "idx": 0}\n'
      '{"sentence1": "B.", "sentence2": "C.", "label": 1, "idx": 1}\n')


def test_list_json_names_sources_and_splits(tmp_path, capsys):
  _write_rte(tmp_path)
  assert cli.main(["tasks", "list", "--json", f"--gin.DATA_DIR={tmp_path}"]) == 0
  listing = json.loads(capsys.readouterr().out)
  by_name = {t["name"]: t for t in listing["tasks"]}
  assert by_name["glue_rte"]["source"] == f"local:{tmp_path / 'glue' / 'rte'}"
  assert by_name["glue_rte"]["splits"] == ["validation"]
  assert by_name["glue_mnli"]["splits"][:3] == ["train", "validation_matched",
                                                "validation_mismatched"]
  assert by_name["glue_cola"]["metrics"] == ["matthews_corrcoef"]
  assert "unavailable" in by_name["glue_cola"]["source"]  # DATA_DIR lacks glue/cola
  assert [t["name"] for t in listing["tasks"]] == sorted(by_name)
  assert sorted(listing) == ["derived_objectives", "mixtures", "tasks"]
  assert {"span_corruption", "prefix_lm", "bert_mlm"} <= set(listing["derived_objectives"])
  assert cli.main(["tasks", "list"]) == 0
  assert "tfds:glue/rte:2.0.0  [train, validation, test]" in capsys.readouterr().out


def test_show_json_gives_text_ids_and_lengths(tmp_path, capsys):
  _write_rte(tmp_path)
  assert cli.main(["tasks", "show", "glue_rte", "--split", "validation", "-n", "1", "--json",
                   f"--gin.DATA_DIR={tmp_path}"]) == 0
  shown = json.loads(capsys.readouterr().out)
  assert shown["split"] == "validation" and shown["vocabulary"]["type"] == "byte"
  [ex] = shown["examples"]
  assert ex["inputs"] == "rte sentence1: A cat sat. sentence2: A cat."
  assert ex["targets"] == "entailment"
  assert ex["targets_ids"] == [b + 3 for b in b"entailment"] + [1]
  assert ex["targets_length"] == 11 and ex["inputs_length"] == len(ex["inputs"]) + 1


def test_unknown_names_and_splits_are_user_errors(tmp_path, capsys):
  assert cli.main(["tasks", "show", "glue_rtee"]) == 2
  assert "did you mean glue_rte" in capsys.readouterr().err
  _write_rte(tmp_path)
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  with pytest.raises(sources.LocalDataError, match="no split 'train'.*available: validation"):
    tasks_inspect.show_examples("glue_rte", split="train")


def test_show_derived_task_prints_span_corrupted_text_with_sentinels(tmp_path, capsys):
  """`recast tasks show glue_rte_span_corruption` finds the derived task (the lookup every
  command shares) and spells its sentinels as T5 does."""
  rows = [{"idx": i, "sentence1": f"The cat number {i} sat on the mat all day long.",
           "sentence2": "A cat sat.", "label": i % 2} for i in range(8)]
  folder = tmp_path / "glue" / "rte"
  folder.mkdir(parents=True)
  (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert cli.main(["tasks", "show", "glue_rte_span_corruption", "-n", "2", "--json",
                   f"--gin.DATA_DIR={tmp_path}", "--gin.VOCABULARY='byte'",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}"]) == 0
  shown = json.loads(capsys.readouterr().out)
  assert [ex["task"] for ex in shown["examples"]] == ["glue_rte_span_corruption"] * 2
  for ex in shown["examples"]:
    assert "<extra_id_0>" in ex["inputs"] and ex["targets"].startswith("<extra_id_0>")
    assert ex["inputs_length"] == 64
    # Inputs keep the text outside the noise spans; the labels never appear.
    assert "cat" in ex["inputs"] + ex["targets"]
    assert "entailment" not in ex["inputs"] + ex["targets"]


def test_show_derived_task_with_a_run_file_whose_lengths_are_required(tmp_path, capsys):
  """runs/finetune.gin leaves TASK_FEATURE_LENGTHS %gin.REQUIRED: show cuts to T5's 512/114
  instead of failing on the unresolved reference."""
  folder = tmp_path / "glue" / "rte"
  folder.mkdir(parents=True)
  rows = [{"idx": i, "sentence1": "word " * 300, "sentence2": "x", "label": 0} for i in range(4)]
  (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert cli.main(["tasks", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/finetune.gin",
                   "show", "glue_rte_span_corruption", "-n", "1", "--json",
                   f"--gin.DATA_DIR={tmp_path}", "--gin.VOCABULARY='byte'"]) == 0
  shown = json.loads(capsys.readouterr().out)
  assert shown["examples"][0]["inputs_length"] == 512
  assert shown["examples"][0]["targets_length"] == 114


def test_show_mixture_rates_unknown_until_counted(tmp_path, capsys):
  """A member without an example count (no data yet, as conll2012_ner of dspt14 offline) is
  shown as unknown instead of failing; the counted members keep their rates."""
  import seqio
  import tensorflow as tf
  from recast.tasks import task_files
  uncounted = seqio.Task(
      "inspect_uncounted", source=seqio.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensors({"inputs": "a",
                                                                     "targets": "b"}),
          splits=["train"]),
      output_features=vocabularies.output_features())
  seqio.TaskRegistry.add_provider("inspect_uncounted", uncounted)
  (tmp_path / "rows.jsonl").write_text("".join(
      json.dumps({"text": f"row {i}", "label": "a"}) + "\n" for i in range(7)))
  (tmp_path / "tasks.yaml").write_text(
      "tasks:\n  - {name: inspect_counted, files: {train: rows.jsonl}, inputs: '{text}', "
      "targets: '{label}', labels: [a, b]}\nmixtures:\n  - name: inspect_mix\n"
      "    tasks: [inspect_counted, inspect_uncounted]\n    maximum: 5\n")
  try:
    assert cli.main(["tasks", "show", "inspect_mix", "-n", "0", "--json",
                     "--tasks_file", str(tmp_path / "tasks.yaml")]) == 0
    rates = json.loads(capsys.readouterr().out)["rates"]
    assert rates["inspect_counted"] == {"rate": 5.0, "fraction": None,
                                        "rule": "examples-proportional min(e, 5)"}
    assert rates["inspect_uncounted"]["rate"] is None
    assert "has no example count for split 'train'" in rates["inspect_uncounted"]["unknown"]
    assert cli.main(["tasks", "show", "inspect_mix", "-n", "0",
                     "--tasks_file", str(tmp_path / "tasks.yaml")]) == 0
    out = capsys.readouterr().out
    assert "inspect_uncounted" in out and tasks_inspect.UNKNOWN_RATE in out
  finally:
    task_files.unregister_task_file(tmp_path / "tasks.yaml")
    seqio.TaskRegistry.remove("inspect_uncounted")
