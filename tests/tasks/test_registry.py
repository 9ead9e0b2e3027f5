"""The whole task registry: every task renders to token ids from mock data (local files in
the builder layout, and tfds.testing.mock_data for TFDS builders), its postprocessor
inverts every label, and registration is all-or-nothing."""

import json
from pathlib import Path

import gin
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import recast.tasks  # noqa: F401  (registers the built-in tasks)
from recast.tasks import postprocessors, registry, sources, specs, vocabularies

N = 6


@pytest.fixture(autouse=True)
def _clean_config(monkeypatch):
  monkeypatch.delenv(sources.ENV_VAR, raising=False)
  monkeypatch.delenv(vocabularies.ENV_VAR, raising=False)
  gin.clear_config()
  with vocabularies.use_vocabulary(vocabularies.byte_vocabulary()):  # exact round trips
    yield
  gin.clear_config()


def mock_rows(spec, n=N):
  """n rows in the builder's layout: the spec's example_rows repeated with fresh idx, or
  rows built from the template fields whose labels cycle through every class."""
  if spec.example_rows:
    rows = [dict(spec.example_rows[i % len(spec.example_rows)]) for i in range(n)]
    for i, row in enumerate(rows):
      if isinstance(row.get("idx"), int):
        row["idx"] = i
    return rows
  assert not spec.prepare, (
      f"task {spec.name!r} has prepare steps; give its spec example_rows (source rows in "
      "the builder's layout) so the registry tests can render it")
  fields = set(spec.input_fields + specs.template_fields(spec.targets_template))
  rows = []
  for i in range(n):
    row = {f: f"{f} text {i} é." for f in sorted(fields - {spec.label_field})}
    row["idx"] = i
    if spec.label_field and spec.is_classification:
      row[spec.label_field] = i % len(spec.label_names)
    elif spec.label_field and spec.is_regression:
      row[spec.label_field] = round((i * 0.83) % 5, 2)
    elif spec.label_field:
      row[spec.label_field] = f"answer {i}"
    rows.append(row)
  return rows


def write_builder_layout(root, spec, rows_by_split):
  folder = Path(root) / spec.builder_name
  folder.mkdir(parents=True, exist_ok=True)
  for split, rows in rows_by_split.items():
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _examples(task, split):
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def _expected_target(spec, row_label):
  return spec.render_label(row_label)


def _check_label_inverted(spec, task, ex):
  target = ex["targets_pretokenized"].decode()
  got = task.postprocess_fn(target, example=ex, is_target=True)
  name = spec.postprocessor_name
  label = ex.get(spec.label_field)
  if name == "class_label":
    assert got == label, (spec.name, target)
  elif name == "float":
    assert got == pytest.approx(float(spec.render_label(label)))
  elif name == "multirc":
    assert got["value"] == label
    assert got["group"] == (ex["idx"]["paragraph"], ex["idx"]["question"])
  elif name == "record":
    answers = [a.decode() for a in ex["answers"]]
    assert got["answers"] == answers and (target in answers or not answers)
  elif name == "squad":  # tasks.dspt: every gold answer comes back for the metric
    assert got == [a.decode() for a in ex["answers"]] and target in got
  else:
    assert got == target.strip()


ALL_TASKS = sorted(registry.registered_specs())


def test_registry_walk_covers_every_seqio_task():
  """Every seqio task is a text task with a spec, so the walks below cover it (MNLI's
  matched/mismatched evaluation views read glue_mnli's spec'd source; pretraining tasks
  derived from a spec'd task or a text corpus are walked in test_pretraining)."""
  from recast.mixtures import benchmarks
  from recast.tasks import pretraining
  uncovered = set(seqio.TaskRegistry.names()) - set(registry.registered_specs())
  uncovered -= set(benchmarks.MNLI_EVAL_SPLITS)
  assert {n for n in uncovered if pretraining.parse_derived_task_name(n) is None} == set()
  assert len(ALL_TASKS) >= 20


