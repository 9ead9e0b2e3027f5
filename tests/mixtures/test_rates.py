"""Mixing rates: T5's K and T against hand-computed values, and sampled frequencies."""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from recast.mixtures import rates

VOCAB = seqio.PassThroughVocabulary(size=100)
COUNTS = {"rates_test_big": 1_000_000, "rates_test_mid": 40_000, "rates_test_small": 2_000}


def _task(name: str, count: int) -> seqio.Task:
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensors({"inputs": [count % 97 + 1], "targets": [1]}).repeat(10)

  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=["train"],
                                      num_input_examples={"train": count}),
      output_features={"inputs": seqio.Feature(VOCAB, add_eos=False),
                       "targets": seqio.Feature(VOCAB, add_eos=False)})


@pytest.fixture(scope="module")
def tasks():
  yield {name: _task(name, count) for name, count in COUNTS.items()}
  for name in [*COUNTS, "rates_test_uncounted"]:  # Leave the registry as recast made it.
    seqio.TaskRegistry.remove(name)
  for name in list(seqio.MixtureRegistry.names()):
    if name.startswith("rates_test_"):
      seqio.MixtureRegistry.remove(name)


def _mixture(name, rate):
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(COUNTS), default_rate=rate)


def test_examples_proportional_with_cap_k(tasks):
  mix = _mixture("rates_test_k", rates.examples_proportional(maximum=2**16))
  # min(e, K): 65536, 40000, 2000.
  total = 65536 + 40000 + 2000
  expected = {"rates_test_big": 65536 / total, "rates_test_mid": 40000 / total,
              "rates_test_small": 2000 / total}
  got = rates.normalized_rates(mix)
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, rel=1e-12)


def test_temperature_scaled(tasks):
  mix = _mixture("rates_test_t", rates.temperature_scaled(2.0, maximum=2**19))
  raw = {"rates_test_big": 524288 ** 0.5, "rates_test_mid": 200.0,
         "rates_test_small": 2000 ** 0.5}
  total = sum(raw.values())
  got = rates.normalized_rates(mix)
  for name, value in raw.items():
    assert got[name] == pytest.approx(value / total, rel=1e-12)
  # Higher temperature moves towards equal mixing.
  hot = rates.normalized_rates(_mixture("rates_test_hot", rates.temperature_scaled(1000.0)))
  assert max(hot.values()) - min(hot.values()) < 0.01


def test_equal_and_explicit(tasks):
  assert list(rates.normalized_rates(_mixture("rates_test_eq", rates.equal)).values()) == \
      pytest.approx([1 / 3] * 3)
  weights = {"rates_test_big": 1, "rates_test_mid": 3, "rates_test_small": 0}
  got = rates.normalized_rates(_mixture("rates_test_ex", rates.explicit(weights)))
  assert got == {"rates_test_big": 0.25, "rates_test_mid": 0.75, "rates_test_small": 0.0}


def test_missing_count_is_an_error_not_a_fallback(tasks):
  def dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensors({"inputs": [1], "targets": [1]})

  seqio.TaskRegistry.remove("rates_test_uncounted")
  task = seqio.TaskRegistry.add(
      "rates_test_uncounted", source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
      output_features={"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)})
  with pytest.raises(rates.MixingRateError, match="no example count"):
    rates.examples_proportional()(task)
  with pytest.raises(rates.MixingRateError, match="no split 'validation'"):
    rates.examples_proportional(split="validation")(task)
  with pytest.raises(rates.MixingRateError, match="no explicit mixing weight"):
    rates.explicit({"other": 1.0})(task)


def test_sampled_frequencies_match_rates(tasks):
  mix = _mixture("rates_test_sample", rates.temperature_scaled(2.0, maximum=2**19))
  expected = rates.normalized_rates(mix)
  ds = mix.get_dataset({"inputs": 4, "targets": 4}, split="train", shuffle=False, seed=7,
                       num_epochs=None, use_cached=False)
  ids = {COUNTS[name] % 97 + 1: name for name in COUNTS}
  counts = collections.Counter(
      ids[int(ex["inputs"][0])] for ex in ds.take(20_000).as_numpy_iterator())
  for name, rate in expected.items():
    assert abs(counts[name] / 20_000 - rate) < 0.02, (name, counts[name], rate)
  assert np.isclose(sum(expected.values()), 1.0)
