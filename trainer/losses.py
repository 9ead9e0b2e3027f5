"""T5X's training loss: cross entropy with z-loss and label smoothing, and its normalisation.

The train and eval steps (`trainer.train_state`) compute their loss here, so every run
normalises the same way T5X does (`SpecialLossNormalizingFactor`).
"""

from __future__ import annotations

import enum
from typing import Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class SpecialLossNormalizingFactor(enum.Enum):
  """Loss normalisations computed from the batch (T5X's names).

  NUM_REAL_TARGET_TOKENS: divide by the number of target tokens with nonzero loss weight.
  NUM_TOTAL_TARGET_TOKENS: divide by batch * target length (padding included).
  AVERAGE_PER_SEQUENCE: every sequence (every packed segment) gets the mean loss of its
    tokens; the batch loss is the mean over sequences.
  """

  NUM_REAL_TARGET_TOKENS = 1
  NUM_TOTAL_TARGET_TOKENS = 2
  AVERAGE_PER_SEQUENCE = 3


# None: the summed loss (T5X's default); a number: a fixed divisor; or a special factor
# (an enum member or its name, as gin writes it: "NUM_REAL_TARGET_TOKENS").
LossNormalizingFactor = Union[None, float, int, str, SpecialLossNormalizingFactor]


def parse_loss_normalizing_factor(
    factor: LossNormalizingFactor) -> Union[None, float, SpecialLossNormalizingFactor]:
  """Accepts an enum member, its name, a positive number or None."""
  if factor is None or isinstance(factor, SpecialLossNormalizingFactor):
    return factor
  if isinstance(factor, str):
    try:
      return SpecialLossNormalizingFactor[factor.upper()]
    except KeyError:
      names = ", ".join(m.name for m in SpecialLossNormalizingFactor)
      raise ValueError(f"loss_normalizing_factor={factor!r} is unknown; use a positive "
                       f"number, None or one of {names}") from None
  if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0:
    return float(factor)
  raise ValueError(f"loss_normalizing_factor={factor!r} must be a positive number, None or "
                   "a SpecialLossNormalizingFactor")


