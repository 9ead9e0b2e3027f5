"""The self-pretraining (dspt14) and model-recycling (recycling36) tasks: each renders mock
rows in its builder's local layout to token ids, its postprocessor inverts every label,
and the two mixtures hold exactly their datasets."""

import json

import gin
import pytest
import seqio
import tensorflow as tf

import recast.mixtures  # noqa: F401  (registers every built-in task and mixture)
import recast.tasks  # noqa: F401  (registers every built-in task)
from recast.mixtures import rates
from recast.tasks import dspt, metrics, recycling, sources, vocabularies

N = 6
CONLL_WORDS = ["Mr.", "John", "Smith", "visited", "New", "York", "on", "Monday", "."]
# O B-PERSON I-PERSON O B-GPE I-GPE O B-DATE O
CONLL_TAGS = [0, 1, 2, 0, 9, 10, 0, 15, 0]


@pytest.fixture(autouse=True)
def _clean_config(monkeypatch):
  monkeypatch.delenv(sources.ENV_VAR, raising=False)
  gin.clear_config()
  with vocabularies.use_vocabulary(vocabularies.byte_vocabulary()):
    yield
  gin.clear_config()


def raw_row(spec, i):
  """Row i of a local file in the builder's layout: the spec's example rows (tasks whose
  `prepare` reads raw fields), else template fields with labels cycling through every class."""
  if spec.example_rows:
    return spec.example_rows[i % len(spec.example_rows)]
  row = {f: f"{f} text {i} é" for f in spec.input_fields}
  row[spec.label_field] = i % len(spec.label_names)
  return row


OWN_SPECS = {s.name: s for s in dspt.DSPT_SPECS + recycling.RECYCLING_SPECS}


def _render(spec, tmp_path, n):
  folder = tmp_path / spec.builder_name
  folder.mkdir(parents=True)
  split = spec.splits[0]
  (folder / f"{split}.jsonl").write_text(
      "".join(json.dumps(raw_row(spec, i)) + "\n" for i in range(n)))
  gin.parse_config(f"DATA_DIR = '{tmp_path}'")
  task = seqio.get_mixture_or_task(spec.name)
  ds = task.get_dataset(sequence_length={"inputs": 256, "targets": 64}, split=split,
                        shuffle=False)
  return task, list(ds.as_numpy_iterator())


@pytest.mark.parametrize("name", sorted(OWN_SPECS))
def test_task_renders_local_rows_and_inverts_labels(name, tmp_path):
  spec = OWN_SPECS[name]
  n = len(spec.example_rows) or max(N, len(spec.label_names or ()))
  task, examples = _render(spec, tmp_path, n)
  assert len(examples) == n
  vocab = vocabularies.get_vocabulary()
  for ex in examples:
    inputs = ex["inputs_pretokenized"].decode()
    assert inputs.startswith(spec.inputs_template.split("{")[0])
    assert ex["targets"][-1] == vocab.eos_id
    assert vocab.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode()
    target = ex["targets_pretokenized"].decode()
    if spec.is_classification:
      assert task.postprocess_fn(target, example=ex, is_target=True) == ex[spec.label_field]
  if spec.is_classification and spec.label_field in examples[0]:
    assert {int(ex[spec.label_field]) for ex in examples} == set(range(len(spec.label_names)))


def _texts(examples, key):
  return [e[f"{key}_pretokenized"].decode() for e in examples]


def test_prepared_tasks_cast_their_raw_fields(tmp_path):
  _, conll = _render(OWN_SPECS["conll2012_ner"], tmp_path / "c", 2)
  assert _texts(conll, "inputs") == ["ner: Mr. John Smith visited New York .",
                                     "ner: It rained on Monday ."]
  assert _texts(conll, "targets") == ["PERSON: John Smith; GPE: New York", "DATE: Monday"]
  _, s140 = _render(OWN_SPECS["sentiment140"], tmp_path / "s", 3)
  assert _texts(s140, "targets") == ["negative", "neutral", "positive"]
  _, toxic = _render(OWN_SPECS["jigsaw_toxicity"], tmp_path / "j", 2)
  assert _texts(toxic, "targets") == ["non-toxic", "toxic"]
  _, stars = _render(OWN_SPECS["amazon_reviews_multi_en"], tmp_path / "a", 5)
  assert _texts(stars, "targets") == ["1", "2", "3", "4", "5"]
  _, swag = _render(OWN_SPECS["hellaswag"], tmp_path / "h", 4)
  assert _texts(swag, "inputs")[0] == ("hellaswag context: A man opens a jar. ending0: eats. "
                                       "ending1: sings. ending2: runs. ending3: sits.")
  assert _texts(swag, "targets") == ["ending0", "ending1", "ending2", "ending3"]


