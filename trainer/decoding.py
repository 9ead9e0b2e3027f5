"""Decoding and scoring with the T5 network: greedy, beam search, sampling, log-likelihoods.

Every search runs inside one `lax.while_loop` over the network's cached one-step decoder
(`Transformer.decode(..., decode=True)`), so a whole batch decodes in one jitted call with a
static `max_decode_length`, on one device or a mesh. Token id 0 is padding (and the
decoder's BOS) and is never generated; id 1 is EOS; outputs hold 0 after a sequence's EOS.

Example (a batch of 2, max_decode_length 4):

  >>> tokens, scores = predict_batch(model, params, batch, options=DecodingOptions())
  >>> tokens   # [2, 4]
  [[37, 5, 1, 0],
   [12, 1, 0, 0]]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
from jax import lax

from recast.trainer import network

Array = jax.Array
EOS_ID = 1
# Log-probability of impossible hypotheses; finite so that sums never produce NaN.
NEG_INF = -1.0e7
METHODS = ("greedy", "beam_search", "sample")

# (tokens [batch, 1] int32, cache) -> (logits [batch, vocab] float32, updated cache)
TokensToLogits = Callable[[Array, Any], tuple[Array, Any]]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodingOptions:
  """How `predict_batch` decodes.

  method: "greedy", "beam_search" (T5X's length penalty ((5 + length) / 6) ** alpha) or
    "sample" (temperature, then top-k and top-p filtering; temperature 0 is greedy).
  max_decode_length: None decodes as many tokens as the targets feature length.
  seed: the sampling seed (sampling only).
  """

  method: str = "greedy"
  num_beams: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  topk: int = 0
  topp: float = 1.0
  max_decode_length: Optional[int] = None
  seed: int = 0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"DecodingOptions.method={self.method!r} is not known; use one of "
                       f"{', '.join(METHODS)}")
    if self.num_beams < 1 or self.topk < 0 or not 0.0 < self.topp <= 1.0:
      raise ValueError("DecodingOptions needs num_beams >= 1, topk >= 0 (0: off) and "
                       f"0 < topp <= 1 (1: off); got {self}")
    if self.temperature < 0:
      raise ValueError(f"DecodingOptions.temperature must be >= 0, got {self.temperature}")


def brevity_penalty(alpha: float, length: Array | int) -> Array:
  """T5X's (GNMT's) length normalisation ((5 + length) / 6) ** alpha."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def _filter_logits(logits: Array, *, topk: int, topp: float) -> Array:
  """Sets logits [b, vocab] outside the top-k tokens / the top-p mass to NEG_INF."""
  if topk > 0:
    kth = lax.top_k(logits, topk)[0][:, -1:]
    logits = jnp.where(logits >= kth, logits, NEG_INF)
  if topp < 1.0:
    sorted_logits = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # the most likely token always stays
    kept = jnp.where(mass_before < topp, sorted_logits, jnp.inf)
    logits = jnp.where(logits >= jnp.min(kept, axis=-1, keepdims=True), logits, NEG_INF)
  return logits


def temperature_sample(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int,
                       max_decode_length: int, rng: Optional[Array] = None,
                       temperature: float = 1.0, topk: int = 0, topp: float = 1.0,
                       eos_id: int = EOS_ID) -> tuple[Array, Array]:
  """Samples one sequence per row; temperature 0 takes the argmax (greedy search).

  Args:
    tokens_to_logits: one decoder step on the cache.
    cache: the decoder cache for `batch_size` rows, at position 0.
    rng: PRNG key (unused when temperature is 0).
  Returns:
    sequences: int32 [batch, max_decode_length], 0 after EOS.
    log_probs: float32 [batch], the model's (untempered) log-probability of each sequence.
  """
  if temperature > 0 and rng is None:
    raise ValueError("temperature_sample needs an rng when temperature > 0")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  b, length = batch_size, max_decode_length

  def cond(state):
    i, _, _, ended, _, _, _ = state
    return (i < length) & ~jnp.all(ended)

  def body(state):
    i, seqs, last, ended, log_prob, cache, rng = state
    logits, cache = tokens_to_logits(last[:, None], cache)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if temperature == 0:
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      rng, step_rng = jax.random.split(rng)
      filtered = _filter_logits(logits / temperature, topk=topk, topp=topp)
      token = jax.random.categorical(step_rng, filtered, axis=-1).astype(jnp.int32)
    token = jnp.where(ended, 0, token)
    token_lp = jnp.take_along_axis(log_p, token[:, None], axis=-1)[:, 0]
    log_prob = log_prob + jnp.where(ended, 0.0, token_lp)
    seqs = lax.dynamic_update_slice(seqs, token[:, None], (0, i))
    return i + 1, seqs, token, ended | (token == eos_id), log_prob, cache, rng

  state = (jnp.zeros((), jnp.int32), jnp.zeros((b, length), jnp.int32),
           jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), jnp.zeros((b,), jnp.float32),
           cache, rng)
  _, seqs, _, _, log_prob, _, _ = lax.while_loop(cond, body, state)
  return seqs, log_prob