@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_task_renders_local_mock_rows_and_inverts_labels(name, tmp_path):
  spec = registry.task_spec(name)
  task = seqio.get_mixture_or_task(name)
  split = spec.splits[0]
  if spec.files:  # Task-file and demo tasks: their own files are the data.
    examples = _examples(task, split)[:N]
    assert examples
    for ex in examples:
      _check_label_inverted(spec, task, ex)
    return
  rows = mock_rows(spec, max(N, len(spec.label_names or ())))
  write_builder_layout(tmp_path, spec, {split: rows})
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  examples = _examples(task, split)
  assert examples
  if name == "super_glue_record":  # one example per gold answer, one for none
    assert len(examples) == sum(len(r["answers"]) or 1 for r in rows)
  elif not spec.prepare:
    assert len(examples) == len(rows)
  vocab = vocabularies.get_vocabulary()
  for ex in examples:
    assert ex["targets"].dtype == np.int32 and ex["targets"][-1] == vocab.eos_id
    assert len(ex["inputs"]) > 1 and ex["inputs"].max() < vocab.vocab_size
    assert vocab.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode()
    _check_label_inverted(spec, task, ex)
  if spec.is_classification and not spec.example_rows:  # every label seen and inverted
    assert {int(ex[spec.label_field]) for ex in examples} == set(range(len(spec.label_names)))
  assert task.num_input_examples(split) == len(rows)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_postprocessor_inverts_every_label_rendering(name):
  spec = registry.task_spec(name)
  post = postprocessors.make_postprocessor(spec)
  if spec.is_classification:
    for label, label_name in enumerate(spec.label_names):
      assert spec.render_label(label) == label_name
      assert post(label_name, example={"idx": {"paragraph": 0, "question": 0}},
                  is_target=False) in (label, {"value": label})
    assert spec.render_label(-1) == specs.UNKNOWN_LABEL
    assert post("no such label") in (postprocessors.UNPARSEABLE,
                                     {"value": postprocessors.UNPARSEABLE})
  elif spec.is_regression:
    for value in np.arange(0, 5.01, spec.regression_step):
      assert post(spec.render_label(value)) == pytest.approx(value)
    assert post("garbage") == postprocessors.UNPARSEABLE


def _tfds_native(name):
  spec = registry.task_spec(name)
  return spec.source and not spec.source.startswith("huggingface:") and not spec.files


@pytest.mark.parametrize("name", [n for n in ALL_TASKS if _tfds_native(n)])
def test_every_tfds_task_renders_tfds_mock_data(name):
  spec = registry.task_spec(name)
  task = seqio.get_mixture_or_task(name)
  with tfds.testing.mock_data(num_examples=3):
    examples = _examples(task, spec.splits[0])
  assert examples
  prefix = spec.inputs_template.split("{")[0]
  for ex in examples:
    assert ex["inputs_pretokenized"].decode().startswith(prefix)
    assert ex["targets"][-1] == vocabularies.get_vocabulary().eos_id
    label = ex.get(spec.label_field, -1)
    if spec.postprocessor_name == "class_label" and 0 <= label < len(spec.label_names):
      assert task.postprocess_fn(ex["targets_pretokenized"].decode()) == \
          label


# ------------------------------------------------------------------------- registration

def _spec(**changes):
  base = dict(name="test_tiny_task", source="", files={"train": "/nonexistent.jsonl"},
              splits=("train",), inputs_template="tiny text: {text}",
              label_names=("no", "yes"))
  base.update(changes)
  return specs.TextTaskSpec(**base)


def test_register_is_all_or_nothing_and_rejects_duplicates():
  with pytest.raises(specs.TaskSpecError, match="unknown metrics"):
    registry.register_text_task(_spec(metric_names=("acuracy",)))
  assert "test_tiny_task" not in seqio.TaskRegistry.names()
  assert "test_tiny_task" not in registry.registered_specs()
  try:
    registry.register_text_task(_spec())
    with pytest.raises(specs.TaskSpecError, match="already registered.*overwrite=True"):
      registry.register_text_task(_spec())
    task = registry.register_text_task(_spec(label_names=("a", "b")), overwrite=True)
    assert seqio.get_mixture_or_task("test_tiny_task") is task
    assert registry.task_spec("test_tiny_task").label_names == ("a", "b")
  finally:
    registry.unregister_text_task("test_tiny_task")
  with pytest.raises(specs.TaskSpecError, match="did you mean glue_rte"):
    registry.task_spec("glue_rt")


@pytest.mark.parametrize("changes, message", [
    (dict(name="Bad Name"), "lower case"),
    (dict(splits=("train", "test")), "files.*splits"),
    (dict(regression_step=0.2), "not both"),
    (dict(label_names=("a", "a")), "repeat"),
    (dict(inputs_template="no fields"), "names no field"),
    (dict(postprocessor="nope"), "unknown postprocessor"),
])
def test_invalid_specs_name_the_problem(changes, message):
  with pytest.raises(specs.TaskSpecError, match=message):
    registry.register_text_task(_spec(**changes))
  assert "test_tiny_task" not in seqio.TaskRegistry.names()


