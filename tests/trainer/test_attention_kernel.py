"""The Pallas relative-position attention kernel (Pallas's interpreter on CPU) against the
einsum path: outputs and the gradients of query, key, value and the bias table, on padded,
packed and causal rows; a tiny T5 trained through it against "xla"; its argument errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recast.trainer import attention_kernel, losses, network

TOLERANCE = dict(rtol=2e-5, atol=2e-5)


def _einsum_attention(q, k, v, table, buckets, mask: network.AttentionMask):
  """`network.Attention`'s "xla" path on projected heads, float32."""
  logits = jnp.einsum("bqhk,bthk->bhqt", q, k) + jnp.take(table, buckets, axis=1)[None]
  weights = jax.nn.softmax(logits + mask.bias(), axis=-1)
  return jnp.einsum("bhqt,bthk->bqhk", weights, v)


def _case(lq, lk, *, bidirectional, seed=0, heads=2, d=16, batch=2):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, lq, heads, d))
  k, v = rng.normal(size=(2, batch, lk, heads, d))
  table = rng.normal(size=(heads, 32))
  buckets = network.relative_position_bucket(
      jnp.arange(lk)[None, :] - jnp.arange(lq)[:, None], bidirectional=bidirectional,
      num_buckets=32, max_distance=128)
  return [jnp.asarray(x, jnp.float32) for x in (q, k, v, table)] + [buckets]


def _prefix_mask(length, real):
  return jnp.arange(length)[None, :] < jnp.asarray(real)[:, None]


def _segments(length, cuts):
  """int [rows, length]: segment 1, 2, ... between each row's cut points, 0 after."""
  seg = np.zeros((len(cuts), length), np.int32)
  for row, row_cuts in enumerate(cuts):
    for i in range(len(row_cuts) - 1):
      seg[row, row_cuts[i]:row_cuts[i + 1]] = i + 1
  return jnp.asarray(seg)


def _compare(q, k, v, table, buckets, mask, **kernel_args):
  """Kernel and einsum outputs and (query, key, value, table) gradients of a random
  cotangent, every position (padding included) compared."""
  def kernel(q, k, v, table):
    return attention_kernel.relative_attention(
        q, k, v, table, buckets, query_mask=mask.query_mask, key_mask=mask.key_mask,
        query_segment_ids=mask.query_segment_ids, key_segment_ids=mask.key_segment_ids,
        causal=mask.causal, interpret=True, **kernel_args)

  def reference(q, k, v, table):
    return _einsum_attention(q, k, v, table, buckets, mask)

  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  results = []
  for fn in (kernel, reference):
    def out_and_grads(q, k, v, table, fn=fn):
      out, vjp = jax.vjp(fn, q, k, v, table)
      return (out, *vjp(cotangent))
    results.append(jax.jit(out_and_grads)(q, k, v, table))
  for name, got, want in zip(("out", "dq", "dk", "dv", "dtable"), *results):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    np.testing.assert_allclose(got, want, err_msg=name, **TOLERANCE)
  return results


def test_padded_rows_match_einsum():
  q, k, v, table, buckets = _case(32, 32, bidirectional=True)
  real = _prefix_mask(32, [32, 19])
  results = _compare(q, k, v, table, buckets, network.AttentionMask(real, real),
                     block_q=16, block_k=16)
  dtable = np.asarray(results[0][4])
  # The bias gradient is really there: nonzero exactly in the buckets that occur.
  assert np.abs(dtable).max() > 0.1
  for head in range(2):
    assert set(np.flatnonzero(dtable[head])) == set(np.unique(np.asarray(buckets)))


def test_packed_rows_match_einsum():
  """Segment ids, padding after the last segment, fewer queries than keys."""
  q, k, v, table, buckets = _case(16, 32, bidirectional=True, seed=2)
  q_seg = _segments(16, [[0, 5, 12, 16], [0, 9, 14]])
  k_seg = _segments(32, [[0, 10, 20, 27], [0, 30]])
  mask = network.AttentionMask(q_seg > 0, k_seg > 0, q_seg, k_seg)
  _compare(q, k, v, table, buckets, mask, block_q=16, block_k=16)


def test_causal_packed_rows_with_padded_blocks_match_einsum():
  """The decoder's self-attention: causal, packed, padding; length 24 runs in automatic
  blocks of 32, so keys and queries are padded inside the kernel."""
  q, k, v, table, buckets = _case(24, 24, bidirectional=False, seed=3)
  seg = _segments(24, [[0, 7, 20], [0, 24]])
  mask = network.AttentionMask(seg > 0, seg > 0, seg, seg, causal=True)
  _compare(q, k, v, table, buckets, mask)


def test_bfloat16_close_to_float32():
  q, k, v, table, buckets = _case(32, 32, bidirectional=True, seed=4)
  real = _prefix_mask(32, [32, 25])
  args = dict(query_mask=real, key_mask=real, block_q=16, block_k=16)
  bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = attention_kernel.relative_attention(*bf16, table, buckets, **args)
  assert out.dtype == jnp.bfloat16
  want = _einsum_attention(q, k, v, table, buckets, network.AttentionMask(real, real))
  np.testing.assert_allclose(out.astype(jnp.float32), want, atol=0.05)


