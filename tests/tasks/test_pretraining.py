"""Self-pretraining tasks: input text only (never labels), train split only, lazy names,
plain-text corpora, and span-corruption batches that are almost all tokens."""

import json

import pytest
import seqio

from recast.tasks import objectives, pretraining, registry, specs, task_files, vocabularies

# Bytes decode losslessly, so the text a task was built from can be compared exactly.
BYTES = seqio.ByteVocabulary(extra_ids=100)
V = BYTES.vocab_size
FIRST_SENTINEL_ID = V - BYTES.extra_ids
EOS = BYTES.eos_id


@pytest.fixture(autouse=True)
def byte_vocabulary():
  with vocabularies.use_vocabulary(BYTES):
    yield


@pytest.fixture
def data_dir(shared_data, monkeypatch):
  monkeypatch.setenv("RECAST_DATA_DIR", str(shared_data))
  return shared_data


def _examples(task, *, inputs_length=512, targets_length=114, take=None, shuffle=False,
              seed=0):
  ds = task.get_dataset({"inputs": inputs_length, "targets": targets_length}, split="train",
                        shuffle=shuffle, seed=seed)
  if take:
    ds = ds.take(take)
  return list(ds.as_numpy_iterator())


def _rebuild(inputs, targets):
  """The chunk a span-corrupted example was made from (EOS removed)."""
  assert inputs[-1] == EOS and targets[-1] == EOS
  spans, current = {}, None
  for t in targets[:-1]:
    if t >= FIRST_SENTINEL_ID:
      current = spans.setdefault(t, [])
    else:
      current.append(t)
  out = []
  for t in inputs[:-1]:
    out.extend(spans[t] if t >= FIRST_SENTINEL_ID else [t])
  return out


def _text_of(examples) -> str:
  """The text behind a stream of span-corrupted examples, in order."""
  ids = [t for ex in examples for t in _rebuild(ex["inputs"].tolist(), ex["targets"].tolist())]
  return BYTES.decode(ids)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture
