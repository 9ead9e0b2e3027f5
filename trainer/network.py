"""The T5 encoder-decoder (T5.1.0 and T5.1.1) in Flax.

Every parameter carries T5X's logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`,
`relpos_buckets`) so that `trainer.partitioning` can shard it on any mesh; parameter names
follow T5X's minimal T5 (`token_embedder`, `encoder/layers_0/attention/query`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from recast import errors

Array = jax.Array
_NEG_INF = -1e10


class ConfigError(errors.UserError):
  """A T5Config (or attention choice) that can't be built or run; names the fix."""

FEED_FORWARDS = ("gated-gelu", "relu")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas")


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def preferred_activation_dtype(platform: Optional[str] = None,
                               cpu_flags: Optional[set] = None) -> str:
  """"bfloat16" on accelerators and on CPUs with bf16 units (AVX512-BF16, AMX-BF16: XLA:CPU
  runs bf16 x bf16 -> float32 dots on them, BENCHMARKS.md section 6), else "float32".

  >>> preferred_activation_dtype("cpu", {"avx2"}), preferred_activation_dtype("gpu")
  ('float32', 'bfloat16')
  """
  platform = platform or jax.default_backend()
  if platform != "cpu":
    return "bfloat16"
  flags = cpu_info()[1] if cpu_flags is None else cpu_flags
  return "bfloat16" if flags & set(CPU_BF16_FLAGS) else "float32"


