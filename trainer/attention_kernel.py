"""Flash attention with T5's relative-position bias as Pallas kernels.

`relative_attention` computes, per batch row and head,

  softmax(q k^T + table[head, buckets] + mask) v

with no 1/sqrt(d) scale (T5 folds it into the initialisation), the same numbers as
`network.Attention`'s einsum path ("xla"), including its additive -1e10 mask. The
position bias enters as the per-stack table [heads, buckets] and an int32 bucket index
per (query, key) position (`network.relative_position_bucket`), shared by every row and
head, so neither the bias nor the scores [batch, heads, q, k] are ever written to memory:

- forward: one program per (row, head, query block) runs an online softmax over key
  blocks, building each score tile's bias from the table inside the kernel;
- backward (a `jax.custom_vjp`): one kernel per key block for dK and dV, one per query
  block for dQ that also sums the score gradient dS of each tile per bucket, giving
  d(table) as [batch, heads, query blocks, buckets] partial sums that are reduced
  outside (a few KB, against cuDNN's [batch, heads, q, k] dS).

The bias tile is one indexed load from the table; the per-bucket sums of dS visit only the
buckets between the tile's lowest and highest (T5's buckets are log-spaced, so a tile far
from the diagonal holds one bucket and costs one sum).

`interpret=None` runs the kernels through Pallas's interpreter off a GPU (CPU: the
numbers are checked there, tests/trainer/test_attention_kernel.py) and compiles them
with Pallas's Triton backend on a GPU.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from recast.errors import UserError

Array = jax.Array
MASK_VALUE = -1e10  # network._NEG_INF: the einsum path's additive mask
DEFAULT_BLOCK = 64
MIN_BLOCK = 16  # Triton's smallest dot operand


class AttentionKernelError(UserError):
  """Arguments the Pallas attention kernel can't take."""


@dataclasses.dataclass(frozen=True)
class _Static:
  """What the kernels are specialised on (hashable: a custom_vjp non-diff argument)."""

  causal: bool
  block_q: int
  block_k: int
  key_length: int  # before padding to a multiple of block_k
  interpret: bool


