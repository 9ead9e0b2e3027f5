"""FLOPs counter: the published T5.1.1-base figure, and agreement with the network's matmuls."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recast.trainer import flops, network

BASE = network.T5Config(d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_encoder_layers=12,
                        num_decoder_layers=12).with_vocab_size(32100)
LENGTHS = {"inputs": 512, "targets": 114}


def test_t5_1_1_base_matches_published_figure():
  count = flops.count_flops(BASE, feature_lengths=LENGTHS)
  # RESULTS.md: about 426 GFLOP per example for training at 512/114.
  assert count.train == pytest.approx(426e9, rel=0.01)
  assert count.train == 3 * count.forward == 3 * (count.encoder_flops + count.decoder_flops)
  assert count.encoder_flops == pytest.approx(96.6e9, rel=1e-3)
  assert count.decoder_flops == pytest.approx(45.3e9, rel=1e-3)
  assert count.tokens == 626


def test_scaling_with_layers_and_lengths():
  count = flops.count_flops(BASE, feature_lengths=LENGTHS)
  logits = 2 * 114 * 768 * 32128
  deeper = flops.count_flops(BASE.replace(num_encoder_layers=24, num_decoder_layers=24),
                             feature_lengths=LENGTHS)
  assert deeper.encoder_flops == 2 * count.encoder_flops
  assert deeper.decoder_flops - logits == 2 * (count.decoder_flops - logits)
  # Longer targets leave the encoder alone and less than double the decoder (the cross-
  # attention keys and values are projections of the inputs); longer inputs cost more than
  # linearly (attention is quadratic) and touch the decoder only via cross-attention.
  longer_targets = flops.count_flops(BASE, feature_lengths={"inputs": 512, "targets": 228})
  assert longer_targets.encoder_flops == count.encoder_flops
  assert 1.5 * count.decoder_flops < longer_targets.decoder_flops < 2 * count.decoder_flops
  longer_inputs = flops.count_flops(BASE, feature_lengths={"inputs": 1024, "targets": 114})
  assert 2 * count.encoder_flops < longer_inputs.encoder_flops < 2.5 * count.encoder_flops
  assert count.decoder_flops < longer_inputs.decoder_flops < 1.5 * count.decoder_flops


def _dot_general_flops(jaxpr) -> int:
  """2*m*n*k summed over every dot_general in a jaxpr, sub-jaxprs included; a dot with a
  vector (the CPU attention's position-bias gradient, a batch sum written as a dot with
  ones) is a reduction, not a matmul of the model, and is left out."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general" and min(v.aval.ndim for v in eqn.invars) > 1:
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(
          np.prod([lhs[i] for i in contracting]))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += _dot_general_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += _dot_general_flops(sub)
  return total


@pytest.mark.parametrize("variant", ["t5_1_1", "t5_1_0"])
def test_counts_every_matmul_of_the_network(variant):
  cfg = network.T5Config(vocab_size=64, d_model=32, num_heads=4, d_kv=8, d_ff=48,
                         num_encoder_layers=2, num_decoder_layers=3, dropout_rate=0.0)
  if variant == "t5_1_0":
    cfg = cfg.replace(feed_forward="relu", tie_word_embeddings=True)
  params = nn.unbox(network.init_params(cfg, jax.random.PRNGKey(0)))
  enc, dec = jnp.ones((1, 7), jnp.int32), jnp.ones((1, 5), jnp.int32)
  forward = lambda p: network.Transformer(cfg).apply({"params": p}, enc, dec, dec)
  loss = lambda p: jnp.sum(forward(p) ** 2)
  count = flops.count_flops(cfg, feature_lengths={"inputs": 7, "targets": 5})
  assert _dot_general_flops(jax.make_jaxpr(forward)(params).jaxpr) == count.forward
  assert _dot_general_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr) == count.train


def test_needs_vocab_size():
  with pytest.raises(ValueError, match="with_vocab_size"):
    flops.count_flops(network.T5Config(), feature_lengths=LENGTHS)
