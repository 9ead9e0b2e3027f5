"""T5's objectives: span statistics, the property that defines each objective, determinism."""

from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow as tf

from recast.tasks import objectives

TOY_SPM = (Path(seqio.__file__).parent / "test_data" / "sentencepiece" / "sentencepiece.model")
VOCAB = seqio.SentencePieceVocabulary(str(TOY_SPM), extra_ids=100)
V = VOCAB.vocab_size  # 126: 26 pieces + 100 sentinels
REGULAR = V - VOCAB.extra_ids
FEATURES = {"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)}


def _documents(num_docs: int, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.RandomState(seed)
  return [rng.randint(3, REGULAR, size=rng.randint(1, 900)).astype(np.int32)
          for _ in range(num_docs)]


def _run(objective, docs, *, inputs_length=512, seed=7, concat_batch_size=128):
  ds = tf.data.Dataset.from_generator(
      lambda: ({"targets": d} for d in docs),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  with seqio.utils.map_seed_manager(seed):
    ds = objectives.apply_objective(ds, {"inputs": inputs_length, "targets": inputs_length},
                                    FEATURES, objective=objective,
                                    concat_batch_size=concat_batch_size)
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def _sentinels(tokens):
  return [t for t in tokens if t >= REGULAR]


def _rebuild(inputs, targets):
  """The original chunk from span-corrupted inputs and targets."""
  spans, current = {}, None
  for t in targets:
    if t >= REGULAR:
      current = spans.setdefault(t, [])
    else:
      current.append(t)
  out = []
  for t in inputs:
    out.extend(spans[t] if t >= REGULAR else [t])
  return out


def _noise_spans(inputs, targets):
  """(noise tokens, number of noise spans) of one span-corrupted example."""
  sentinels = len(_sentinels(targets))
  return len(targets) - sentinels, sentinels


def test_random_spans_helper_matches_t5():
  assert objectives.random_spans_helper(inputs_length=512) == (568, 114)
  # 1137 tokens: 171 noise in 57 spans -> inputs 966 + 57 + EOS, targets 171 + 57 + EOS
  assert objectives.random_spans_helper(inputs_length=1024) == (1137, 229)


@pytest.mark.parametrize("inputs_length", [64, 128, 512])
def test_span_corruption_chunks_fill_inputs_and_targets_exactly(inputs_length):
  tokens_length, targets_length = objectives.random_spans_helper(inputs_length=inputs_length)
  docs = [np.arange(3, 3 + 3 * tokens_length, dtype=np.int32) % (REGULAR - 3) + 3]
  examples = _run(objectives.get_objective("span_corruption"), docs,
                  inputs_length=inputs_length)
  assert len(examples) == 3
  for ex in examples:  # + EOS, which append_eos_after_trim adds in the task
    assert len(ex["inputs"]) + 1 == inputs_length
    assert len(ex["targets"]) + 1 == targets_length


@pytest.mark.parametrize("density,mean_length", [(0.15, 3.0), (0.25, 2.0), (0.5, 10.0)])
def test_span_corruption_statistics_and_exact_rebuild(density, mean_length):
  name = ("span_corruption" if (density, mean_length) == (0.15, 3.0) else
          objectives.random_spans_name(noise_density=density,
                                       mean_noise_span_length=mean_length))
  objective = objectives.get_objective(name)
  assert (objective.noise_density, objective.mean_noise_span_length) == (density, mean_length)
  docs = _documents(400)
  examples = _run(objective, docs)
  assert len(examples) > 150  # 180k tokens in chunks of 568 to 930
  rebuilt, noise, spans, total = [], 0, 0, 0
  for ex in examples:
    # Sentinels count down from vocab_size - 1, in the same order on both sides.
    expected = list(range(V - 1, V - 1 - len(_sentinels(ex["targets"])), -1))
    assert _sentinels(ex["inputs"]) == expected
    assert _sentinels(ex["targets"]) == expected
    assert ex["targets"][0] == V - 1  # targets open with the first sentinel
    chunk = _rebuild(ex["inputs"], ex["targets"])
    n, s = _noise_spans(ex["inputs"], ex["targets"])
    noise, spans, total = noise + n, spans + s, total + len(chunk)
    rebuilt.extend(chunk)
  assert rebuilt == np.concatenate(docs).tolist()  # every token, once, in order
  assert abs(noise / total - density) < 0.01
  assert abs(noise / spans - mean_length) < 0.2


def test_span_corruption_mask_spans_alternate_and_start_with_kept_tokens():
  mask = objectives.random_spans_noise_mask(
      tf.constant(568), noise_density=0.15, mean_noise_span_length=3.0,
      seeds=[tf.constant([1, 2]), tf.constant([3, 4])]).numpy()
  assert mask.shape == (568,) and not mask[0] and mask[-1]
  assert mask.sum() == 85  # round(568 * 0.15)
  starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
  assert len(starts) == 28  # round(85 / 3)
  for length in (1, 2, 5):  # short chunks still get one noise and one kept token
    m = objectives.random_spans_noise_mask(
        tf.constant(length), noise_density=0.15, mean_noise_span_length=3.0,
        seeds=[tf.constant([1, 2]), tf.constant([3, 4])]).numpy()
    assert len(m) == length and m.sum() == (1 if length > 1 else 0)


def test_same_seed_same_examples_other_seed_other_examples():
  docs = _documents(40)
  for name in objectives.OBJECTIVES:
    objective = objectives.get_objective(name)
    first = _run(objective, docs, seed=3)
    assert first == _run(objective, docs, seed=3), name
    assert first != _run(objective, docs, seed=4), name


def test_bert_mlm_80_10_10_and_targets_are_the_original():
  tokens = tf.constant(np.random.RandomState(1).randint(3, REGULAR, 40000), tf.int32)
  seeds = [tf.constant([5, 6]), tf.constant([7, 8])]
  out = objectives.bert_style_corruption(tokens, tf.ones([40000], tf.bool), vocabulary=VOCAB,
                                         seeds=seeds).numpy()
  original = tokens.numpy()
  masked = out == V - 1
  random = (out != original) & ~masked
  assert abs(masked.mean() - 0.8) < 0.01
  # a random regular token equals the original 1 time in 23 (toy vocabulary)
  assert abs(random.mean() - 0.1 * (1 - 1 / (REGULAR - 3))) < 0.01
  assert out[random].min() >= 3 and out[random].max() < REGULAR

  examples = _run(objectives.get_objective("bert_mlm"), _documents(200))
  inputs = np.concatenate([ex["inputs"] for ex in examples])
  targets = np.concatenate([ex["targets"] for ex in examples])
  assert targets.tolist() == np.concatenate(_documents(200)).tolist()
  changed = inputs != targets
  assert abs((inputs == V - 1).mean() - 0.15 * 0.8) < 0.01
  assert abs(changed.mean() - 0.15 * (0.8 + 0.1 * (1 - 1 / (REGULAR - 3)))) < 0.01


def test_deshuffling_inputs_are_a_permutation_of_the_original():
  docs = _documents(60)
  examples = _run(objectives.get_objective("deshuffling"), docs)
  assert sum((ex["targets"] for ex in examples), []) == np.concatenate(docs).tolist()
  for ex in examples:
    assert sorted(ex["inputs"]) == sorted(ex["targets"])
  assert np.mean([ex["inputs"] != ex["targets"] for ex in examples]) > 0.9


def test_prefix_lm_inputs_then_targets_is_the_original():
  docs = _documents(200)
  examples = _run(objectives.get_objective("prefix_lm"), docs, inputs_length=128)
  assert sum((ex["inputs"] + ex["targets"] for ex in examples), []) == \
      np.concatenate(docs).tolist()
  full = [ex for ex in examples if len(ex["inputs"]) + len(ex["targets"]) == 127]
  assert all(ex["inputs"] and ex["targets"] for ex in full)
  # the split point is uniform over the chunk
  assert abs(np.mean([len(ex["inputs"]) / 127 for ex in full]) - 0.5) < 0.05


def test_iid_mask_tokens_masks_15_percent_and_targets_are_the_original():
  docs = _documents(200)
  examples = _run(objectives.get_objective("iid_mask_tokens"), docs)
  inputs = np.concatenate([ex["inputs"] for ex in examples])
  targets = np.concatenate([ex["targets"] for ex in examples])
  assert targets.tolist() == np.concatenate(docs).tolist()
  changed = inputs != targets
  assert (inputs[changed] == V - 1).all()
  assert abs(changed.mean() - 0.15) < 0.01


def test_iid_drop_tokens_inputs_and_targets_split_the_original():
  docs = _documents(200)
  examples = _run(objectives.get_objective("iid_drop_tokens"), docs)
  original = np.concatenate(docs)
  inputs = sum((ex["inputs"] for ex in examples), [])
  targets = sum((ex["targets"] for ex in examples), [])
  assert sorted(inputs + targets) == sorted(original.tolist())
  assert abs(len(targets) / len(original) - 0.15) < 0.01
  assert not _sentinels(inputs + targets)


def test_iid_replace_spans_rebuilds_and_sentinels_are_in_order():
  docs = _documents(200)
  examples = _run(objectives.get_objective("iid_replace_spans"), docs)
  rebuilt, noise = [], 0
  for ex in examples:
    expected = list(range(V - 1, V - 1 - len(_sentinels(ex["targets"])), -1))
    assert _sentinels(ex["inputs"]) == _sentinels(ex["targets"]) == expected
    rebuilt.extend(_rebuild(ex["inputs"], ex["targets"]))
    noise += _noise_spans(ex["inputs"], ex["targets"])[0]
  assert rebuilt == np.concatenate(docs).tolist()
  assert abs(noise / len(rebuilt) - 0.15) < 0.01


def test_concat_and_split_tokens_worked_example():
  ds = tf.data.Dataset.from_generator(
      lambda: ({"targets": np.array(t, np.int32)} for t in ([3, 4], [5], [6, 7, 8, 9, 10])),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  concat = objectives.reduce_concat_tokens(ds, batch_size=2)
  assert [ex["targets"].tolist() for ex in concat.as_numpy_iterator()] == \
      [[3, 4, 5], [6, 7, 8, 9, 10]]
  split = objectives.split_tokens(concat, max_tokens_per_segment=2)
  assert [ex["targets"].tolist() for ex in split.as_numpy_iterator()] == \
      [[3, 4], [5], [6, 7], [8, 9], [10]]


def test_objective_names_and_errors():
  assert objectives.random_spans_name(noise_density=0.25, mean_noise_span_length=10) == \
      "random_spans_d25_l10"
  objective = objectives.get_objective("random_spans_d25_l10")
  assert (objective.noise_density, objective.mean_noise_span_length) == (0.25, 10.0)
  with pytest.raises(objectives.ObjectiveError, match="available: span_corruption"):
    objectives.get_objective("span_corupted")
  with pytest.raises(objectives.ObjectiveError, match="noise_density"):
    objectives.get_objective("random_spans_d150_l3")
  with pytest.raises(objectives.ObjectiveError, match="needs up to 170 sentinels"):
    _run(objectives.get_objective("random_spans_d50_l2"), _documents(2))
  with pytest.raises(objectives.ObjectiveError, match="'inputs': 512, 'targets': 114"):
    objectives.apply_objective(tf.data.Dataset.range(1), {"inputs": 512, "targets": 100},
                               FEATURES, objective=objectives.get_objective("span_corruption"))
  with pytest.raises(objectives.ObjectiveError, match="targets of up to 64 tokens"):
    objectives.apply_objective(tf.data.Dataset.range(1), {"inputs": 64, "targets": 16},
                               FEATURES, objective=objectives.get_objective("bert_mlm"))
  with pytest.raises(objectives.ObjectiveError, match="TASK_FEATURE_LENGTHS"):
    objectives.apply_objective(tf.data.Dataset.range(1), None, FEATURES,
                               objective=objectives.get_objective("prefix_lm"))