def cpu_info() -> tuple[str, set]:
  """(model name, ISA flags) of this machine's CPU from /proc/cpuinfo; ("", set()) where
  there is none."""
  model, flags = "", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and not model:
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return model, flags


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 encoder-decoder.

  T5.1.1 (the default): gated-GELU feed-forward, untied output layer.
  T5.1.0: `feed_forward="relu"`, `tie_word_embeddings=True` (logits through the shared
  embedding, rescaled by d_model**-0.5).
  """

  vocab_size: Optional[int] = None  # None: taken from the task's vocabulary (see below).
  d_model: int = 512
  num_heads: int = 6
  d_kv: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  feed_forward: str = "gated-gelu"
  tie_word_embeddings: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  # Activation dtype; parameters are always float32. "auto": bfloat16 where the hardware
  # computes it faster (accelerators; CPUs with AVX512-BF16 or AMX-BF16 units), else float32
  # (`preferred_activation_dtype`); a config is always built with the dtype it resolved to.
  dtype: str = "float32"
  # "xla": attention as einsums + float32 softmax (T5X's). "cudnn": cuDNN's fused (flash)
  # attention, GPU only, bf16/fp16 activations, no attention dropout. "auto": cuDNN where
  # it can run (a GPU, bf16/fp16, dropout off or inactive), else XLA. "pallas": the flash
  # kernel of `trainer.attention_kernel` for self-attention with the relative-position bias
  # (no attention dropout; Pallas's interpreter off a GPU), "auto" for the rest. See `Attention`.
  attention_implementation: str = "auto"

  def __post_init__(self):
    if self.vocab_size is not None and self.vocab_size <= 0:
      raise ConfigError(f"T5Config.vocab_size must be positive, got {self.vocab_size}")
    if self.feed_forward not in FEED_FORWARDS:
      raise ConfigError(
          f"T5Config.feed_forward={self.feed_forward!r} is not supported; use one of "
          f"{', '.join(FEED_FORWARDS)}")
    if self.dtype == "auto":
      object.__setattr__(self, "dtype", preferred_activation_dtype())
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ConfigError(f"T5Config.dtype={self.dtype!r}: use float32, bfloat16, float16 or "
                        "auto (ACTIVATION_DTYPE in the run files)")
    if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ConfigError(
          f"T5Config.attention_implementation={self.attention_implementation!r} is not "
          f"supported; use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  def with_vocab_size(self, vocabulary_size: int) -> "T5Config":
    """Fills an unset vocab_size from the vocabulary, rounded up to a multiple of 128 (as
    T5's 32100 -> 32128); a set one must be at least the vocabulary's size."""
    if self.vocab_size is None:
      return self.replace(vocab_size=-(-vocabulary_size // 128) * 128)
    if self.vocab_size < vocabulary_size:
      raise ConfigError(
          f"T5Config.vocab_size={self.vocab_size} is smaller than the vocabulary "
          f"({vocabulary_size} ids); leave it unset to follow the vocabulary")
    return self

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# While `init_params(grouped=True)` traces flax's init: the list its `_param` calls record
# into (per thread: a train step may be tracing in another one).
_INIT_RECORDING = threading.local()


def _param(module: nn.Module, name: str, init, shape, axes):
  calls = getattr(_INIT_RECORDING, "calls", None)
  if calls is not None:
    init = _recording_initializer(module, name, init, axes, calls)
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _matmul_f32_accumulate(a: Array, b: Array) -> Array:
  """a @ b accumulated and returned in float32 by the dot, then in a @ b's dtype.

  On XLA:CPU (YNNPACK dots) a bf16 x bf16 -> bf16 dot is run as a float32 dot between
  converted copies (no bf16 units, two extra passes), while bf16 x bf16 -> float32 runs on
  the AVX512-BF16/AMX units: 2-3x float32's speed (benchmarks/cpu_bf16.py). Same numbers
  as `a @ b` (XLA:CPU accumulates that one in float32 too); a no-op for float32.
  """
  return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(jnp.result_type(a, b))


@jax.custom_vjp
def _matmul_with_plain_vjp(x: Array, w: Array) -> Array:
  return _matmul_f32_accumulate(x, w.astype(x.dtype))


def _matmul_fwd(x, w):
  w_cast = w.astype(x.dtype)
  return _matmul_f32_accumulate(x, w_cast), (x, w_cast, jnp.zeros((0,), w.dtype))


# Activation dtypes whose weight gradients write x^T out (`_weight_gradient`); read when a
# train step is traced (`benchmarks/cpu_dense.py` compares the step both ways).
WRITE_OUT_TRANSPOSE_DTYPES = ("bfloat16",)


def _transposed_copy(x: Array) -> Array:
  """x.T [n, t] of x [t, n], written out in row-major order (not a view).

  XLA folds a plain transpose into the dot that reads it; XLA:CPU's YNNPACK runs a bf16
  dot only when its left operand contracts over its minor dimension, and otherwise
  converts both operands to float32 for its own (Eigen) dot. A weight gradient x^T g
  contracts over the tokens, x's major dimension; this transpose, spelt through a 3-d
  shape that XLA does not fold, makes x^T a real bf16 operand that YNNPACK takes. (Not
  [t // k, k, n]: with the tokens sharded over devices and t // k not divisible by their
  count, XLA all-gathered x in float32 first.)
  """
  t, n = x.shape
  return x.reshape(1, t, n).transpose(2, 0, 1).reshape(n, t)


def _weight_gradient(x: Array, g: Array, *, write_out_transpose: bool) -> Array:
  """x^T g in float32 for x [tokens, n], g [tokens, m].

  `write_out_transpose` (bf16 operands) makes x^T a `_transposed_copy` so that the dot
  runs on the bf16 units: the bf16 train step 1.27x faster (BENCHMARKS.md section 6,
  `python -m benchmarks.cpu_dense`). float32 keeps the folded transpose: most of its dots
  gain too, but the float32 copy costs the step more than they save (0.91x).
  """
  x_t = _transposed_copy(x) if write_out_transpose else x.T
  return jnp.matmul(x_t, g, preferred_element_type=jnp.float32)


def _matmul_bwd(residuals, g):
  x, w_cast, w_dtype = residuals
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  # The weight gradient leaves the dot in float32 and stays there for a float32 weight:
  # no rounding to the activation dtype and back (two passes over every gradient).
  dw = _weight_gradient(x2, g2, write_out_transpose=x2.dtype.name in {
      jnp.dtype(d).name for d in WRITE_OUT_TRANSPOSE_DTYPES})
  return _matmul_f32_accumulate(g, w_cast.T).astype(x.dtype), dw.astype(w_dtype.dtype)


_matmul_with_plain_vjp.defvjp(_matmul_fwd, _matmul_bwd)


def dense(x: Array, w: Array) -> Array:
  """x [..., n] @ w [n, m] with w cast to x's dtype (float32 parameters, bf16 or float32
  activations): the numbers of `x @ w.astype(x.dtype)`, in x's dtype.

  On XLA:CPU the gradient comes from a hand-written VJP: left to autodiff, XLA:CPU fuses
  the elementwise backward of whatever follows (GELU, gating) into a transposed copy of the
  [tokens, m] gradient that feeds the weight gradient; that copy was a fifth of the train
  step (benchmarks/, BENCHMARKS.md section 1), and the VJP boundary halves the feed-forward
  block's forward + backward time. Its weight gradient is accumulated and returned in w's
  dtype (float32), where autodiff of the cast would round it to bf16 first. Other backends
  use plain autodiff (with bf16 activations their weight gradients are rounded to bf16
  before the cast's transpose makes them float32).
  """
  if jax.default_backend() == "cpu":
    return _matmul_with_plain_vjp(x, w)
  return x @ w.astype(x.dtype)


def relative_position_bucket(relative_position: Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """Maps relative positions (key - query) to T5's log-spaced buckets.

  Half the buckets (all of them when causal) hold exact small distances; the rest cover
  distances up to `max_distance` logarithmically; farther distances share the last bucket.
  Returns int32 buckets of the same shape.
  """
  n = -relative_position
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  n_float = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(n_float / max_exact) / np.log(max_distance / max_exact) *
                       (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


@flax.struct.dataclass
class TablePositionBias:
  """A relative-position bias kept as its table [heads, buckets] and the int32 bucket of
  each (query, key) [q, k], for the Pallas kernel, which never materialises the bias."""

  table: Array
  buckets: Array

  def dense(self) -> Array:
    """The materialised float32 bias [1, heads, q, k]."""
    return jnp.take(self.table, self.buckets, axis=1)[None]


class RelativePositionBiases(nn.Module):
  """One table of per-head biases per stack, shared by the stack's layers."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array, *, as_table: bool = False):
    """query_positions: [q], key_positions: [k]. Returns float32 [1, heads, q, k], or with
    `as_table` the table and buckets (`TablePositionBias`)."""
    table = _param(self, "rel_embedding", nn.initializers.normal(stddev=1.0),
                   (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    buckets = relative_position_bucket(
        key_positions[None, :] - query_positions[:, None], bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    if as_table:
      return TablePositionBias(table, buckets)
    values = jnp.take(table, buckets, axis=1)  # [heads, q, k]
    return values[None]


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias, computed in float32."""

  epsilon: float
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    x32 = x.astype(jnp.float32)
    y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(self.dtype)


@flax.struct.dataclass
class AttentionMask:
  """Which keys each query may attend to.

  query_mask / key_mask: bool [b, q] / [b, k], true for real tokens (seqio pads at the end
  of a row, so real tokens are a prefix); segment ids (packed rows): int [b, q] / [b, k],
  attention only within the same example; `causal`: no key after the query's position.
  """

  query_mask: Array
  key_mask: Array
  query_segment_ids: Optional[Array] = None
  key_segment_ids: Optional[Array] = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  def allowed(self) -> Array:
    """bool [b, 1, q, k]: true where attention is allowed."""
    allowed = self.query_mask[:, :, None] & self.key_mask[:, None, :]
    if self.query_segment_ids is not None:
      allowed &= self.query_segment_ids[:, :, None] == self.key_segment_ids[:, None, :]
    if self.causal:
      q, k = self.query_mask.shape[1], self.key_mask.shape[1]
      allowed &= jnp.arange(q)[:, None] >= jnp.arange(k)[None, :]
    return allowed[:, None]

  def bias(self) -> Array:
    """Additive float32 [b, 1, q, k]: 0 where attention is allowed, -1e10 elsewhere."""
    return jnp.where(self.allowed(), 0.0, _NEG_INF).astype(jnp.float32)


def cudnn_attention_problem(config: T5Config, *, query_length: int, key_length: int,
                            has_position_bias: bool, dropout: bool) -> Optional[str]:
  """Why cuDNN's fused attention can't run this attention (None when it can)."""
  if jax.default_backend() != "gpu":
    return f"it needs a GPU (JAX's backend is {jax.default_backend()!r})"
  if config.dtype not in ("bfloat16", "float16"):
    return f"it needs bfloat16 or float16 activations (T5Config.dtype={config.dtype!r})"
  if dropout:
    return (f"it has no attention dropout (T5Config.dropout_rate={config.dropout_rate} and "
            "dropout is on): set dropout_rate=0.0 or use 'xla'")
  if config.d_kv % 8 or config.d_kv > 128:
    return f"it needs d_kv a multiple of 8 and at most 128 (d_kv={config.d_kv})"
  if has_position_bias and (query_length % 2 or key_length % 2):
    return (f"with a position bias it needs even lengths (got {query_length} queries, "
            f"{key_length} keys): use even feature lengths")
  return None


def fused_attention(query: Array, key: Array, value: Array, mask: AttentionMask,
                    position_bias: Optional[Array], *, implementation: str = "cudnn") -> Array:
  """softmax(q k^T + position_bias, masked) v through `jax.nn.dot_product_attention`.

  query [b, q, heads, d_kv], key/value [b, k, heads, d_kv]; position_bias [1, heads, q, k]
  or None. Unpacked rows pass the mask as sequence lengths (real tokens are a prefix; at
  least 1, so an all-padding row stays finite) and `is_causal`, which cuDNN applies without
  materialising a mask; packed rows pass the segment mask as a bool [b, 1, q, k].
  Positions that are padding come out differently from the einsum path (zeros under
  cuDNN); every real position gets the same attention.
  """
  bias = None if position_bias is None else position_bias.astype(query.dtype)
  kwargs = dict(scale=1.0, implementation=implementation)
  if mask.query_segment_ids is not None:
    return jax.nn.dot_product_attention(query, key, value, bias, mask.allowed(), **kwargs)
  lengths = lambda m: jnp.maximum(jnp.sum(m, axis=1, dtype=jnp.int32), 1)
  return jax.nn.dot_product_attention(
      query, key, value, bias, is_causal=mask.causal,
      query_seq_lengths=lengths(mask.query_mask), key_value_seq_lengths=lengths(mask.key_mask),
      **kwargs)


@functools.lru_cache(maxsize=None)
def _cpu_attention(has_bias: bool, keep_prob: Optional[float]):
  """softmax(q k^T + bias + mask_bias) v with a hand-written VJP, for XLA:CPU.

  The same numbers as the einsum path below in float32 (within rounding: the softmax
  gradient is written out). Every matmul, forward and backward, asks for float32 results
  from its (bf16 or float32) operands, so bf16 ones run on the AVX512-BF16/AMX units
  (`_matmul_f32_accumulate`); left to autodiff, the backward dots are bf16 -> bf16, which
  XLA:CPU runs as float32 dots between converted copies. The position-bias gradient (the
  sum of dlogits over the batch) is a dot with a vector of ones: YNNPACK's reduction of
  [b, heads, q, k] over b ran at under 1 GB/s, 30x slower. With `keep_prob` the attention
  weights are dropped out by `keep` (nn.Dropout's mask: select(keep, w / keep_prob, 0)).
  """
  f32 = jnp.float32

  def drop(weights, keep):
    if keep_prob is None:
      return weights
    return lax.select(keep, weights / keep_prob, jnp.zeros_like(weights))

  def forward(query, key, value, bias, mask_bias, keep):
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=f32)
    if has_bias:
      logits = logits + bias
    probs = jax.nn.softmax(logits + mask_bias, axis=-1)
    weights = drop(probs.astype(query.dtype), keep)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value, preferred_element_type=f32)
    return out.astype(query.dtype), (query, key, value, probs, keep, out)

  def backward(residuals, grad):
    query, key, value, probs, keep, out = residuals
    dweights = jnp.einsum("bqhd,bkhd->bhqk", grad, value, preferred_element_type=f32)
    dweights = drop(dweights, keep)  # (dropout's transpose is dropout)
    weights = drop(probs.astype(query.dtype), keep)
    dvalue = jnp.einsum("bhqk,bqhd->bkhd", weights, grad, preferred_element_type=f32)
    if query.dtype == f32:
      # softmax's sum_k p_k dL/dp_k is sum_d grad * out (FlashAttention's D): a reduction
      # over d_kv of [b, q, heads, d_kv], not over the keys of [b, heads, q, k]. Not in
      # bf16: there `out` is made of bf16-rounded weights, so each row of dlogits would sum
      # to a bf16 rounding error instead of zero, and a tiny model trained so no longer
      # learned its task (tests/trainer/test_train.py: 83% where it reaches 100%).
      rowsum = jnp.sum(grad.astype(f32) * out, axis=-1).transpose(0, 2, 1)[..., None]
    else:
      rowsum = jnp.sum(dweights * probs, axis=-1, keepdims=True)
    dlogits = probs * (dweights - rowsum)
    dlogits_c = dlogits.astype(query.dtype)
    dquery = jnp.einsum("bhqk,bkhd->bqhd", dlogits_c, key, preferred_element_type=f32)
    dkey = jnp.einsum("bhqk,bqhd->bkhd", dlogits_c, query, preferred_element_type=f32)
    dbias = None
    if has_bias:  # bias [1, heads, q, k]: summed over the batch
      dbias = jnp.einsum("b,bhqk->hqk", jnp.ones(dlogits.shape[0], f32), dlogits)[None]
    return (dquery.astype(query.dtype), dkey.astype(key.dtype), dvalue.astype(value.dtype),
            dbias, None, None)

  @jax.custom_vjp
  def attention(query, key, value, bias, mask_bias, keep):
    return forward(query, key, value, bias, mask_bias, keep)[0]

  attention.defvjp(forward, backward)
  return attention


class Attention(nn.Module):
  """Multi-head dot-product attention without the 1/sqrt(d_kv) scale (T5 folds it into init).

  With `decode=True` the keys and values of self-attention are kept in the `cache`
  collection and each call processes one new position.

  `config.attention_implementation` picks the kernel: XLA's einsums with a float32
  softmax (T5X's numerics), or cuDNN's fused flash attention, which never writes the
  [b, heads, q, k] scores to memory (the position bias enters in the activation dtype).
  "pallas" runs `trainer.attention_kernel` (Pallas flash attention that adds the bias from
  the table and sums its gradient per bucket in the kernel) where the position bias comes as
  a `TablePositionBias` (self-attention, not decoding), and chooses as "auto" elsewhere.
  Decoding steps (the cache, or one query position) always use XLA. On XLA:CPU, "xla" (and
  "auto") run the same einsums through `_cpu_attention`'s hand-written VJP.
  """

  config: T5Config

  def _proj(self, name, x, init_std):
    cfg = self.config
    kernel = _param(self, name, nn.initializers.normal(init_std),
                    (x.shape[-1], cfg.num_heads, cfg.d_kv), ("embed", "heads", "kv"))
    heads_and_kv = dense(x, kernel.reshape(x.shape[-1], -1))
    return heads_and_kv.reshape(*x.shape[:-1], cfg.num_heads, cfg.d_kv)

  def _implementation(self, query_length, key_length, has_position_bias, dropout, decode,
                      table_bias=False):
    cfg = self.config
    if cfg.attention_implementation == "xla" or decode or query_length == 1:
      return "xla"  # decoding steps (one query position) gain nothing from a flash kernel
    if cfg.attention_implementation == "pallas" and table_bias:
      if dropout:
        raise ConfigError(
            "T5Config.attention_implementation='pallas' has no attention dropout "
            f"(T5Config.dropout_rate={cfg.dropout_rate} and dropout is on): set "
            "dropout_rate=0.0 or use 'xla'")
      return "pallas"
    problem = cudnn_attention_problem(cfg, query_length=query_length, key_length=key_length,
                                      has_position_bias=has_position_bias, dropout=dropout)
    if problem is None:
      return "cudnn"
    if cfg.attention_implementation == "cudnn":  # ("pallas" falls back as "auto" does)
      raise ConfigError(f"T5Config.attention_implementation='cudnn' can't run here: {problem}; "
                        "'auto' falls back to XLA where cuDNN can't run")
    return "xla"

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: AttentionMask,
               position_bias: Optional[Array] = None, *, enable_dropout: bool = False,
               decode: bool = False) -> Array:
    """inputs_q: [b, q, d]; inputs_kv: [b, k, d]; position_bias: float32 [1, heads, q, k]
    or a `TablePositionBias`."""
    cfg = self.config
    dtype = cfg.activation_dtype
    d = inputs_q.shape[-1]
    query = self._proj("query", inputs_q, (d * cfg.d_kv) ** -0.5)
    key = self._proj("key", inputs_kv, d ** -0.5)
    value = self._proj("value", inputs_kv, d ** -0.5)
    if decode:
      key, value = self._update_cache(key, value)
    table_bias = isinstance(position_bias, TablePositionBias)
    implementation = self._implementation(
        query.shape[1], key.shape[1], position_bias is not None,
        enable_dropout and cfg.dropout_rate > 0, decode, table_bias)
    if table_bias and implementation != "pallas":
      position_bias = position_bias.dense()
    if implementation == "pallas":
      from recast.trainer import attention_kernel
      out = attention_kernel.relative_attention(
          query, key, value, position_bias.table, position_bias.buckets,
          query_mask=mask.query_mask, key_mask=mask.key_mask,
          query_segment_ids=mask.query_segment_ids, key_segment_ids=mask.key_segment_ids,
          causal=mask.causal).astype(dtype)
    elif implementation == "cudnn":
      out = fused_attention(query, key, value, mask, position_bias)
    elif jax.default_backend() == "cpu" and not (enable_dropout and cfg.dropout_rate >= 1):
      dropout = enable_dropout and cfg.dropout_rate > 0
      keep = None
      if dropout:  # nn.Dropout's own mask (same module name, same rng) for the weights
        shape = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
        keep = nn.Dropout(cfg.dropout_rate)(jnp.ones(shape, jnp.float32),
                                            deterministic=False) > 0
      has_bias = position_bias is not None
      out = _cpu_attention(has_bias, 1.0 - cfg.dropout_rate if dropout else None)(
          query, key, value, position_bias if has_bias else jnp.zeros((), jnp.float32),
          mask.bias(), keep)
    else:
      logits = jnp.einsum("bqhk,bthk->bhqt", query, key).astype(jnp.float32)
      if position_bias is not None:
        logits = logits + position_bias
      weights = jax.nn.softmax(logits + mask.bias(), axis=-1).astype(dtype)
      weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=not enable_dropout)
      out = jnp.einsum("bhqt,bthk->bqhk", weights, value)
    out_kernel = _param(self, "out", nn.initializers.normal((cfg.num_heads * cfg.d_kv) ** -0.5),
                        (cfg.num_heads, cfg.d_kv, d), ("heads", "kv", "embed"))
    return dense(out.reshape(*out.shape[:-2], -1), out_kernel.reshape(-1, d))

  def _update_cache(self, key: Array, value: Array):
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:  # Shape-only pass that creates the cache: attend normally.
      return key, value
    if key.shape[1] != 1:
      raise ValueError(f"decode=True takes one position per call, got {key.shape[1]}")
    i = index.value
    cached_key.value = lax.dynamic_update_slice(cached_key.value, key, (0, i, 0, 0))
    cached_value.value = lax.dynamic_update_slice(cached_value.value, value, (0, i, 0, 0))
    index.value = i + 1
    return cached_key.value, cached_value.value


class FeedForward(nn.Module):
  """T5.1.1's gated-GELU (wi_0, wi_1, wo) or T5.1.0's ReLU (wi, wo) MLP."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, *, enable_dropout: bool = False) -> Array:
    cfg = self.config
    d = x.shape[-1]
    wi_init = nn.initializers.normal(d ** -0.5)
    if cfg.feed_forward == "gated-gelu":
      wi_0 = _param(self, "wi_0", wi_init, (d, cfg.d_ff), ("embed", "mlp"))
      wi_1 = _param(self, "wi_1", wi_init, (d, cfg.d_ff), ("embed", "mlp"))
      h = nn.gelu(dense(x, wi_0), approximate=True) * dense(x, wi_1)
    else:
      wi = _param(self, "wi", wi_init, (d, cfg.d_ff), ("embed", "mlp"))
      h = nn.relu(dense(x, wi))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=not enable_dropout)
    wo = _param(self, "wo", nn.initializers.normal(cfg.d_ff ** -0.5), (cfg.d_ff, d),
                ("mlp", "embed"))
    return dense(h, wo)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, mask, position_bias, *, enable_dropout=False):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="pre_attention_layer_norm")(x)
    h = Attention(cfg, name="attention")(h, h, mask, position_bias,
                                         enable_dropout=enable_dropout)
    x = x + drop(h, deterministic=not enable_dropout)
    h = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="pre_mlp_layer_norm")(x)
    h = FeedForward(cfg, name="mlp")(h, enable_dropout=enable_dropout)
    x = x + drop(h, deterministic=not enable_dropout)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, encoded, self_mask, self_position_bias, cross_mask, *,
               enable_dropout=False, decode=False):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
    h = norm("pre_self_attention_layer_norm")(x)
    h = Attention(cfg, name="self_attention")(h, h, self_mask, self_position_bias,
                                              enable_dropout=enable_dropout, decode=decode)
    x = x + drop(h, deterministic=not enable_dropout)
    h = norm("pre_cross_attention_layer_norm")(x)
    h = Attention(cfg, name="encoder_decoder_attention")(h, encoded, cross_mask,
                                                         enable_dropout=enable_dropout)
    x = x + drop(h, deterministic=not enable_dropout)
    h = norm("pre_mlp_layer_norm")(x)
    h = FeedForward(cfg, name="mlp")(h, enable_dropout=enable_dropout)
    x = x + drop(h, deterministic=not enable_dropout)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, *, enable_dropout=False):
    cfg = self.config
    length = tokens.shape[1]
    real = tokens > 0
    mask = AttentionMask(real, real, segment_ids, segment_ids)
    positions = jnp.arange(length)
    position_bias = RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, bidirectional=True, name="relpos_bias")(
            positions, positions, as_table=cfg.attention_implementation == "pallas")
    x = self.embedder(tokens).astype(cfg.activation_dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not enable_dropout)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask, position_bias,
                                                enable_dropout=enable_dropout)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=not enable_dropout)


