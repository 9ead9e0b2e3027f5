"""Matmul FLOPs of a T5 encoder-decoder per example: the numerator of model FLOPs utilisation.

Counting (T5X / PaLM-appendix style): a matmul [m, k] x [k, n] costs 2*m*n*k; only matmuls
count (no softmax, norms, activations, embedding lookups). With Li input and Lt target
tokens, d = d_model, a = num_heads * d_kv, f = d_ff (two input matrices when gated):

    encoder, per layer:  Li * (2*d*a*4 [q,k,v,o] + 2*Li*a*2 [scores, weighted sum]
                               + 2*d*f*(3 gated | 2 relu) [feed-forward])
    decoder, per layer:  Lt * (2*d*a*4 [self q,k,v,o] + 2*Lt*a*2 [self scores, sum]
                               + 2*d*a*2 [cross q,o] + 2*Li*a*2 [cross scores, sum]
                               + 2*d*f*(3|2) [feed-forward])
                         + Li * 2*d*a*2 [cross k,v: projections of the encoder outputs]
    decoder, once:       Lt * 2*d*V [logits]

Causal self-attention is counted in full (as the matmuls run), padding as real tokens.
Training = 3 x forward (backward costs twice the forward). T5.1.1-base at 512/114:
encoder 96.6 + decoder 45.4 = 142 GFLOP forward, 426 GFLOP training per example.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from recast.trainer import network


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """FLOPs per example. `tokens` = inputs + targets length (for tokens/s alongside)."""

  encoder_flops: int
  decoder_flops: int
  forward: int
  train: int
  tokens: int


def count_flops(config: network.T5Config, *, feature_lengths: Mapping[str, int]) -> FlopCount:
  """Matmul FLOPs per example of `config` at `feature_lengths` {"inputs": Li, "targets": Lt}.

  `config.vocab_size` must be set (use `config.with_vocab_size`).
  """
  if config.vocab_size is None:
    raise ValueError("T5Config.vocab_size is unset: call config.with_vocab_size(vocab size)")
  inputs, targets = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
  d, a, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
  ff_matrices = 3 if config.feed_forward == "gated-gelu" else 2
  feed_forward = 2 * d * f * ff_matrices
  projections = 2 * d * a  # one of q, k, v or o, per token
  encoder_layer = inputs * (4 * projections + 2 * 2 * inputs * a + feed_forward)
  decoder_layer = (targets * (4 * projections + 2 * 2 * targets * a + 2 * projections
                              + 2 * 2 * inputs * a + feed_forward)
                   + inputs * 2 * projections)
  encoder = config.num_encoder_layers * encoder_layer
  decoder = config.num_decoder_layers * decoder_layer + targets * 2 * d * config.vocab_size
  forward = encoder + decoder
  return FlopCount(encoder_flops=encoder, decoder_flops=decoder, forward=forward,
                   train=3 * forward, tokens=inputs + targets)