def test_spec_knows_its_text_fields_and_builder():
  rte = registry.task_spec("glue_rte")
  assert rte.input_fields == ["sentence1", "sentence2"]
  assert rte.natural_text_fields == ["sentence1", "sentence2"]
  assert rte.builder_name == "glue/rte"
  assert registry.task_spec("super_glue_wsc").builder_name == "super_glue/wsc.fixed"
  assert registry.task_spec("super_glue_record").natural_text_fields == ["passage", "query"]
  assert _spec(source="huggingface:ag_news").builder_name == "ag_news"


# ---------------------------------------------------------------------------- data dirs

def test_data_dir_resolution_order(tmp_path, monkeypatch):
  spec = registry.task_spec("glue_rte")
  assert sources.data_dir_for(spec) is None  # TFDS
  monkeypatch.setenv(sources.ENV_VAR, str(tmp_path / "env"))
  assert sources.data_dir_for(spec) == str(tmp_path / "env")
  gin.parse_config(f"DATA_DIR = '{tmp_path / 'gin'}'")
  assert sources.data_dir_for(spec) == str(tmp_path / "gin")
  gin.parse_config(f"TASK_DATA_DIRS = {{'glue_rte': '{tmp_path / 'task'}', "
                   "'glue_cola': 'tfds'}")
  assert sources.data_dir_for(spec) == str(tmp_path / "task")
  assert sources.data_dir_for(registry.task_spec("glue_cola")) is None
  assert sources.data_dir_for(registry.task_spec("glue_mrpc")) == str(tmp_path / "gin")


def test_missing_local_folder_is_a_clear_error(tmp_path):
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  task = seqio.get_mixture_or_task("glue_qqp")
  with pytest.raises(sources.LocalDataError, match=r"glue/qqp holds none of train.jsonl"):
    task.get_dataset(sequence_length=None, split="train")


def test_local_splits_and_counts(tmp_path):
  spec = registry.task_spec("super_glue_cb")
  write_builder_layout(tmp_path, spec, {"validation": mock_rows(spec, 5)})
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  task = seqio.get_mixture_or_task("super_glue_cb")
  assert tuple(task.splits) == ("validation",)
  assert task.num_input_examples("validation") == 5
  assert task.source.describe() == f"local:{tmp_path / 'super_glue' / 'cb'}"
  with pytest.raises(sources.LocalDataError, match="no split 'train'.*available: validation"):
    task.get_dataset(sequence_length=None, split="train")
  gin.clear_config()
  assert task.num_input_examples("train") == 250  # TFDS metadata recorded in the spec
  assert task.source.describe() == "tfds:super_glue/cb:1.0.2"


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_files_with_label_names(tmp_path, fmt):
  spec = registry.task_spec("glue_sst2")
  folder = tmp_path / "glue" / "sst2"
  folder.mkdir(parents=True)
  sep = "," if fmt == "csv" else "\t"
  (folder / f"validation.{fmt}").write_text(
      f"sentence{sep}label{sep}idx\n\"a, fine film\"{sep}positive{sep}0\n"
      f"dull{sep}0{sep}1\n" if fmt == "csv" else
      f"sentence{sep}label{sep}idx\na fine film{sep}positive{sep}0\ndull{sep}0{sep}1\n")
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  examples = _examples(seqio.get_mixture_or_task(spec.name), "validation")
  assert [ex["targets_pretokenized"] for ex in examples] == [b"positive", b"negative"]
  if fmt == "csv":
    assert examples[0]["inputs_pretokenized"] == b"sst2 sentence: a, fine film"


@pytest.mark.parametrize("line, message", [
    ('{"sentence": "x", "label": 7, "idx": 2}', r"train.jsonl:3: column 'label' holds label 7"),
    ('{"sentence": "x", "label": "great", "idx": 2}', r":3: column 'label' holds 'great'"),
    ('{"text": "x", "label": 1, "idx": 2}', r":3: no column 'sentence'"),
    ('{"sentence": "x", "label": 1', r":3: not valid JSON"),
])
def test_bad_rows_name_file_line_and_column(tmp_path, line, message):
  spec = registry.task_spec("glue_sst2")
  path = tmp_path / "train.jsonl"
  path.write_text('{"sentence": "a", "label": 1, "idx": 0}\n'
                  '{"sentence": "b", "label": 0, "idx": 1}\n' + line + "\n")
  with pytest.raises(sources.LocalDataError, match=message):
    list(sources.read_rows(path, spec))