def test_t5_trains_the_same_with_pallas_as_with_xla():
  """A tiny T5 (1+1 layers; packed encoder and decoder rows, padding): loss and every
  parameter's gradient through the Pallas kernel equal the einsum path's."""
  config = network.T5Config(vocab_size=64, d_model=32, num_heads=4, d_kv=16, d_ff=48,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                            attention_implementation="xla")
  params = nn.unbox(network.init_params(config, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  enc_seg = np.asarray(_segments(32, [[0, 12, 29], [0, 32]]))
  dec_seg = np.asarray(_segments(8, [[0, 3, 7], [0, 6]]))
  batch = {"encoder_input_tokens": np.where(enc_seg > 0, rng.integers(2, 64, (2, 32)), 0),
           "decoder_target_tokens": np.where(dec_seg > 0, rng.integers(2, 64, (2, 8)), 0),
           "encoder_segment_ids": enc_seg, "decoder_segment_ids": dec_seg}
  starts = np.diff(dec_seg, axis=1, prepend=0) != 0
  shifted = np.concatenate([np.zeros((2, 1), int), batch["decoder_target_tokens"][:, :-1]], 1)
  batch["decoder_input_tokens"] = np.where(starts, 0, shifted)
  batch = {name: jnp.asarray(x, jnp.int32) for name, x in batch.items()}
  weights = {"decoder_loss_weights": (batch["decoder_segment_ids"] > 0).astype(jnp.int32),
             "decoder_target_tokens": batch["decoder_target_tokens"]}

  def loss_and_grads(implementation):
    model = network.Transformer(config.replace(attention_implementation=implementation))

    def loss_fn(p):
      logits = model.apply({"params": p}, **batch)
      return losses.compute_loss(logits, weights, loss_normalizing_factor=None)[0]
    return jax.jit(jax.value_and_grad(loss_fn))(params)

  loss, grads = loss_and_grads("pallas")
  ref_loss, ref_grads = loss_and_grads("xla")
  np.testing.assert_allclose(loss, ref_loss, **TOLERANCE)
  flat, ref_flat = (jax.tree_util.tree_leaves_with_path(g) for g in (grads, ref_grads))
  for (path, g), (_, want) in zip(flat, ref_flat):
    np.testing.assert_allclose(g, want, err_msg=jax.tree_util.keystr(path), **TOLERANCE)
  assert float(jnp.max(jnp.abs(grads["encoder"]["relpos_bias"]["rel_embedding"]))) > 1e-3
  assert float(jnp.max(jnp.abs(grads["decoder"]["relpos_bias"]["rel_embedding"]))) > 1e-3


def test_pallas_with_dropout_on_says_how_to_fix():
  config = network.T5Config(vocab_size=64, d_model=32, num_heads=4, d_kv=16, d_ff=48,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1,
                            attention_implementation="xla")
  params = nn.unbox(network.init_params(config, jax.random.PRNGKey(0)))
  config = config.replace(attention_implementation="pallas")
  tokens = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match="has no attention dropout.*dropout_rate=0.0"):
    network.Transformer(config).apply({"params": params}, tokens, tokens, tokens,
                                      enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(1)})


@pytest.mark.parametrize("change, message", [
    (dict(block_q=12), r"block_q=12 does not divide the length 32: pass a divisor"),
    (dict(block_k=0), r"block_k=0 does not divide the length 32"),
    (dict(key=jnp.zeros((2, 32, 3, 16))), r"key and value must be \[batch=2, keys, heads=2"),
    (dict(table=jnp.zeros((3, 32))), r"table must be \[heads=2, buckets\]"),
    (dict(buckets=jnp.zeros((32, 16), jnp.int32)), r"buckets must be int \[queries=32, keys=32"),
    (dict(query_mask=jnp.ones((2, 16), bool)), r"query_mask must be \[batch, length\]"),
    (dict(query_segment_ids=jnp.ones((2, 32), jnp.int32)), r"pass both query_segment_ids"),
])
def test_bad_arguments_say_what_to_fix(change, message):
  q, k, v, table, buckets = _case(32, 32, bidirectional=True)
  args = dict(query=q, key=k, value=v, table=table, buckets=buckets)
  args.update(change)
  with pytest.raises(attention_kernel.AttentionKernelError, match=message):
    attention_kernel.relative_attention(**args)


def test_interpreter_is_chosen_off_a_gpu():
  assert attention_kernel.default_interpret() == (jax.default_backend() != "gpu")


def test_kernels_lower_to_triton_for_a_gpu():
  """Forward and both backward kernels lower through Pallas's Triton backend (bf16, T5's
  d_kv 64, causal packed rows, automatic 64-blocks), exported for CUDA from this CPU
  machine; compiling the Triton IR to PTX needs a GPU."""
  from jax import export
  length = 128
  buckets = network.relative_position_bucket(
      jnp.arange(length)[None, :] - jnp.arange(length)[:, None], bidirectional=False,
      num_buckets=32, max_distance=128)

  def forward_and_backward(q, k, v, table, segment_ids):
    def attend(q, k, v, table):
      return attention_kernel.relative_attention(
          q, k, v, table, buckets, query_mask=segment_ids > 0, key_mask=segment_ids > 0,
          query_segment_ids=segment_ids, key_segment_ids=segment_ids, causal=True,
          interpret=False)
    out, vjp = jax.vjp(attend, q, k, v, table)
    return out, vjp(out)

  qkv = jax.ShapeDtypeStruct((2, length, 2, 64), jnp.bfloat16)
  exported = export.export(
      jax.jit(forward_and_backward), platforms=["cuda"],
      disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
          qkv, qkv, qkv, jax.ShapeDtypeStruct((2, 32), jnp.float32),
          jax.ShapeDtypeStruct((2, length), jnp.int32))
  module = exported.mlir_module()
  for kernel in ("relpos_attention_forward", "relpos_attention_dkv", "relpos_attention_dq"):
    assert f'name = "{kernel}"' in module