def words_task(tmp_path):
  """A task registered after import, from local files, with labels never seen in its text."""
  rows = [{"question": f"question {i} about cats", "context": f"context {i} of dogs",
           "label": "zebra" if i % 2 else "yak"} for i in range(300)]
  for split, part in (("train", rows[:200]), ("validation", rows[200:])):
    with open(tmp_path / f"{split}.jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in part)
  task_files.register_task(
      name="tmp_words", files={"train": tmp_path / "train.jsonl",
                               "validation": tmp_path / "validation.jsonl"},
      inputs="words question: {question} context: {context}", targets="{label}",
      labels=["yak", "zebra"])
  yield rows
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith("tmp_words"):
      seqio.TaskRegistry.remove(name)
  registry.unregister_text_task("tmp_words")


def test_derived_names_parse_and_register_on_first_lookup(words_task):
  assert pretraining.parse_derived_task_name("glue_rte_span_corruption") == \
      ("glue_rte", "span_corruption")
  assert pretraining.parse_derived_task_name("glue_rte_random_spans_d25_l10") == \
      ("glue_rte", "random_spans_d25_l10")
  assert pretraining.parse_derived_task_name("glue_rte_iid_drop_tokens") == \
      ("glue_rte", "iid_drop_tokens")
  assert pretraining.parse_derived_task_name("glue_rte") is None
  assert pretraining.ensure_pretraining_task("glue_rte") is None
  assert pretraining.ensure_pretraining_task("no_such_task_span_corruption") is None

  assert "tmp_words_prefix_lm" not in seqio.TaskRegistry.names()
  task = pretraining.ensure_pretraining_task("tmp_words_prefix_lm")
  assert task.name == "tmp_words_prefix_lm"
  assert seqio.get_mixture_or_task("tmp_words_prefix_lm") is task
  assert pretraining.pretraining_task("tmp_words", "prefix_lm") is task
  assert list(task.splits) == ["train"]


def test_derived_task_is_the_input_text_of_the_train_split_only(words_task):
  task = pretraining.pretraining_task("tmp_words")
  examples = _examples(task, inputs_length=64, targets_length=16)
  assert all(set(ex) == {"inputs", "targets"} for ex in examples)
  expected = "".join(f"{r['question']} {r['context']}" for r in words_task[:200])
  assert _text_of(examples) == expected
  for ex in examples:
    assert len(ex["inputs"]) <= 64 and len(ex["targets"]) <= 16
  with pytest.raises(pretraining.PretrainingTaskError, match="only the 'train' split"):
    task.source.get_dataset(split="validation")


def test_every_objective_derives_and_the_seed_fixes_the_examples(words_task):
  for objective in objectives.OBJECTIVES:
    task = pretraining.pretraining_task("tmp_words", objective)
    assert task.name == f"tmp_words_{objective}" and list(task.splits) == ["train"]
  # (each objective's own determinism is in test_objectives.py; this is the task's seed)
  task = pretraining.pretraining_task("tmp_words", "bert_mlm")
  runs = [_examples(task, inputs_length=64, targets_length=64, take=5, shuffle=True, seed=s)
          for s in (5, 5, 6)]
  as_lists = [[(e["inputs"].tolist(), e["targets"].tolist()) for e in exs] for exs in runs]
  assert as_lists[0] == as_lists[1]
  assert as_lists[0] != as_lists[2]
  assert all(e["inputs"][-1] == EOS and e["targets"][-1] == EOS for e in runs[0])


def test_derivation_errors_name_the_problem():
  with pytest.raises(pretraining.PretrainingTaskError, match="no 'train' split"):
    pretraining.pretraining_task("glue_ax")
  with pytest.raises(pretraining.PretrainingTaskError, match="derive from text tasks"):
    pretraining.pretraining_task("glue_rtee")
  with pytest.raises(objectives.ObjectiveError, match="unknown pretraining objective"):
    pretraining.pretraining_task("glue_rte", "masked_lm")


@pytest.mark.parametrize("task_name,fields,max_chunks", [
    ("glue_rte", ("sentence1", "sentence2"), None),
    ("glue_sst2", ("sentence",), 300),
])
def test_real_tasks_self_pretrain_on_input_fields_never_labels(data_dir, task_name, fields,
                                                                max_chunks):
  task = pretraining.ensure_pretraining_task(f"{task_name}_span_corruption")
  examples = _examples(task, take=max_chunks)
  assert all(set(ex) == {"inputs", "targets"} for ex in examples)
  builder = registry.task_spec(task_name).builder_name
  rows = _jsonl(data_dir / builder / "train.jsonl")
  expected = "".join(" ".join(row[f] for f in fields) for row in rows)
  text = _text_of(examples)
  if max_chunks is None:
    assert text == expected  # all of the train text, in order, and nothing else
  else:
    assert len(text) > 100_000 and expected.startswith(text)


def test_wikipedia_span_corruption_batches_are_under_1_percent_padding(data_dir):
  task = seqio.get_mixture_or_task("wikipedia_en_span_corruption")
  lengths = {"inputs": 512, "targets": 114}
  ds = task.get_dataset(lengths, split="train", shuffle=False, seed=0)
  packed = seqio.EncDecFeatureConverter(pack=True)(ds, lengths).batch(16).take(8)
  pad_inputs = pad_targets = total_inputs = total_targets = 0
  for batch in packed.as_numpy_iterator():
    pad_inputs += (batch["encoder_input_tokens"] == 0).sum()
    pad_targets += (batch["decoder_target_tokens"] == 0).sum()
    total_inputs += batch["encoder_input_tokens"].size
    total_targets += batch["decoder_target_tokens"].size
  assert total_inputs == 8 * 16 * 512 and total_targets == 8 * 16 * 114
  assert pad_inputs / total_inputs < 0.01
  assert pad_targets / total_targets < 0.01
  examples = _examples(task, take=20)
  assert all(len(e["inputs"]) == 512 and len(e["targets"]) == 114 for e in examples)
  text = _text_of(examples)
  with open(data_dir / "text" / "wikipedia_en" / "part-00.txt", encoding="utf-8") as f:
    lines = [line.rstrip("\n") for _, line in zip(range(200), f)]
  assert len(text) > 10_000 and "".join(l for l in lines if l.strip()).startswith(text)


def test_user_corpus_and_data_dir_errors(tmp_path, monkeypatch):
  (tmp_path / "a.txt").write_text("first document\n\nsecond document\n")
  (tmp_path / "b.txt").write_text("third document\n")
  task = pretraining.register_text_corpus("tmp_corpus", files=str(tmp_path / "*.txt"))
  try:
    assert task.name == "tmp_corpus_span_corruption"
    assert _text_of(_examples(task)) == "first documentsecond documentthird document"
    drop = pretraining.ensure_pretraining_task("tmp_corpus_iid_drop_tokens")
    ex = _examples(drop)
    assert sorted(t for e in ex for t in list(e["inputs"][:-1]) + list(e["targets"][:-1])) \
        == sorted(BYTES.encode("first documentsecond documentthird document"))
  finally:
    for name in ("tmp_corpus_span_corruption", "tmp_corpus_iid_drop_tokens"):
      seqio.TaskRegistry.remove(name)
  monkeypatch.delenv("RECAST_DATA_DIR", raising=False)
  with pytest.raises(pretraining.PretrainingTaskError, match="--gin.DATA_DIR"):
    _examples(seqio.get_mixture_or_task("wikipedia_en_span_corruption"))


def _resolved(name: str):
  """A gin parameter's value, following macros and evaluating `@fn()` references."""
  import gin
  value = gin.query_parameter(name)
  while isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
  return value


@pytest.mark.parametrize("stage,bindings,expected", [
    ("pretrain_self", ["TASK='glue_rte'"],
     {"mixture_or_task_name": "glue_rte_span_corruption", "train_steps": 20000,
      "task_feature_lengths": {"inputs": 512, "targets": 114}}),
    ("pretrain_self", ["TASK='glue_rte'", "OBJECTIVE='prefix_lm'", "PRETRAIN_STEPS=7"],
     {"mixture_or_task_name": "glue_rte_prefix_lm", "train_steps": 7}),
    ("pretrain_general", [],
     {"mixture_or_task_name": "wikipedia_en_span_corruption", "train_steps": 20000}),
    ("finetune", ["TASK='glue_rte'", "INITIAL_CHECKPOINT_PATH='/runs/sp/pretrain_general'"],
     {"mixture_or_task_name": "glue_rte", "train_steps": 3000,
      "initial_checkpoint_path": "/runs/sp/pretrain_general",
      "task_feature_lengths": {"inputs": 256, "targets": 16}}),
])
def test_self_pretraining_stage_files_bind_one_run_each(stage, bindings, expected):
  import gin
  from recast import gin_config
  try:
    gin_config.parse_gin(["models/t5_1_1/tiny.gin", f"experiments/self_pretraining/{stage}.gin"],
                         ["MODEL_DIR='/tmp/run'", *bindings])
    gin_config.require_macros(("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS",
                               "TRAIN_STEPS"))
    for parameter, value in expected.items():
      assert _resolved(f"train.{parameter}") == value, parameter
    assert expected["mixture_or_task_name"] in seqio.TaskRegistry.names()
  finally:
    gin.clear_config()


def test_documents_use_raw_fields_and_run_prepare_only_for_missing_ones():
  import tensorflow as tf

  def mark(ds):  # like WSC's span marks / CoNLL's sentences: makes or rewrites fields
    return ds.map(lambda ex: {**ex, "text": "*" + ex["text"],
                              "sentence": tf.strings.reduce_join(ex["tokens"], separator=" ")})

  spec = specs.TextTaskSpec(name="tmp_prepared", source="x", splits=("train",),
                            inputs_template="t: {sentence}", label_names=("no", "yes"),
                            prepare=(mark,))
  raw = tf.data.Dataset.from_tensor_slices(
      {"text": ["a b", "c"], "tokens": [["x", "y"], ["z", "w"]], "label": [1, 0]})
  as_text = lambda ds: [ex["targets"].decode() for ex in ds.as_numpy_iterator()]
  assert as_text(pretraining.documents_preprocessor(["text"], spec=spec)(raw)) == ["a b", "c"]
  assert as_text(pretraining.documents_preprocessor(["sentence"], spec=spec)(raw)) == \
      ["x y", "z w"]
  assert as_text(pretraining.documents_preprocessor(["text", "text"])(raw)) == ["a b a b", "c c"]
  with pytest.raises(pretraining.PretrainingTaskError, match="no text field 'title'"):
    pretraining.documents_preprocessor(["title"], spec=spec)(raw)