class Decoder(nn.Module):
  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, *, enable_dropout=False,
               decode=False):
    cfg = self.config
    length = decoder_input_tokens.shape[1]
    relpos = RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, bidirectional=False, name="relpos_bias")
    encoder_mask = encoder_tokens > 0
    if decode:
      self_mask, self_position_bias, cross_mask = self._decode_masks(relpos, encoder_mask,
                                                                     length)
    else:
      target_mask = (decoder_target_tokens if decoder_target_tokens is not None
                     else decoder_input_tokens) > 0
      # T5X's decoder: every position starts real (input 0 is the BOS), so mask on targets.
      positions = jnp.arange(length)
      self_mask = AttentionMask(target_mask, target_mask, decoder_segment_ids,
                                decoder_segment_ids, causal=True)
      self_position_bias = relpos(positions, positions,
                                  as_table=cfg.attention_implementation == "pallas")
      cross_mask = AttentionMask(target_mask, encoder_mask, decoder_segment_ids,
                                 encoder_segment_ids)
    x = self.embedder(decoder_input_tokens).astype(cfg.activation_dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not enable_dropout)
    for i in range(cfg.num_decoder_layers):
      x = DecoderLayer(cfg, name=f"layers_{i}")(x, encoded, self_mask, self_position_bias,
                                                cross_mask, enable_dropout=enable_dropout,
                                                decode=decode)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not enable_dropout)
    if cfg.tie_word_embeddings:
      logits = self.embedder.attend(x * cfg.d_model ** -0.5)
    else:
      kernel = _param(self, "logits_dense", nn.initializers.normal(cfg.d_model ** -0.5),
                      (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
      logits = dense(x, kernel)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def _decode_masks(self, relpos, encoder_mask, length):
    """(self mask, self position bias, cross mask) of one decoding step at the position
    held in the cache."""
    initialized = self.has_variable("cache", "position")
    position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
    batch = encoder_mask.shape[0]
    if not initialized:  # Cache creation: a full causal pass over `length` positions.
      positions = jnp.arange(length)
      ones = jnp.ones((batch, length), bool)
      return (AttentionMask(ones, ones, causal=True), relpos(positions, positions),
              AttentionMask(ones, encoder_mask))
    step = position.value
    keys = jnp.arange(self._cache_length())
    one = jnp.ones((batch, 1), bool)
    filled = jnp.broadcast_to(keys <= step, (batch, keys.shape[0]))
    position.value = step + 1
    return (AttentionMask(one, filled), relpos(step[None], keys),
            AttentionMask(one, encoder_mask))

  def _cache_length(self) -> int:
    cache = self.variables["cache"]
    return cache["layers_0"]["self_attention"]["cached_key"].shape[1]


class Embed(nn.Module):
  """The token embedding shared by encoder and decoder (and the logits when tied)."""

  vocab_size: int
  features: int

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (self.vocab_size, self.features), ("vocab", "embed"))

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0)

  def attend(self, x: Array) -> Array:
    return dense(x, self.embedding.T)


