"""Declarative task files: checking (file, line, column in every error; nothing half-registered)
and registration end to end on small JSONL/CSV/TSV fixtures."""

import json
import textwrap

import pytest
import seqio

from recast.tasks import task_files
from recast.tasks.task_files import TaskFileError

TREC_LABELS = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]


def _write_trec(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  rows = [{"text": "What is the capital of France ?", "coarse": "LOC"},
          {"text": "Who wrote Hamlet ?", "coarse": 3},          # an index into labels
          {"text": "What does NASA stand for ?", "coarse": "ABBR"}]
  (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (data / "test.tsv").write_text("text\tcoarse\nHow many legs has a spider ?\tNUM\n"
                                 "Why is the sky blue ?\tDESC\n")
  (data / "extra.csv").write_text('text,coarse\n"Where is Rome, exactly ?",LOC\n')
  return data


def _task_file(tmp_path, body, name="recast.tasks.yaml"):
  path = tmp_path / name
  path.write_text(textwrap.dedent(body))
  return path


TREC_ENTRY = """\
  - name: {name}
    files: {{train: data/train.jsonl, validation: data/test.tsv, test: data/extra.csv}}
    inputs: "trec question: {{text}}"
    targets: "{{{column}}}"
    labels: [ABBR, ENTY, DESC, HUM, LOC, NUM]
    metrics: [accuracy, macro_f1]
"""


def _trec_file(tmp_path, *entries):
  return _task_file(tmp_path, "tasks:\n" + "".join(
      TREC_ENTRY.format(name=n, column=c) for n, c in entries))


def test_reads_jsonl_csv_tsv_into_a_spec(tmp_path):
  _write_trec(tmp_path)
  (spec,) = task_files.read_task_file(_trec_file(tmp_path, ("trec_read_check", "coarse")))
  assert spec.splits == ("train", "validation", "test")
  assert spec.num_examples == {"train": 3, "validation": 2, "test": 1}
  assert spec.label_field == "coarse" and spec.label_names == tuple(TREC_LABELS)
  assert spec.metric_names == ("accuracy", "macro_f1")
  assert spec.files["validation"] == str(tmp_path / "data" / "test.tsv")
  assert "trec_read_check" not in seqio.TaskRegistry.names()  # reading registers nothing


def test_misspelt_column_names_file_line_and_columns(tmp_path):
  _write_trec(tmp_path)
  path = _trec_file(tmp_path, ("trec_typo", "corase"))
  with pytest.raises(TaskFileError) as e:
    task_files.read_task_file(path)
  message = str(e.value)
  assert "train.jsonl, line 1, column 'corase'" in message
  assert "coarse, text" in message


def test_label_outside_the_list(tmp_path):
  data = _write_trec(tmp_path)
  (data / "test.tsv").write_text("text\tcoarse\nA ?\tNUM\nB ?\tDESCRIPTION\n")
  with pytest.raises(TaskFileError, match=r"test.tsv, line 3, column 'coarse': label "
                     r"'DESCRIPTION' is not in the labels"):
    task_files.read_task_file(_trec_file(tmp_path, ("trec_bad_label", "coarse")))
  (data / "test.tsv").write_text("text\tcoarse\nA ?\t6\n")  # index out of range
  with pytest.raises(TaskFileError, match=r"line 2, column 'coarse': label '6'"):
    task_files.read_task_file(_trec_file(tmp_path, ("trec_bad_index", "coarse")))


def test_empty_split(tmp_path):
  data = _write_trec(tmp_path)
  (data / "extra.csv").write_text("text,coarse\n")
  with pytest.raises(TaskFileError, match=r"extra.csv: split 'test' of task 'trec_empty' has "
                     "no examples"):
    task_files.read_task_file(_trec_file(tmp_path, ("trec_empty", "coarse")))


def test_unreadable_rows(tmp_path):
  data = _write_trec(tmp_path)
  good = (data / "train.jsonl").read_text()
  (data / "train.jsonl").write_text(good + '{"text": "oops", "coarse": LOC}\n')
  with pytest.raises(TaskFileError, match=r"train.jsonl, line 4, column 28: not valid JSON"):
    task_files.read_task_file(_trec_file(tmp_path, ("trec_bad_json", "coarse")))
  (data / "train.jsonl").write_text(good)
  (data / "test.tsv").write_text("text\tcoarse\nA ?\tNUM\nB ?\tDESC\textra\n")
  with pytest.raises(TaskFileError, match=r"test.tsv, line 3: 3 fields but the header has 2"):
    task_files.read_task_file(_trec_file(tmp_path, ("trec_bad_tsv", "coarse")))


def test_bad_settings(tmp_path):
  _write_trec(tmp_path)
  with pytest.raises(TaskFileError, match="unknown metric"):
    task_files.register_task(name="x_task", files={"train": "data/train.jsonl"},
                             inputs="{text}", targets="{coarse}", labels=TREC_LABELS,
                             metrics=["acuracy"], base_dir=tmp_path)
  with pytest.raises(TaskFileError, match="no such file"):
    task_files.register_task(name="x_task", files={"train": "data/nope.jsonl"},
                             inputs="{text}", targets="{coarse}", labels=TREC_LABELS,
                             base_dir=tmp_path)
  with pytest.raises(TaskFileError, match="unknown key"):
    task_files.read_task_file(_task_file(tmp_path, """\
        tasks:
          - name: x_task
            files: {train: data/train.jsonl}
            inputs: "{text}"
            targets: "{coarse}"
            label: [LOC]
        """, name="typo.yaml"))
  with pytest.raises(TaskFileError, match=r"bad.yaml, line \d+, column \d+: not valid YAML"):
    task_files.read_task_file(_task_file(tmp_path, "tasks:\n  - name: [x\n", name="bad.yaml"))


@pytest.fixture
def byte_vocab():
  from recast.tasks import vocabularies
  with vocabularies.use_vocabulary(vocabularies.byte_vocabulary()):
    yield


def _cleanup(*names):
  from recast.tasks import registry
  for name in names:
    if name in seqio.TaskRegistry.names():
      registry.unregister_text_task(name)


def test_task_file_end_to_end(tmp_path, byte_vocab):
  data = _write_trec(tmp_path)
  (data / "sts.csv").write_text("s1,s2,score\nA man sings.,A man is singing.,4.63\n"
                                "A cat.,A dog runs.,0.5\n")
  path = _task_file(tmp_path, "tasks:\n" + TREC_ENTRY.format(name="trec_e2e", column="coarse")
                    + """\
  - name: sts_e2e
    files: {train: data/sts.csv}
    inputs: "sts s1: {s1} s2: {s2}"
    targets: "{score}"
    regression: 0.2
""")
  try:
    assert task_files.register_task_file(path) == ["trec_e2e", "sts_e2e"]
    assert task_files.register_task_file(path) == ["trec_e2e", "sts_e2e"]  # again: no-op
    task = seqio.get_mixture_or_task("trec_e2e")
    length = {"inputs": 128, "targets": 16}
    train = list(task.get_dataset(length, split="train", shuffle=False).as_numpy_iterator())
    assert [e["targets_pretokenized"].decode() for e in train] == ["LOC", "HUM", "ABBR"]
    assert train[1]["inputs_pretokenized"].decode() == "trec question: Who wrote Hamlet ?"
    targets = [task.postprocess_fn(e["targets_pretokenized"].decode(), is_target=True)
               for e in train]
    assert targets == [4, 3, 0]
    scores = {}
    for fn in task.metric_fns:
      scores.update(fn(targets, targets))
    assert scores == {"accuracy": 100.0, "macro_f1": 100.0}
    test = list(task.get_dataset(length, split="test", shuffle=False).as_numpy_iterator())
    assert test[0]["inputs_pretokenized"].decode() == "trec question: Where is Rome, exactly ?"
    sts = seqio.get_mixture_or_task("sts_e2e")
    rows = list(sts.get_dataset(length, split="train", shuffle=False).as_numpy_iterator())
    assert [e["targets_pretokenized"].decode() for e in rows] == ["4.6", "0.4"]
    assert [m.__name__ for m in sts.metric_fns] == ["pearson_spearman"]
  finally:
    _cleanup("trec_e2e", "sts_e2e")


def test_a_bad_task_registers_none_of_its_file(tmp_path):
  data = _write_trec(tmp_path)
  (data / "bad.jsonl").write_text('{"text": "x", "coarse": "LOC"}\n{"text": "y"}\n')
  path = _task_file(tmp_path, "tasks:\n" + TREC_ENTRY.format(name="trec_ok1", column="coarse")
                    + TREC_ENTRY.format(name="trec_ok2", column="coarse") + """\
  - name: trec_bad3
    files: {train: data/bad.jsonl}
    inputs: "{text}"
    targets: "{coarse}"
    labels: [LOC]
""")
  try:
    with pytest.raises(TaskFileError, match=r"bad.jsonl, line 2, column 'coarse'"):
      task_files.register_task_file(path)
    assert not {"trec_ok1", "trec_ok2", "trec_bad3"} & set(seqio.TaskRegistry.names())
  finally:
    _cleanup("trec_ok1", "trec_ok2", "trec_bad3")


def test_register_task_in_python_and_name_clashes(tmp_path, byte_vocab):
  _write_trec(tmp_path)
  try:
    task = task_files.register_task(
        name="trec_python", files={"train": "data/train.jsonl"}, inputs="q: {text}",
        targets="{coarse}", labels=TREC_LABELS, base_dir=tmp_path)
    assert task.name == "trec_python" and [m.__name__ for m in task.metric_fns] == ["accuracy"]
    with pytest.raises(TaskFileError, match="already registered"):
      task_files.register_task(name="trec_python", files={"train": "data/train.jsonl"},
                               inputs="other: {text}", targets="{coarse}",
                               labels=TREC_LABELS, base_dir=tmp_path)
    with pytest.raises(TaskFileError, match="'glue_rte' is already registered"):
      import recast.tasks  # noqa: F401
      task_files.register_task(name="glue_rte", files={"train": "data/train.jsonl"},
                               inputs="{text}", targets="{coarse}", labels=TREC_LABELS,
                               base_dir=tmp_path)
  finally:
    _cleanup("trec_python")


def test_one_file_under_two_spellings_of_its_path_is_one_file(tmp_path, monkeypatch):
  _write_trec(tmp_path)
  path = _trec_file(tmp_path, ("trec_two_paths", "coarse"))
  (tmp_path / "sub").mkdir()
  monkeypatch.chdir(tmp_path / "sub")
  try:
    assert task_files.register_task_file(path) == ["trec_two_paths"]
    assert task_files.register_task_file("../recast.tasks.yaml") == ["trec_two_paths"]
    assert task_files.register_task_file(f"{tmp_path}/sub/.././recast.tasks.yaml") == \
        ["trec_two_paths"]
    from recast.tasks import registry
    assert registry.task_spec("trec_two_paths").description == f"from task file {path}"
  finally:
    _cleanup("trec_two_paths")


def test_unknown_keys_and_yaml_booleans_name_what_is_allowed(tmp_path):
  _write_trec(tmp_path)
  with pytest.raises(TaskFileError, match=r"the file has unknown key\(s\) task; allowed: "
                     r"mixtures, tasks"):
    task_files.read_task_file(_task_file(tmp_path, "task:\n  - name: x\n", name="top.yaml"))
  with pytest.raises(TaskFileError, match=r"task 'x_task' has unknown key\(s\) label; "
                     "allowed: files, inputs, labels, metrics, name, regression, targets"):
    task_files.read_task_file(_task_file(tmp_path, """\
        tasks:
          - name: x_task
            files: {train: data/train.jsonl}
            inputs: "{text}"
            targets: "{coarse}"
            label: [LOC]
        """, name="typo.yaml"))
  with pytest.raises(TaskFileError, match=r"YAML reads labels such as yes, no.* as \[True, "
                     r"False\]; quote them"):
    task_files.read_task_file(_task_file(tmp_path, """\
        tasks:
          - name: x_task
            files: {train: data/train.jsonl}
            inputs: "{text}"
            targets: "{coarse}"
            labels: [yes, no]
        """, name="bools.yaml"))
