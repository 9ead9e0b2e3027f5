"""Decoding: greedy against a slow reference, exhaustive beam search, sampling, scoring."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recast.trainer import decoding, network

TINY = network.T5Config(vocab_size=32, d_model=32, num_heads=2, d_kv=8, d_ff=32,
                        num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
ENC = jnp.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0], [3, 3, 4, 1, 0, 0],
                 [11, 12, 13, 14, 15, 1]], jnp.int32)
LENGTH = 6


@pytest.fixture(scope="module")
def model_and_params():
  params = nn.unbox(network.init_params(TINY, jax.random.PRNGKey(3)))
  # Larger output weights make the random model's distributions peaked and varied.
  params["decoder"]["logits_dense"] = params["decoder"]["logits_dense"] * 8.0
  return network.Transformer(TINY), params


def _batch(enc=ENC, length=LENGTH):
  zeros = jnp.zeros((enc.shape[0], length), jnp.int32)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": zeros}


def _reference_greedy(model, params, enc, length):
  """Slow greedy: a full teacher-forced forward per step, feeding back the argmax."""
  out = np.zeros((enc.shape[0], length), np.int32)
  done = np.zeros(enc.shape[0], bool)
  for t in range(length):
    dec_in = np.concatenate([np.zeros((enc.shape[0], 1), np.int32), out[:, :-1]], axis=1)
    logits = np.array(model.apply({"params": params}, enc, dec_in, np.ones_like(dec_in)))
    logits[..., 0] = -np.inf
    token = np.where(done, 0, logits[:, t].argmax(-1))
    out[:, t] = token
    done |= token == decoding.EOS_ID
  return out


_PREDICT_FNS = {}


def _predict(model, params, batch=None, *, seed=0, **options):
  """Decodes with jitted predict functions kept per (model, options): one compile each."""
  options = decoding.DecodingOptions(**options)
  key = (id(model), options)
  if key not in _PREDICT_FNS:
    _PREDICT_FNS[key] = decoding.make_predict_fn(model, options)
  tokens, scores = _PREDICT_FNS[key](params, _batch() if batch is None else batch,
                                     jax.random.PRNGKey(seed))
  return np.asarray(tokens), np.asarray(scores)


def test_greedy_matches_slow_reference_and_pads_after_eos(model_and_params):
  model, params = model_and_params
  tokens, log_probs = _predict(model, params)
  np.testing.assert_array_equal(tokens, _reference_greedy(model, params, ENC, LENGTH))
  ended = np.cumsum(tokens == decoding.EOS_ID, axis=1) > 0
  after_eos = ended & ~(tokens == decoding.EOS_ID)
  assert np.all(tokens[after_eos] == 0) and np.all(tokens[~ended] > 1)
  assert ended.any(), "the fixture should produce at least one EOS"
  assert np.all(log_probs < 0)


def test_sampling_limits_equal_greedy(model_and_params):
  model, params = model_and_params
  greedy, greedy_lp = _predict(model, params)
  for options in [dict(temperature=1.0, topk=1), dict(temperature=0.0),
                  dict(temperature=2.0, topp=1e-6)]:
    for seed in (0, 1):
      tokens, lp = _predict(model, params, method="sample", seed=seed, **options)
      np.testing.assert_array_equal(tokens, greedy, err_msg=str(options))
      np.testing.assert_allclose(lp, greedy_lp, rtol=1e-5)


def test_sampling_follows_seed_and_filters(model_and_params):
  model, params = model_and_params
  a, _ = _predict(model, params, method="sample", seed=0, temperature=3.0)
  b, _ = _predict(model, params, method="sample", seed=0, temperature=3.0)
  np.testing.assert_array_equal(a, b)
  samples = [_predict(model, params, method="sample", seed=s, temperature=3.0)[0]
             for s in range(1, 6)]
  assert any(not np.array_equal(a, s) for s in samples)
  # top-k 2: every sampled token is one of the two most likely at its step.
  logits = jnp.array([[0.0, 5.0, 4.0, 3.0, 2.0]])
  filtered = decoding._filter_logits(logits, topk=2, topp=1.0)
  assert np.sum(np.asarray(filtered) > decoding.NEG_INF / 2) == 2
  # top-p 0.7 over probs (.64, .24, .09, ...): the two tokens that reach 70% stay.
  filtered = decoding._filter_logits(logits, topk=0, topp=0.7)
  np.testing.assert_array_equal(np.asarray(filtered) > decoding.NEG_INF / 2,
                                [[False, True, True, False, False]])


def test_beam_search_with_one_beam_is_greedy(model_and_params):
  model, params = model_and_params
  greedy, greedy_lp = _predict(model, params)
  beam, beam_score = _predict(model, params, method="beam_search", num_beams=1, alpha=0.0)
  np.testing.assert_array_equal(beam, greedy)
  np.testing.assert_allclose(beam_score, greedy_lp, rtol=1e-5)


def test_beam_search_finds_the_best_sequences_by_enumeration():
  cfg = TINY.replace(vocab_size=6)
  model = network.Transformer(cfg)
  params = nn.unbox(network.init_params(cfg, jax.random.PRNGKey(7)))
  params["decoder"]["logits_dense"] = params["decoder"]["logits_dense"] * 4.0
  enc = jnp.array([[2, 3, 4, 1], [5, 1, 0, 0]], jnp.int32)
  length, alpha, beams = 3, 0.6, 16
  # Every hypothesis: ends at EOS (id 1) or at the length limit; id 0 is never generated.
  # 16 beams hold every unfinished prefix, so the search is exhaustive here.
  words = range(2, 6)
  hyps = [(1,)] + [(a, 1) for a in words] + [
      (a, b, c) for a, b in itertools.product(words, words) for c in range(1, 6)]
  tgt = np.array([list(h) + [0] * (length - len(h)) for h in hyps], np.int32)
  dec_in = np.concatenate([np.zeros((len(hyps), 1), np.int32), tgt[:, :-1]], axis=1)
  lengths = np.array([len(h) for h in hyps])
  forward = jax.jit(lambda e: model.apply({"params": params}, e, dec_in, np.ones_like(tgt)))

  @jax.jit
  def search(enc):
    enc = jnp.repeat(enc, beams, axis=0)
    encoded = model.apply({"params": params}, enc, method=model.encode)
    cache = decoding._initial_cache(model, encoded, enc, length)
    step = decoding._decoder_step_fn(model, params, encoded, enc)
    return decoding.beam_search(step, cache, batch_size=2, max_decode_length=length,
                                num_beams=beams, alpha=alpha)

  seqs, scores = search(enc)
  for row in range(enc.shape[0]):
    logits = np.array(forward(np.repeat(enc[row:row + 1], len(hyps), 0)))
    logits[..., 0] = -np.inf
    log_p = np.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1)[..., 0]
    total = np.where(np.arange(length) < lengths[:, None], log_p, 0.0).sum(-1)
    expected = total / ((5.0 + lengths) / 6.0) ** alpha
    order = np.argsort(-expected)[:beams]
    np.testing.assert_allclose(np.asarray(scores[row]), expected[order], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(seqs[row]), tgt[order])


def test_score_is_sum_of_target_log_likelihoods(model_and_params):
  model, params = model_and_params
  targets = jnp.array([[4, 5, 1, 0, 0, 0], [7, 1, 0, 0, 0, 0], [6, 6, 6, 1, 0, 0],
                       [2, 3, 4, 5, 6, 1]], jnp.int32)
  dec_in = jnp.concatenate([jnp.zeros((4, 1), jnp.int32), targets[:, :-1]], axis=1)
  batch = {"encoder_input_tokens": ENC, "decoder_input_tokens": dec_in,
           "decoder_target_tokens": targets}
  score_fn = decoding.make_score_fn(model)
  scores = np.asarray(score_fn(params, batch))
  logits = jax.jit(model.apply)({"params": params}, ENC, dec_in, targets)
  log_p = np.asarray(jax.nn.log_softmax(logits))
  expected = [sum(log_p[r, t, targets[r, t]] for t in range(6) if targets[r, t] > 0)
              for r in range(4)]
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  # The greedy output is the likeliest sequence step by step, so it outscores a random one.
  greedy, _ = _predict(model, params)
  g_in = jnp.concatenate([jnp.zeros((4, 1), jnp.int32), greedy[:, :-1]], axis=1)
  g_scores = score_fn(params, {
      "encoder_input_tokens": ENC, "decoder_input_tokens": g_in,
      "decoder_target_tokens": jnp.asarray(greedy)})
  assert np.all(np.asarray(g_scores) > scores)


def test_decoding_under_a_data_parallel_mesh(model_and_params):
  model, params = model_and_params
  if jax.device_count() < 4:
    pytest.skip("needs 4 (fake) devices")
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
  batch = jax.device_put(_batch(), NamedSharding(mesh, PartitionSpec("data")))
  replicated = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  for options in [dict(), dict(method="beam_search", num_beams=1, alpha=0.0)]:
    single, _ = _predict(model, params, **options)
    with mesh:
      sharded, _ = _predict(model, replicated, batch, **options)
    np.testing.assert_array_equal(sharded, single)