def _dot(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False) -> Array:
  """a @ b (optionally transposed operands), accumulated in float32."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _bucket_range(buckets: Array) -> tuple[Array, Array]:
  """(lowest, highest + 1) bucket of a tile, reduced one axis at a time (Triton's way)."""
  return (jnp.min(jnp.min(buckets, axis=1), axis=0),
          jnp.max(jnp.max(buckets, axis=1), axis=0) + 1)


def _tile_bias(table_ref, buckets: Array) -> Array:
  """table[buckets] for one [bq, bk] tile of bucket ids: a load through a tensor of
  pointers into the head's table row (Triton has no gather of values, but indexing a ref
  with an int array lowers to one such load; the row is a few hundred bytes, cached)."""
  return table_ref[buckets]


def _tile_scores(q, k, table_ref, buckets, q_codes, k_codes, q_start, k_start, static):
  """float32 [bq, bk] scores of one tile: q k^T + bias + mask, masked as the einsum path
  masks (additive -1e10), keys beyond the real length (block padding) at -inf."""
  s = _dot(q, k, trans_b=True) + _tile_bias(table_ref, buckets)
  allowed = q_codes[:, None] == k_codes[None, :]
  bq, bk = s.shape
  q_pos = q_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
  k_pos = k_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
  if static.causal:
    allowed = allowed & (q_pos >= k_pos)
  s = s + jnp.where(allowed, 0.0, MASK_VALUE)
  if static.key_length % static.block_k:
    s = jnp.where(k_pos < static.key_length, s, -jnp.inf)
  return s


def _forward_kernel(q_ref, k_ref, v_ref, table_ref, buckets_ref, q_codes_ref, k_codes_ref,
                    o_ref, m_ref, l_ref, *, static: _Static):
  block_q, block_k = static.block_q, static.block_k
  q_start = pl.program_id(2) * block_q
  q = q_ref[...]
  q_codes = q_codes_ref[...]
  num_k_blocks = k_ref.shape[0] // block_k

  def body(j, carry):
    o, m, l = carry
    ks = pl.ds(j * block_k, block_k)
    s = _tile_scores(q, k_ref[ks, :], table_ref, buckets_ref[:, ks], q_codes,
                     k_codes_ref[ks], q_start, j * block_k, static)
    m_next = jnp.maximum(m, jnp.max(s, axis=1))
    correction = jnp.exp(m - m_next)
    p = jnp.exp(s - m_next[:, None])
    v = v_ref[ks, :]
    o = o * correction[:, None] + _dot(p.astype(v.dtype), v)
    return o, m_next, l * correction + jnp.sum(p, axis=1)

  d = q.shape[-1]
  o, m, l = lax.fori_loop(
      0, num_k_blocks, body,
      (jnp.zeros((block_q, d), jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
       jnp.zeros((block_q,), jnp.float32)))
  o_ref[...] = (o / l[:, None]).astype(o_ref.dtype)
  # m and l separately, not m + log(l): a fully masked row has m = -1e10, where adding
  # log(l) rounds away.
  m_ref[...] = m
  l_ref[...] = l


def _probabilities(s, m, l):
  return jnp.exp(s - m[:, None]) * (1.0 / l)[:, None]


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, table_ref, buckets_ref,
                q_codes_ref, k_codes_ref, dk_ref, dv_ref, *, static: _Static):
  block_q, block_k = static.block_q, static.block_k
  k_start = pl.program_id(2) * block_k
  k, v = k_ref[...], v_ref[...]
  k_codes = k_codes_ref[...]
  num_q_blocks = q_ref.shape[0] // block_q

  def body(i, carry):
    dk, dv = carry
    qs = pl.ds(i * block_q, block_q)
    q, do = q_ref[qs, :], do_ref[qs, :]
    s = _tile_scores(q, k, table_ref, buckets_ref[qs, :], q_codes_ref[qs], k_codes,
                     i * block_q, k_start, static)
    p = _probabilities(s, m_ref[qs], l_ref[qs])
    dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (_dot(do, v, trans_b=True) - delta_ref[qs][:, None])
    dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, num_q_blocks, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, table_ref, buckets_ref,
               q_codes_ref, k_codes_ref, dq_ref, dtable_ref, *, static: _Static):
  block_q, block_k = static.block_q, static.block_k
  q_start = pl.program_id(2) * block_q
  q, do = q_ref[...], do_ref[...]
  m, l, delta = m_ref[...], l_ref[...], delta_ref[...]
  q_codes = q_codes_ref[...]
  num_k_blocks = k_ref.shape[0] // block_k
  num_buckets = dtable_ref.shape[-1]

  def body(j, carry):
    dq, dtable = carry
    ks = pl.ds(j * block_k, block_k)
    k, v = k_ref[ks, :], v_ref[ks, :]
    buckets = buckets_ref[:, ks]
    s = _tile_scores(q, k, table_ref, buckets, q_codes, k_codes_ref[ks], q_start,
                     j * block_k, static)
    p = _probabilities(s, m, l)
    ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
    dq = dq + _dot(ds.astype(k.dtype), k)

    def per_bucket(bucket, dtable):
      total = jnp.sum(jnp.sum(jnp.where(buckets == bucket, ds, 0.0), axis=1), axis=0)
      return dtable + jnp.where(lax.iota(jnp.int32, num_buckets) == bucket, total, 0.0)
    dtable = lax.fori_loop(*_bucket_range(buckets), per_bucket, dtable)
    return dq, dtable

  dq, dtable = lax.fori_loop(
      0, num_k_blocks, body,
      (jnp.zeros(q.shape, jnp.float32), jnp.zeros((num_buckets,), jnp.float32)))
  dq_ref[...] = dq.astype(dq_ref.dtype)
  dtable_ref[...] = dtable