def greedy_search(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int,
                  max_decode_length: int, eos_id: int = EOS_ID) -> tuple[Array, Array]:
  """The most likely next token at every step. Returns sequences [b, L] and log_probs [b]."""
  return temperature_sample(tokens_to_logits, cache, batch_size=batch_size,
                            max_decode_length=max_decode_length, temperature=0.0,
                            eos_id=eos_id)


def _gather_beams(x: Array, indices: Array) -> Array:
  """x: [batch, n, ...]; indices: int32 [batch, m] -> x's beams `indices`: [batch, m, ...]."""
  idx = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _gather_cache(cache: Any, indices: Array, batch_size: int, num_beams: int) -> Any:
  """Reorders the cache's rows (leading axis batch * num_beams) to the beams `indices`
  [batch, num_beams]; scalars (cache positions) pass through."""
  def gather(x):
    if x.ndim == 0:
      return x
    beams = _gather_beams(x.reshape((batch_size, num_beams) + x.shape[1:]), indices)
    return beams.reshape(x.shape)
  return jax.tree_util.tree_map(gather, cache)


def beam_search(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int,
                max_decode_length: int, num_beams: int, alpha: float = 0.6,
                eos_id: int = EOS_ID) -> tuple[Array, Array]:
  """Beam search; a hypothesis ends at EOS or at max_decode_length.

  Its score is log p(sequence) / ((5 + length) / 6) ** alpha, length counting the EOS.
  Search stops early once no live beam can beat the worst of the `num_beams` finished ones.

  Args:
    cache: the decoder cache for batch_size * num_beams rows (each example repeated
      num_beams times, consecutive), at position 0.
  Returns:
    sequences: int32 [batch, num_beams, max_decode_length], best first, 0 after EOS.
    scores: float32 [batch, num_beams], length-normalised log-probabilities, descending.
  """
  b, k, length = batch_size, num_beams, max_decode_length

  def cond(state):
    i, _, live_lp, _, fin_scores, _ = state
    best_possible = live_lp[:, 0] / jnp.maximum(brevity_penalty(alpha, length),
                                                brevity_penalty(alpha, i + 1))
    done = fin_scores[:, -1] >= best_possible
    return (i < length) & ~jnp.all(done)

  def body(state):
    i, live_seqs, live_lp, fin_seqs, fin_scores, cache = state
    last = jnp.where(i > 0, lax.dynamic_index_in_dim(live_seqs, i - 1, 2, keepdims=False), 0)
    logits, cache = tokens_to_logits(last.reshape(b * k, 1), cache)
    vocab = logits.shape[-1]
    cand = live_lp[:, :, None] + jax.nn.log_softmax(logits, axis=-1).reshape(b, k, vocab)
    top_lp, top_idx = lax.top_k(cand.reshape(b, k * vocab), 2 * k)  # [b, 2k]
    origin, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = _gather_beams(live_seqs, origin)
    seqs = lax.dynamic_update_slice(seqs, token[:, :, None], (0, 0, i))
    finishing = ((token == eos_id) | (i == length - 1)) & (top_lp > NEG_INF / 2)
    new_scores = jnp.where(finishing, top_lp / brevity_penalty(alpha, i + 1), NEG_INF)
    all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
    fin_scores, keep = lax.top_k(all_scores, k)
    fin_seqs = _gather_beams(jnp.concatenate([fin_seqs, seqs], axis=1), keep)
    live_lp, keep = lax.top_k(jnp.where(token == eos_id, NEG_INF, top_lp), k)
    live_seqs = _gather_beams(seqs, keep)
    cache = _gather_cache(cache, jnp.take_along_axis(origin, keep, axis=1), b, k)
    return i + 1, live_seqs, live_lp, fin_seqs, fin_scores, cache

  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  state = (jnp.zeros((), jnp.int32), jnp.zeros((b, k, length), jnp.int32), live_lp,
           jnp.zeros((b, k, length), jnp.int32), jnp.full((b, k), NEG_INF, jnp.float32),
           cache)
  _, _, _, fin_seqs, fin_scores, _ = lax.while_loop(cond, body, state)
  return fin_seqs, fin_scores