def test_squad_targets_carry_every_gold_answer(tmp_path):
  task, examples = _render(OWN_SPECS["squad_v1"], tmp_path, 2)
  assert _texts(examples, "inputs")[1] == (
      "question: Who lost? context: The Denver Broncos defeated the Carolina Panthers.")
  assert _texts(examples, "targets") == ["Denver Broncos", "Carolina Panthers"]
  targets = [task.postprocess_fn(e["targets_pretokenized"].decode(), example=e,
                                 is_target=True) for e in examples]
  assert targets == [["Denver Broncos", "The Denver Broncos"], ["Carolina Panthers"]]
  predictions = [task.postprocess_fn(p) for p in ["the broncos", "Panthers"]]
  got = metrics.squad_em_f1(targets, predictions)
  # "broncos" vs "denver broncos": F1 2/3; "panthers" vs "carolina panthers": F1 2/3.
  assert got["em"] == 0.0
  assert got["f1"] == pytest.approx(100 * 2 / 3)
  assert metrics.squad_em_f1(targets, ["The Denver Broncos", "carolina panthers."]) == {
      "em": 100.0, "f1": 100.0}


def test_conll_documents_flatten_to_sentences():
  doc = {"sentences": {"words": tf.ragged.constant([CONLL_WORDS, ["Hi", "Ann"]]),
                       "named_entities": tf.ragged.constant([CONLL_TAGS, [0, 2]],
                                                            dtype=tf.int64)}}
  out = list(dspt.conll_sentences(tf.data.Dataset.from_tensors(doc)).as_numpy_iterator())
  assert [o["sentence"].decode() for o in out] == [" ".join(CONLL_WORDS), "Hi Ann"]
  assert out[0]["entities"].decode() == "PERSON: John Smith; GPE: New York; DATE: Monday"
  assert out[1]["entities"].decode() == "PERSON: Ann"  # a stray I- starts an entity
  assert metrics.parse_entity_spans(out[0]["entities"].decode()) == [
      ("PERSON", "John Smith"), ("GPE", "New York"), ("DATE", "Monday")]


def test_mixtures_hold_exactly_their_datasets():
  dspt14 = seqio.get_mixture_or_task("dspt14")
  recycling36 = seqio.get_mixture_or_task("recycling36")
  assert sorted(t.name for t in dspt14.tasks) == sorted(dspt.DSPT14)
  assert len(set(dspt.DSPT14)) == 14 and len(dspt14.tasks) == 14
  assert sorted(t.name for t in recycling36.tasks) == sorted(recycling.RECYCLING36)
  assert len(set(recycling.RECYCLING36)) == 36 and len(recycling36.tasks) == 36
  # Shared datasets are one task: QQP and MNLI are GLUE's in both mixtures.
  shared = set(dspt.DSPT14) & set(recycling.RECYCLING36)
  assert shared == {"ag_news", "glue_qqp", "glue_mnli", "dbpedia_14", "yahoo_answers_topics"}
  assert not any(n.startswith(("qqp", "mnli")) for n in seqio.TaskRegistry.names())
  assert dspt14.rate_per_task_name["glue_mnli"] == rates.examples_proportional(2**16)


def test_every_spec_has_sources_and_known_metrics():
  for spec in OWN_SPECS.values():
    assert spec.source, spec.name
    assert all(m in metrics.METRICS_BY_NAME for m in spec.metric_names)
    if spec.num_examples:
      assert set(spec.num_examples) == set(spec.splits), spec.name
  assert len(dspt.DISCOVERY_MARKERS) == 174
  assert len(recycling.TREC_FINE) == 47 and len(recycling.TWEET_EMOJI) == 20
