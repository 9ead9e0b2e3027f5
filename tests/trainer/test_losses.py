"""T5X's cross entropy, z-loss, label smoothing and loss normalisation against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from recast.trainer import losses

Special = losses.SpecialLossNormalizingFactor


def _log_softmax(logits):
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True))
  log_z = log_z + logits.max(-1, keepdims=True)
  return logits - log_z, log_z[..., 0]


@pytest.fixture
def example():
  rs = np.random.RandomState(0)
  logits = rs.randn(2, 5, 7).astype(np.float32) * 3
  targets = rs.randint(1, 7, (2, 5)).astype(np.int32)
  weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  targets[weights == 0] = 0
  return logits, targets, weights


def test_cross_entropy_and_z_loss_match_numpy(example):
  logits, targets, weights = example
  log_probs, log_z = _log_softmax(logits)
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  loss, z, weight_sum = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-2)
  expected_z = 1e-2 * np.sum(log_z ** 2 * weights)
  np.testing.assert_allclose(z, expected_z, rtol=1e-5)
  np.testing.assert_allclose(loss, np.sum(nll * weights) + expected_z, rtol=1e-5)
  assert float(weight_sum) == 8.0
  # z-loss adds exactly z * sum(log Z^2) over weighted tokens.
  loss0, z0, _ = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=0.0)
  assert float(z0) == 0.0
  np.testing.assert_allclose(loss - loss0, expected_z, rtol=1e-4)


def test_label_smoothing_matches_numpy_and_is_zero_at_the_smoothed_target(example):
  logits, targets, weights = example
  smoothing, vocab = 0.1, logits.shape[-1]
  confidence, low = 1 - smoothing, smoothing / (vocab - 1)
  soft = np.full(logits.shape, low, np.float32)
  np.put_along_axis(soft, targets[..., None], confidence, -1)
  log_probs, _ = _log_softmax(logits)
  constant = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low))
  expected = np.sum((-np.sum(soft * log_probs, -1) - constant) * weights)
  loss, _, _ = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), label_smoothing=smoothing)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # The change from smoothing: sum over tokens of (smoothed CE - CE - constant).
  plain, _, _ = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss - plain, expected - np.sum(nll * weights), rtol=1e-4)
  # A model predicting exactly the smoothed distribution has loss 0 (the constant's job).
  perfect, _, _ = losses.compute_weighted_cross_entropy(
      jnp.log(jnp.asarray(soft)), jnp.asarray(targets), jnp.asarray(weights),
      label_smoothing=smoothing)
  assert abs(float(perfect)) < 1e-5


def _batch(targets, weights, **extra):
  return dict(decoder_target_tokens=jnp.asarray(targets),
              decoder_loss_weights=jnp.asarray(weights), **extra)


@pytest.mark.parametrize("factor,divisor", [
    (Special.NUM_REAL_TARGET_TOKENS, 8.0),
    ("num_total_target_tokens", 10.0),
    (4.0, 4.0),
    (None, 1.0),
])
def test_normalizing_factors(example, factor, divisor):
  logits, targets, weights = example
  log_probs, _ = _log_softmax(logits)
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  loss, metrics = losses.compute_loss(jnp.asarray(logits), _batch(targets, weights), z_loss=0.0,
                                      loss_normalizing_factor=factor)
  np.testing.assert_allclose(loss, np.sum(nll * weights) / divisor, rtol=1e-5)
  assert float(metrics["num_tokens"]) == 8.0
  assert float(metrics["cross_ent_loss"]) == pytest.approx(float(loss))


def test_average_per_sequence_averages_each_packed_segment():
  rs = np.random.RandomState(1)
  logits = rs.randn(2, 6, 5).astype(np.float32)
  targets = rs.randint(1, 5, (2, 6)).astype(np.int32)
  # Row 0 packs segments of 2 and 3 tokens (then padding); row 1 is one 6-token segment.
  segments = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]], np.int32)
  weights = (segments > 0).astype(np.float32)
  targets[segments == 0] = 0
  log_probs, _ = _log_softmax(logits)
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  expected = np.mean([nll[0, :2].mean(), nll[0, 2:5].mean(), nll[1].mean()])
  loss, metrics = losses.compute_loss(
      jnp.asarray(logits), _batch(targets, weights, decoder_segment_ids=jnp.asarray(segments)),
      z_loss=0.0, loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics["num_tokens"]) == 11.0
  # Unpacked, row 0 is one 5-token sequence.
  unpacked, _ = losses.compute_loss(jnp.asarray(logits), _batch(targets, weights), z_loss=0.0,
                                    loss_normalizing_factor=Special.AVERAGE_PER_SEQUENCE)
  np.testing.assert_allclose(unpacked, np.mean([nll[0, :5].mean(), nll[1].mean()]), rtol=1e-5)


def test_accuracy_counts_only_weighted_tokens():
  logits = np.zeros((1, 4, 3), np.float32)
  logits[0, :, 2] = 5.0  # predicts id 2 everywhere
  targets = np.array([[2, 1, 2, 2]], np.int32)
  weights = np.array([[1, 1, 1, 0]], np.float32)
  _, metrics = losses.compute_loss(jnp.asarray(logits), _batch(targets, weights))
  assert float(metrics["correct_tokens"]) == 2.0
  assert float(metrics["num_tokens"]) == 3.0


def test_missing_loss_weights_default_to_nonpadding_targets(example):
  logits, targets, weights = example
  with_w, _ = losses.compute_loss(jnp.asarray(logits), _batch(targets, weights))
  without, _ = losses.compute_loss(jnp.asarray(logits),
                                   dict(decoder_target_tokens=jnp.asarray(targets)))
  np.testing.assert_allclose(with_w, without, rtol=1e-6)


@pytest.mark.parametrize("bad", ["per_token", 0.0, -1, True])
def test_bad_normalizing_factor_is_named(bad):
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    losses.parse_loss_normalizing_factor(bad)