def _decoder_step_fn(model: network.Transformer, params: Any, encoded: Array,
                     encoder_input_tokens: Array) -> TokensToLogits:
  def tokens_to_logits(tokens, cache):
    logits, mutated = model.apply(
        {"params": params, "cache": cache}, encoded, encoder_input_tokens, tokens,
        method=model.decode, decode=True, mutable=["cache"])
    logits = logits[:, 0].at[:, 0].set(NEG_INF)  # id 0 is padding: never generated
    return logits, mutated["cache"]
  return tokens_to_logits


def _initial_cache(model: network.Transformer, encoded: Array, encoder_input_tokens: Array,
                   max_decode_length: int) -> Any:
  """The decoder cache at position 0: every entry of the network's cache starts at zero."""
  def init(encoded, tokens):
    decoder_tokens = jnp.zeros((tokens.shape[0], max_decode_length), jnp.int32)
    return model.init(jax.random.PRNGKey(0), encoded, tokens, decoder_tokens,
                      method=model.decode, decode=True)["cache"]
  shapes = jax.eval_shape(init, encoded, encoder_input_tokens)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def predict_batch(model: network.Transformer, params: Any, batch: Mapping[str, Array], *,
                  options: DecodingOptions = DecodingOptions(),
                  rng: Optional[Array] = None) -> tuple[Array, Array]:
  """Decodes a batch of seqio's EncDecFeatureConverter features (unpacked).

  Args:
    batch: "encoder_input_tokens" int32 [b, input_length]; "decoder_input_tokens" (or
      "decoder_target_tokens") [b, target_length] gives the default max_decode_length.
    rng: PRNG key for sampling (default: PRNGKey(options.seed)).
  Returns:
    tokens: int32 [b, max_decode_length], the best sequence, 0 after EOS.
    scores: float32 [b], its log-probability (beam search: length-normalised score).
  """
  enc = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
  targets = batch.get("decoder_input_tokens", batch.get("decoder_target_tokens"))
  length = options.max_decode_length or targets.shape[1]
  b = enc.shape[0]
  encoded = model.apply({"params": params}, enc, method=model.encode)
  if options.method == "beam_search":
    k = options.num_beams
    enc, encoded = jnp.repeat(enc, k, axis=0), jnp.repeat(encoded, k, axis=0)
    cache = _initial_cache(model, encoded, enc, length)
    seqs, scores = beam_search(_decoder_step_fn(model, params, encoded, enc), cache,
                               batch_size=b, max_decode_length=length, num_beams=k,
                               alpha=options.alpha)
    return seqs[:, 0], scores[:, 0]
  cache = _initial_cache(model, encoded, enc, length)
  step = _decoder_step_fn(model, params, encoded, enc)
  if options.method == "greedy":
    return greedy_search(step, cache, batch_size=b, max_decode_length=length)
  rng = jax.random.PRNGKey(options.seed) if rng is None else rng
  return temperature_sample(step, cache, batch_size=b, max_decode_length=length, rng=rng,
                            temperature=options.temperature, topk=options.topk,
                            topp=options.topp)


def score_batch(model: network.Transformer, params: Any,
                batch: Mapping[str, Array]) -> Array:
  """Teacher-forced log-likelihood of the targets: float32 [b], summed over target tokens.

  batch: unpacked EncDecFeatureConverter features ("encoder_input_tokens",
  "decoder_input_tokens", "decoder_target_tokens", optional "decoder_loss_weights").
  """
  targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
  logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"], targets)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  token_lp = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
  weights = batch.get("decoder_loss_weights")
  weights = (targets > 0) if weights is None else weights
  return jnp.sum(token_lp * weights.astype(jnp.float32), axis=-1)


def make_predict_fn(model: network.Transformer, options: DecodingOptions
                    ) -> Callable[[Any, Mapping[str, Array], Optional[Array]],
                                  tuple[Array, Array]]:
  """`predict_batch` jitted for fixed options: fn(params, batch, rng=None) -> (tokens, scores)."""
  def predict_fn(params, batch, rng=None):
    return predict_batch(model, params, batch, options=options, rng=rng)
  return jax.jit(predict_fn)


def make_score_fn(model: network.Transformer) -> Callable[[Any, Mapping[str, Array]], Array]:
  """`score_batch` jitted: fn(params, batch) -> log-likelihoods [b]."""
  return jax.jit(functools.partial(score_batch, model))