def _specs(static: _Static, lq: int, lk: int, d: int, nb: int, *, grid_over: str):
  """BlockSpecs of the shared inputs for a grid (batch, head, block) over query blocks
  (grid_over="q") or key blocks ("k")."""
  bq, bk = static.block_q, static.block_k
  if grid_over == "q":
    q_spec = pl.BlockSpec((None, bq, None, d), lambda b, h, i: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, lk, None, d), lambda b, h, i: (b, 0, h, 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    buckets_spec = pl.BlockSpec((bq, lk), lambda b, h, i: (i, 0))
    q_codes_spec = pl.BlockSpec((None, bq), lambda b, h, i: (b, i))
    k_codes_spec = pl.BlockSpec((None, lk), lambda b, h, i: (b, 0))
  else:
    q_spec = pl.BlockSpec((None, lq, None, d), lambda b, h, j: (b, 0, h, 0))
    kv_spec = pl.BlockSpec((None, bk, None, d), lambda b, h, j: (b, j, h, 0))
    row_spec = pl.BlockSpec((None, None, lq), lambda b, h, j: (b, h, 0))
    buckets_spec = pl.BlockSpec((lq, bk), lambda b, h, j: (0, j))
    q_codes_spec = pl.BlockSpec((None, lq), lambda b, h, j: (b, 0))
    k_codes_spec = pl.BlockSpec((None, bk), lambda b, h, j: (b, j))
  table_spec = pl.BlockSpec((None, nb), lambda b, h, i: (h, 0))
  return q_spec, kv_spec, row_spec, table_spec, buckets_spec, q_codes_spec, k_codes_spec


def _compiler_params(static: _Static, d: int):
  if static.interpret:
    return None
  from jax.experimental.pallas import triton as plgpu
  return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


def _forward(q, k, v, table, buckets, q_codes, k_codes, static: _Static):
  b, lq, h, d = q.shape
  lk, nb = k.shape[1], table.shape[1]
  q_spec, kv_spec, row_spec, table_spec, buckets_spec, q_codes_spec, k_codes_spec = _specs(
      static, lq, lk, d, nb, grid_over="q")
  row = jax.ShapeDtypeStruct((b, h, lq), jnp.float32)
  return pl.pallas_call(
      functools.partial(_forward_kernel, static=static),
      grid=(b, h, lq // static.block_q),
      in_specs=[q_spec, kv_spec, kv_spec, table_spec, buckets_spec, q_codes_spec,
                k_codes_spec],
      out_specs=[q_spec, row_spec, row_spec],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), row, row],
      compiler_params=_compiler_params(static, d), interpret=static.interpret,
      name="relpos_attention_forward",
  )(q, k, v, table, buckets, q_codes, k_codes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _attention(q, k, v, table, buckets, q_codes, k_codes, static: _Static):
  return _forward(q, k, v, table, buckets, q_codes, k_codes, static)[0]


def _attention_fwd(q, k, v, table, buckets, q_codes, k_codes, static):
  o, m, l = _forward(q, k, v, table, buckets, q_codes, k_codes, static)
  return o, (q, k, v, table, buckets, q_codes, k_codes, o, m, l)


def _attention_bwd(static, residuals, do):
  q, k, v, table, buckets, q_codes, k_codes, o, m, l = residuals
  b, lq, h, d = q.shape
  lk, nb = k.shape[1], table.shape[1]
  # delta = rowsum(dO * O): [b, h, q], a plain XLA reduction.
  delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), o.astype(jnp.float32))
  args = (q, k, v, do, m, l, delta, table, buckets, q_codes, k_codes)
  params = dict(compiler_params=_compiler_params(static, d), interpret=static.interpret)

  q_spec, kv_spec, row_spec, table_spec, buckets_spec, q_codes_spec, k_codes_spec = _specs(
      static, lq, lk, d, nb, grid_over="k")
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, static=static),
      grid=(b, h, lk // static.block_k),
      in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, row_spec, table_spec,
                buckets_spec, q_codes_spec, k_codes_spec],
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      name="relpos_attention_dkv", **params)(*args)

  q_spec, kv_spec, row_spec, table_spec, buckets_spec, q_codes_spec, k_codes_spec = _specs(
      static, lq, lk, d, nb, grid_over="q")
  num_q_blocks = lq // static.block_q
  dq, dtable_partial = pl.pallas_call(
      functools.partial(_dq_kernel, static=static),
      grid=(b, h, num_q_blocks),
      in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, row_spec, table_spec,
                buckets_spec, q_codes_spec, k_codes_spec],
      out_specs=[q_spec, pl.BlockSpec((None, None, None, nb), lambda b, h, i: (b, h, i, 0))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, num_q_blocks, nb), jnp.float32)],
      name="relpos_attention_dq", **params)(*args)
  dtable = jnp.sum(dtable_partial, axis=(0, 2)).astype(table.dtype)
  return dq, dk, dv, dtable, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _block(name: str, block: Optional[int], length: int) -> int:
  if block is None:  # a power of two, at least Triton's minimum; the length is padded to it
    return min(DEFAULT_BLOCK, max(MIN_BLOCK, pl.next_power_of_2(length)))
  if block <= 0 or length % block:
    raise AttentionKernelError(
        f"{name}={block} does not divide the length {length}: pass a divisor of {length} "
        f"or leave {name}=None (a power of two, the length padded to a multiple of it)")
  return block


def _pad(x: Array, axis: int, length: int, value=0) -> Array:
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def default_interpret() -> bool:
  """True off a GPU: Pallas's interpreter (Triton compiles for GPUs only)."""
  return jax.default_backend() != "gpu"