class Transformer(nn.Module):
  """The encoder-decoder. Token id 0 is padding; decoder inputs start with 0 (T5's BOS).

  Args of `__call__` (all int32 [batch, length]): encoder_input_tokens, decoder_input_tokens,
  decoder_target_tokens, and for packed batches the segment ids of seqio's
  `EncDecFeatureConverter`. Returns float32 logits [batch, decoder_length, vocab].
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.d_model)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, enable_dropout=False):
    """Returns encoder outputs [batch, encoder_length, d_model] in the activation dtype."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids, enable_dropout=enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None, *,
             enable_dropout=False, decode=False):
    """Returns float32 logits. With `decode=True`, one position per call, using the cache."""
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                        decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                        enable_dropout=enable_dropout, decode=decode)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, enable_dropout=False):
    # Positions are implied by segment ids: relative biases only matter inside a segment,
    # where offsets from arange(length) equal offsets from the packed positions.
    del encoder_positions, decoder_positions
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                       enable_dropout=enable_dropout)


@dataclasses.dataclass(frozen=True)
class _InitCall:
  """One parameter initialiser call, as flax's init would make it."""

  path: tuple
  root: Any  # flax's root "params" key (the same object for every call of one init)
  suffix: tuple  # static data flax folds into `root` for this parameter's key
  init: Any
  shape: tuple
  dtype: Any
  group: tuple  # calls of one group draw in one vmapped call