def cross_entropy_with_logits(logits: Array, targets: Array, *,
                              z_loss: float) -> tuple[Array, Array]:
  """Cross entropy against soft targets plus z-loss, in float32.

  Args:
    logits: [batch, length, vocab].
    targets: [batch, length, vocab] target distribution (one-hot or smoothed).
    z_loss: coefficient of log(Z)**2, which keeps the softmax normaliser near 1.

  Returns:
    (loss, z_loss) both [batch, length]; loss already includes z_loss.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  log_softmax = logits - log_z
  loss = -jnp.sum(targets * log_softmax, axis=-1)
  total_z_loss = z_loss * jnp.square(log_z[..., 0])
  return loss + total_z_loss, total_z_loss


def compute_weighted_cross_entropy(
    logits: Array, targets: Array, weights: Optional[Array] = None, *,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: Optional[Union[float, Array]] = None,
) -> tuple[Array, Array, Array]:
  """T5X's weighted cross entropy with label smoothing.

  Smoothed targets put `confidence = 1 - label_smoothing` on the target id and
  `label_smoothing / (vocab - 1)` on every other id; the entropy of that distribution
  (the normalising constant) is subtracted so a perfect model scores 0.

  Args:
    logits: float [batch, length, vocab].
    targets: int [batch, length].
    weights: float [batch, length] or None (all ones).
    label_smoothing: in [0, 1).
    z_loss: z-loss coefficient.
    loss_normalizing_factor: divisor of the summed loss, or None.

  Returns:
    (summed loss, summed z-loss, weight sum), float32 scalars.
  """
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(confidence * np.log(confidence) +
                           (vocab_size - 1) * low_confidence * np.log(low_confidence + 1e-20))
  soft_targets = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
  soft_targets = soft_targets * (confidence - low_confidence) + low_confidence
  loss, total_z_loss = cross_entropy_with_logits(logits, soft_targets, z_loss=z_loss)
  loss = loss - normalizing_constant
  if weights is None:
    weight_sum = jnp.asarray(np.prod(targets.shape), jnp.float32)
  else:
    weights = weights.astype(jnp.float32)
    loss, total_z_loss = loss * weights, total_z_loss * weights
    weight_sum = jnp.sum(weights)
  if loss_normalizing_factor is not None:
    loss = loss / loss_normalizing_factor
    total_z_loss = total_z_loss / loss_normalizing_factor
  return jnp.sum(loss), jnp.sum(total_z_loss), weight_sum


def _sum_weights_per_segment(segment_ids: Array, weights: Array) -> Array:
  """For every position, the weight sum of its packed segment. All [batch, length]."""
  same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [b, l, l]
  return jnp.einsum("bij,bj->bi", same.astype(weights.dtype), weights)


def get_loss_normalizing_factor_and_weights(
    loss_normalizing_factor: LossNormalizingFactor,
    batch: Mapping[str, Array]) -> tuple[Optional[Union[float, Array]], Array]:
  """Turns a normalisation choice into (divisor, per-token loss weights) for one batch.

  Compute it on the whole global batch: with gradient accumulation every microbatch is
  divided by the same factor, so the summed microbatch losses equal the big batch's loss.

  Args:
    loss_normalizing_factor: see `LossNormalizingFactor`.
    batch: seqio EncDecFeatureConverter features; uses decoder_target_tokens,
      decoder_loss_weights (default: target != 0) and, when packed, decoder_segment_ids.

  Returns:
    (factor or None, float32 weights [batch, length]). For AVERAGE_PER_SEQUENCE the weights
    are 1/num_tokens of their segment and the factor is the number of segments.
  """
  factor = parse_loss_normalizing_factor(loss_normalizing_factor)
  targets = batch["decoder_target_tokens"]
  weights = batch.get("decoder_loss_weights")
  weights = (targets > 0) if weights is None else weights
  weights = weights.astype(jnp.float32)
  if factor is SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
    return jnp.sum(weights), weights
  if factor is SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS:
    return float(np.prod(targets.shape)), weights
  if factor is SpecialLossNormalizingFactor.AVERAGE_PER_SEQUENCE:
    segment_ids = batch.get("decoder_segment_ids")
    if segment_ids is None:
      per_sequence = jnp.sum(weights, axis=-1, keepdims=True)
    else:
      per_sequence = _sum_weights_per_segment(segment_ids, weights)
    weights = jnp.where(per_sequence > 0, weights / jnp.maximum(per_sequence, 1e-30), 0.0)
    return jnp.sum(weights), weights
  return factor, weights


def compute_loss(logits: Array, batch: Mapping[str, Array], *, z_loss: float = 1e-4,
                 label_smoothing: float = 0.0,
                 loss_normalizing_factor: LossNormalizingFactor = (
                     SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS),
                 ) -> tuple[Array, dict[str, Array]]:
  """The training loss of one batch and its summable metrics.

  If `batch` holds `loss_normalizing_factor` (a scalar precomputed on a larger batch, as
  the microbatched train step does), its `decoder_loss_weights` are used as they are and
  that factor replaces `loss_normalizing_factor`.

  Args:
    logits: float [batch, length, vocab].
    batch: decoder_target_tokens [batch, length] and optionally decoder_loss_weights,
      decoder_segment_ids.

  Returns:
    (loss, metrics): loss is a float32 scalar; metrics (float32 scalars, all sums so that
    microbatches add up): loss, z_loss, cross_ent_loss (= loss - z_loss), correct_tokens and
    num_tokens (accuracy numerator and denominator over tokens with nonzero weight),
    weight_sum (sum of the loss weights used).
  """
  if "loss_normalizing_factor" in batch:
    factor, weights = batch["loss_normalizing_factor"], batch["decoder_loss_weights"]
    weights = weights.astype(jnp.float32)
  else:
    factor, weights = get_loss_normalizing_factor_and_weights(loss_normalizing_factor, batch)
  targets = batch["decoder_target_tokens"]
  loss, total_z_loss, weight_sum = compute_weighted_cross_entropy(
      logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss,
      loss_normalizing_factor=factor)
  real = (weights > 0).astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * real
  metrics = {
      "loss": loss,
      "z_loss": total_z_loss,
      "cross_ent_loss": loss - total_z_loss,
      "correct_tokens": jnp.sum(correct),
      "num_tokens": jnp.sum(real),
      "weight_sum": weight_sum,
  }
  return loss, metrics