def relative_attention(query: Array, key: Array, value: Array, table: Array, buckets: Array,
                       *, query_mask: Optional[Array] = None, key_mask: Optional[Array] = None,
                       query_segment_ids: Optional[Array] = None,
                       key_segment_ids: Optional[Array] = None, causal: bool = False,
                       block_q: Optional[int] = None, block_k: Optional[int] = None,
                       interpret: Optional[bool] = None) -> Array:
  """softmax(q k^T + table[:, buckets] + mask) v, differentiable in query, key, value and
  table, the [batch, heads, q, k] scores never in memory.

  query [b, q, heads, d], key/value [b, k, heads, d]; table float [heads, buckets];
  buckets int [q, k] (e.g. `network.relative_position_bucket(k_pos - q_pos)`).
  query_mask / key_mask: bool [b, q] / [b, k], true for real tokens (None: all real);
  query_segment_ids / key_segment_ids: int [b, q] / [b, k] (packed rows: attention only
  within a segment; both or neither); causal: no key after the query's position. Masked
  pairs get -1e10 added, as `network.AttentionMask.bias`, so every position, padding
  included, matches the einsum path.
  block_q / block_k: tile sizes, dividing the lengths; None picks a power of two (at most
  64) and pads the lengths to a multiple of it. interpret: None runs Pallas's interpreter
  off a GPU. Returns [b, q, heads, d] in query's dtype.
  """
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise AttentionKernelError(
        f"query/key/value must be [batch, length, heads, head_dim], got shapes "
        f"{query.shape}, {key.shape}, {value.shape}")
  b, lq, h, d = query.shape
  lk = key.shape[1]
  if key.shape != (b, lk, h, d) or value.shape != key.shape:
    raise AttentionKernelError(
        f"key and value must be [batch={b}, keys, heads={h}, head_dim={d}] like query "
        f"{query.shape}, got key {key.shape} and value {value.shape}")
  if table.ndim != 2 or table.shape[0] != h:
    raise AttentionKernelError(
        f"table must be [heads={h}, buckets], got {table.shape}")
  if buckets.shape != (lq, lk) or not jnp.issubdtype(buckets.dtype, jnp.integer):
    raise AttentionKernelError(
        f"buckets must be int [queries={lq}, keys={lk}], got {buckets.dtype} {buckets.shape}")
  for name, mask, shape in (("query_mask", query_mask, (b, lq)), ("key_mask", key_mask, (b, lk)),
                            ("query_segment_ids", query_segment_ids, (b, lq)),
                            ("key_segment_ids", key_segment_ids, (b, lk))):
    if mask is not None and mask.shape != shape:
      raise AttentionKernelError(f"{name} must be [batch, length] = {shape}, got {mask.shape}")
  if (query_segment_ids is None) != (key_segment_ids is None):
    raise AttentionKernelError(
        "pass both query_segment_ids and key_segment_ids (packed rows) or neither")
  bq, bk = _block("block_q", block_q, lq), _block("block_k", block_k, lk)
  static = _Static(causal=causal, block_q=bq, block_k=bk, key_length=lk,
                   interpret=default_interpret() if interpret is None else bool(interpret))

  # One int code per position: a pair may attend iff the codes are equal (same segment,
  # both real). Padding queries get -1, padding keys -2, so they match nothing.
  q_codes = (jnp.zeros((b, lq), jnp.int32) if query_segment_ids is None
             else query_segment_ids.astype(jnp.int32))
  k_codes = (jnp.zeros((b, lk), jnp.int32) if key_segment_ids is None
             else key_segment_ids.astype(jnp.int32))
  if query_mask is not None:
    q_codes = jnp.where(query_mask, q_codes, -1)
  if key_mask is not None:
    k_codes = jnp.where(key_mask, k_codes, -2)
  if query_segment_ids is not None:  # real tokens of segment < 0 would collide with padding
    q_codes = jnp.where(q_codes < 0, -1, q_codes)
    k_codes = jnp.where(k_codes < 0, -2, k_codes)

  lq_pad, lk_pad = -(-lq // bq) * bq, -(-lk // bk) * bk
  nb_pad = pl.next_power_of_2(table.shape[1])
  out = _attention(
      _pad(query, 1, lq_pad), _pad(key, 1, lk_pad), _pad(value, 1, lk_pad),
      _pad(table.astype(jnp.float32), 1, nb_pad),
      _pad(_pad(buckets.astype(jnp.int32), 0, lq_pad), 1, lk_pad),
      _pad(q_codes, 1, lq_pad, -1), _pad(k_codes, 1, lk_pad, -2), static)
  return out[:, :lq]