def _initializer_fingerprint(init) -> tuple:
  """Equal for initialisers that compute the same function (flax's `normal(0.05)` twice:
  same code, same closure values); an initialiser that cannot be compared stands alone."""
  cells = tuple(c.cell_contents for c in (getattr(init, "__closure__", None) or ()))
  code = getattr(init, "__code__", None)
  try:
    hash(cells)
  except TypeError:
    code = None
  return (id(init),) if code is None else (code, cells)


def _recording_initializer(module: nn.Module, name: str, init, axes, calls: list):
  """An initialiser that records the call flax makes (the static data of its key) and
  returns zeros; `init_params` draws the recorded parameters afterwards, group by group."""
  scope = module.scope

  def record(key, shape, dtype=jnp.float32):
    del key  # flax's key for this parameter: fold_in(root, hash(suffix)), rebuilt below
    lazy = scope.rngs["params"]
    shape = tuple(shape)
    calls.append(_InitCall(
        path=tuple(scope.path) + (name,), root=lazy.rng,
        suffix=tuple(lazy.suffix) + (scope.rng_counters["params"],), init=init, shape=shape,
        dtype=jnp.dtype(dtype),
        group=(_initializer_fingerprint(init), shape, jnp.dtype(dtype), tuple(axes))))
    return jnp.zeros(shape, dtype)
  return record


def _static_data_hash(data: tuple) -> int:
  """The 32-bit integer flax's `_fold_in_static` folds into a key for `data`."""
  m = hashlib.sha1()
  for x in data:
    if flax.config.flax_fix_rng_separator:
      m.update(b"\00")
    if isinstance(x, str):
      m.update(x.encode("utf-8"))
    else:
      m.update(x.to_bytes((x.bit_length() + 7) // 8, byteorder="big"))
  return int.from_bytes(m.digest()[:4], byteorder="big")


def _draw_grouped(boxed, calls: list):
  """`boxed` (flax's tree, zeros inside) with every recorded parameter drawn: all keys in
  one vmapped fold_in, then one vmapped initialiser call per group of same-shaped
  parameters with the same initialiser and axes. Each value equals flax's own draw (same
  key, same function; vmap changes neither)."""
  root = calls[0].root
  hashes = np.array([_static_data_hash(c.suffix) for c in calls], np.uint32)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(root, jnp.asarray(hashes))
  groups: dict[tuple, list[int]] = {}
  for i, call in enumerate(calls):
    groups.setdefault(call.group, []).append(i)
  values = {}
  for members in groups.values():
    first = calls[members[0]]
    drawn = jax.vmap(lambda k: first.init(k, first.shape, first.dtype))(
        keys[np.array(members)])
    for j, i in enumerate(members):
      values[calls[i].path] = drawn[j]

  def replace(path, box):
    return box.replace_boxed(values[tuple(k.key for k in path)])
  return jax.tree_util.tree_map_with_path(
      replace, boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def init_params(config: T5Config, rng: Array, *, batch: int = 1, input_length: int = 8,
                target_length: int = 8, grouped: bool = True):
  """Initial parameters as a tree of `nn.LogicallyPartitioned` boxes (use `nn.unbox`).

  grouped: draw the parameters in one vmapped call per group of same-shaped ones (about a
    dozen groups for any T5) instead of flax's one random draw per parameter (282 for
    T5.1.1-base). Same values (each parameter's own flax key and initialiser), but XLA
    compiles a program whose size no longer grows with the layer count
    (`python -m benchmarks.init_compile`). Applies under a trace (jit, eval_shape);
    called eagerly, and with `grouped=False`, this is flax's own `model.init`.
  """
  if config.vocab_size is None:
    raise ConfigError("T5Config.vocab_size is unset: call config.with_vocab_size(vocab size)")
  model = Transformer(config)
  enc = jnp.ones((batch, input_length), jnp.int32)
  dec = jnp.ones((batch, target_length), jnp.int32)
  if not grouped or not isinstance(rng, jax.core.Tracer):
    # Called eagerly, op by op, flax's own init is the quicker one (every grouped op
    # would compile on its own).
    return model.init(rng, enc, dec, dec)["params"]
  calls: list = []
  _INIT_RECORDING.calls = calls
  try:
    boxed = model.init(rng, enc, dec, dec)["params"]
  finally:
    _INIT_RECORDING.calls = None
  if not calls or any(c.root is not calls[0].root for c in calls):
    return model.init(rng, enc, dec, dec)["params"]  # keys not all from one root: flax's way
  return _draw_grouped(boxed, calls)


def param_count(config: T5Config) -> int:
  """Number of parameters, from shapes only (nothing is allocated)."""
  shapes = jax.eval_shape(lambda r: nn.unbox(init_params(config, r)), jax.random.PRNGKey(0))
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)))
