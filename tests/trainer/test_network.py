"""The T5 network: shapes, logical axes, packing masks, cached decoding, T5.1.0 vs T5.1.1."""

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from recast.trainer import network

TINY = network.T5Config(vocab_size=64, d_model=32, num_heads=4, d_kv=8, d_ff=48,
                        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


@pytest.fixture(scope="module", params=["t5_1_1", "t5_1_0"])
def model_and_params(request):
  cfg = TINY if request.param == "t5_1_1" else TINY.replace(feed_forward="relu",
                                                            tie_word_embeddings=True)
  params = nn.unbox(network.init_params(cfg, jax.random.PRNGKey(0)))
  return network.Transformer(cfg), params


def test_every_parameter_has_logical_axes():
  boxed = network.init_params(TINY, jax.random.PRNGKey(0))
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  names = {n for leaf in leaves for n in leaf.names}
  assert {"embed", "mlp", "heads", "kv", "vocab", "relpos_buckets"} <= names
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert leaf.value.dtype == jnp.float32


def test_variants_have_their_own_parameters():
  p11 = nn.unbox(network.init_params(TINY, jax.random.PRNGKey(0)))
  p10 = nn.unbox(network.init_params(TINY.replace(feed_forward="relu", tie_word_embeddings=True),
                                     jax.random.PRNGKey(0)))
  assert "logits_dense" in p11["decoder"] and "logits_dense" not in p10["decoder"]
  assert set(p11["encoder"]["layers_0"]["mlp"]) == {"wi_0", "wi_1", "wo"}
  assert set(p10["encoder"]["layers_0"]["mlp"]) == {"wi", "wo"}
  # One relative-position table per stack, shared by its layers.
  assert "relpos_bias" in p11["encoder"] and "relpos_bias" in p11["decoder"]
  assert p11["encoder"]["relpos_bias"]["rel_embedding"].shape == (4, 32)


def test_relative_position_buckets_match_t5_definition():
  rel = jnp.arange(-200, 201)
  bi = np.asarray(network.relative_position_bucket(rel, bidirectional=True, num_buckets=32,
                                                   max_distance=128))
  causal = np.asarray(network.relative_position_bucket(rel, bidirectional=False,
                                                       num_buckets=32, max_distance=128))
  # Exact buckets for small offsets; keys after the query use the upper half.
  assert bi[200] == 0 and bi[201] == 17 and bi[199] == 1 and bi[200 + 7] == 23
  # Far offsets share the last bucket of their half; buckets never decrease with distance.
  assert bi[0] == 15 and bi[-1] == 31
  assert np.all(np.diff(bi[:201]) <= 0) and np.all(np.diff(bi[201:]) >= 0)
  # Causal: future keys all map to bucket 0; the past uses all 32 buckets.
  assert np.all(causal[200:] == 0) and causal[0] == 31 and causal[199] == 1


def test_packed_batch_equals_separate_examples(model_and_params):
  model, params = model_and_params
  a_in, a_tgt = [5, 6, 7, 1], [8, 9, 1]
  b_in, b_tgt = [10, 11, 1], [12, 1]

  def single(inputs, targets):
    enc = jnp.array([inputs])
    tgt = jnp.array([targets])
    dec_in = jnp.array([[0] + targets[:-1]])
    return np.asarray(model.apply({"params": params}, enc, dec_in, tgt))[0]

  enc = jnp.array([a_in + b_in + [0]])
  enc_seg = jnp.array([[1] * 4 + [2] * 3 + [0]])
  tgt = jnp.array([a_tgt + b_tgt + [0]])
  dec_in = jnp.array([[0] + a_tgt[:-1] + [0] + b_tgt[:-1] + [0]])
  dec_seg = jnp.array([[1] * 3 + [2] * 2 + [0]])
  packed = np.asarray(model.apply({"params": params}, enc, dec_in, tgt,
                                  encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg))[0]
  np.testing.assert_allclose(packed[:3], single(a_in, a_tgt), atol=1e-5)
  np.testing.assert_allclose(packed[3:5], single(b_in, b_tgt), atol=1e-5)


def test_padding_does_not_change_real_positions(model_and_params):
  model, params = model_and_params
  enc, dec_in, tgt = jnp.array([[5, 6, 7, 1]]), jnp.array([[0, 8, 9]]), jnp.array([[8, 9, 1]])
  short = model.apply({"params": params}, enc, dec_in, tgt)
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n)))
  long = model.apply({"params": params}, pad(enc, 5), pad(dec_in, 4), pad(tgt, 4))
  np.testing.assert_allclose(long[:, :3], short, atol=1e-5)


def test_cached_decoding_matches_full_forward(model_and_params):
  model, params = model_and_params
  enc = jnp.array([[5, 6, 7, 1, 0, 0], [9, 10, 1, 0, 0, 0]])
  dec_in = jnp.array([[0, 8, 9, 10, 3], [0, 4, 4, 2, 2]])
  full = model.apply({"params": params}, enc, dec_in, jnp.ones_like(dec_in))
  encoded = model.apply({"params": params}, enc, method=model.encode)
  cache = model.init(jax.random.PRNGKey(0), encoded, enc, dec_in, method=model.decode,
                     decode=True)["cache"]
  steps = []
  for i in range(dec_in.shape[1]):
    logits, mutated = model.apply({"params": params, "cache": cache}, encoded, enc,
                                  dec_in[:, i:i + 1], method=model.decode, decode=True,
                                  mutable=["cache"])
    cache = mutated["cache"]
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)


def test_dropout_only_when_enabled():
  cfg = TINY.replace(dropout_rate=0.5)
  model = network.Transformer(cfg)
  params = nn.unbox(network.init_params(cfg, jax.random.PRNGKey(0)))
  enc, dec = jnp.array([[5, 6, 1]]), jnp.array([[0, 7, 8]])
  a = model.apply({"params": params}, enc, dec, dec)
  b = model.apply({"params": params}, enc, dec, dec)
  np.testing.assert_array_equal(a, b)
  c = model.apply({"params": params}, enc, dec, dec, enable_dropout=True,
                  rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(a, c)


def test_bfloat16_activations_keep_float32_params_and_logits():
  cfg = TINY.replace(dtype="bfloat16")
  params = nn.unbox(network.init_params(cfg, jax.random.PRNGKey(0)))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  logits = network.Transformer(cfg).apply({"params": params}, jnp.array([[5, 1]]),
                                          jnp.array([[0, 3]]), jnp.array([[3, 1]]))
  assert logits.dtype == jnp.float32
  full = network.Transformer(TINY).apply({"params": params}, jnp.array([[5, 1]]),
                                         jnp.array([[0, 3]]), jnp.array([[3, 1]]))
  np.testing.assert_allclose(logits, full, atol=0.1 * float(jnp.abs(full).max()))


def test_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="feed_forward"):
    network.T5Config(feed_forward="swish")
  with pytest.raises(ValueError, match="with_vocab_size"):
    network.init_params(network.T5Config(), jax.random.PRNGKey(0))
  assert network.T5Config().with_vocab_size(32100).vocab_size == 32128
  with pytest.raises(ValueError, match="smaller than the vocabulary"):
    network.T5Config(vocab_size=100).with_vocab_size(32100)
  # User errors (the `recast` commands print them as one line, exit 2, write nothing).
  with pytest.raises(network.errors.UserError, match=r"T5Config.dtype='bf16': use float32, "
                     r"bfloat16, float16 or auto \(ACTIVATION_DTYPE in the run files\)"):
    network.T5Config(dtype="bf16")


def test_a_misspelt_activation_dtype_is_one_line_and_writes_nothing(tmp_path, capsys):
  from recast import cli
  model_dir = tmp_path / "run"
  code = cli.main(["train", "--gin_file=models/t5_1_1/tiny.gin",
                   "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   "--gin.MIXTURE_OR_TASK_NAME='glue_sst2'",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
                   "--gin.TRAIN_STEPS=1", "--gin.ACTIVATION_DTYPE='bf16'"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err
  assert "recast train: error: T5Config.dtype='bf16': use float32, bfloat16" in err
  assert not model_dir.exists()


@pytest.fixture
def fused_attention_on_cpu(monkeypatch):
  """Routes attention through `network.fused_attention` with jax.nn.dot_product_attention's
  XLA kernel: the arguments a GPU gets (sequence lengths, is_causal, bool segment masks,
  the position bias as a bias) with the kernel CPUs have. Returns the list of calls."""
  monkeypatch.setattr(network, "cudnn_attention_problem", lambda *a, **k: None)
  fused, calls = network.fused_attention, []

  def on_cpu(*args, **kwargs):
    calls.append(args[3])
    return fused(*args, **dict(kwargs, implementation="xla"))

  monkeypatch.setattr(network, "fused_attention", on_cpu)
  return calls


def _loss_and_grads(model, params, enc, dec_in, tgt, **segments):
  def loss(p):
    logits = model.apply({"params": p}, enc, dec_in, tgt, **segments)
    logp = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return -jnp.sum(picked * (tgt > 0)), logits
  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, logits, grads


@pytest.mark.parametrize("packed", [False, True])
def test_fused_attention_arguments_give_the_einsum_numbers(fused_attention_on_cpu, packed):
  params = nn.unbox(network.init_params(TINY.replace(attention_implementation="xla"),
                                       jax.random.PRNGKey(0)))
  reference = network.Transformer(TINY.replace(attention_implementation="xla"))
  fused = network.Transformer(TINY.replace(attention_implementation="cudnn"))
  if packed:  # two examples in one row, then padding
    enc = jnp.array([[5, 6, 7, 1, 10, 11, 1, 0], [4, 1, 0, 0, 0, 0, 0, 0]])
    segments = dict(encoder_segment_ids=jnp.array([[1] * 4 + [2] * 3 + [0], [1, 1] + [0] * 6]),
                    decoder_segment_ids=jnp.array([[1] * 3 + [2] * 2 + [0], [1, 1, 0, 0, 0, 0]]))
    tgt = jnp.array([[8, 9, 1, 12, 1, 0], [3, 1, 0, 0, 0, 0]])
    dec_in = jnp.array([[0, 8, 9, 0, 12, 0], [0, 3, 0, 0, 0, 0]])
  else:  # rows of different lengths, padded at the end (seqio's layout)
    enc = jnp.array([[5, 6, 7, 9, 1, 0], [4, 1, 0, 0, 0, 0]])
    tgt = jnp.array([[8, 9, 3, 1], [3, 1, 0, 0]])
    dec_in = jnp.array([[0, 8, 9, 3], [0, 3, 1, 0]])
    segments = {}
  loss, logits, grads = _loss_and_grads(reference, params, enc, dec_in, tgt, **segments)
  fused_loss, fused_logits, fused_grads = _loss_and_grads(fused, params, enc, dec_in, tgt,
                                                          **segments)
  # Encoder self-attention and decoder self- and cross-attention, every layer, once.
  assert len(fused_attention_on_cpu) == TINY.num_encoder_layers + 2 * TINY.num_decoder_layers
  assert {m.causal for m in fused_attention_on_cpu} == {False, True}
  assert all((m.query_segment_ids is not None) == packed for m in fused_attention_on_cpu)
  real = np.asarray(tgt > 0)
  np.testing.assert_allclose(np.asarray(fused_logits)[real], np.asarray(logits)[real],
                             atol=2e-5)
  np.testing.assert_allclose(fused_loss, loss, rtol=1e-5)
  # Every gradient, the relative-position tables' included (they enter as the bias).
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    fg = functools.reduce(lambda t, k: t[k.key], path, fused_grads)
    np.testing.assert_allclose(fg, g, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(grads["encoder"]["relpos_bias"]["rel_embedding"]).sum()) > 0


def test_attention_implementation_choice(monkeypatch):
  enc, dec = jnp.array([[5, 6, 1, 0]]), jnp.array([[0, 7, 8, 1]])
  params = nn.unbox(network.init_params(TINY, jax.random.PRNGKey(0)))
  # 'auto' falls back to XLA off a GPU: the numbers are the einsum path's.
  auto = network.Transformer(TINY).apply({"params": params}, enc, dec, dec)
  xla = network.Transformer(TINY.replace(attention_implementation="xla")).apply(
      {"params": params}, enc, dec, dec)
  np.testing.assert_array_equal(auto, xla)
  # 'cudnn' asked for where it can't run says why and what to do.
  with pytest.raises(ValueError, match="can't run here: it needs a GPU.*'auto' falls back"):
    network.Transformer(TINY.replace(attention_implementation="cudnn")).apply(
        {"params": params}, enc, dec, dec)
  with pytest.raises(ValueError, match="attention_implementation='flash'.*auto, xla, cudnn"):
    TINY.replace(attention_implementation="flash")
  problem = lambda cfg, **kw: network.cudnn_attention_problem(
      cfg, **dict(dict(query_length=8, key_length=8, has_position_bias=True, dropout=False), **kw))
  assert "GPU" in problem(TINY)
  # The other checks, as on a GPU (they read only the config and the shapes).
  monkeypatch.setattr(network.jax, "default_backend", lambda: "gpu")
  bf16 = TINY.replace(dtype="bfloat16")
  assert problem(bf16) is None
  assert "bfloat16 or float16" in problem(TINY)
  assert "dropout" in problem(bf16, dropout=True)
  assert "even lengths" in problem(bf16, query_length=7)
  assert problem(bf16, query_length=7, has_position_bias=False) is None


def test_decoding_steps_use_xla_attention(fused_attention_on_cpu):
  cfg = TINY.replace(attention_implementation="cudnn")
  params = nn.unbox(network.init_params(TINY.replace(attention_implementation="xla"),
                                        jax.random.PRNGKey(0)))
  model = network.Transformer(cfg)
  enc, dec_in = jnp.array([[5, 6, 7, 1]]), jnp.array([[0, 8, 9, 10]])
  encoded = model.apply({"params": params}, enc, method=model.encode)
  assert len(fused_attention_on_cpu) == TINY.num_encoder_layers
  cache = model.init(jax.random.PRNGKey(0), encoded, enc, dec_in, method=model.decode,
                     decode=True)["cache"]
  fused_attention_on_cpu.clear()
  logits, _ = model.apply({"params": params, "cache": cache}, encoded, enc, dec_in[:, :1],
                          method=model.decode, decode=True, mutable=["cache"])
  assert fused_attention_on_cpu == []  # neither the cached self- nor the 1-query cross-attention
  full = network.Transformer(TINY.replace(attention_implementation="xla")).apply(
      {"params": params}, enc, dec_in, jnp.ones_like(dec_in))
  np.testing.assert_allclose(logits[:, 0], full[:, 0], atol=1e-5)



def _random_draws(config, grouped):
  """random_bits calls in the traced init program (into nested jaxprs: every call counts)."""
  def count(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      n += eqn.primitive.name == "random_bits"
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        n += count(sub)
    return n
  return count(jax.make_jaxpr(lambda r: network.init_params(config, r, grouped=grouped))(
      jax.random.PRNGKey(0)).jaxpr)


def test_grouped_init_gives_flax_values_in_one_draw_per_group():
  small = TINY.replace(num_encoder_layers=1, num_decoder_layers=1)
  # Both compiled alike, with XLA's cheapest backend settings (seconds, not tens of them).
  cheap = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
  init = lambda grouped: jax.jit(lambda r: nn.unbox(network.init_params(
      small, r, grouped=grouped))).lower(jax.random.PRNGKey(3)).compile(cheap)(
          jax.random.PRNGKey(3))
  grouped, flax_own = init(True), init(False)
  assert jax.tree_util.tree_structure(grouped) == jax.tree_util.tree_structure(flax_own)
  for a, b in zip(jax.tree_util.tree_leaves(grouped), jax.tree_util.tree_leaves(flax_own)):
    np.testing.assert_array_equal(a, b)
  is_box = lambda x: isinstance(x, nn.Partitioned)
  names = lambda tree: [b.names for b in jax.tree_util.tree_leaves(tree, is_leaf=is_box)]
  boxed = lambda grouped: jax.eval_shape(  # traced: the grouped path runs
      lambda r: network.init_params(TINY, r, grouped=grouped), jax.random.PRNGKey(3))
  assert names(boxed(True)) == names(boxed(False))
  # One draw per group: twice the layers, as many draws (flax's own: one per tensor).
  deeper = TINY.replace(num_encoder_layers=4, num_decoder_layers=4)
  assert _random_draws(deeper, True) == _random_draws(TINY, True) == 8
  assert _random_draws(TINY, False) == 40 and _random_draws(deeper, False) == 76


def test_cpu_dense_multiplies_bf16_into_float32():
  # bf16 x bf16 dots ask XLA:CPU for float32 results (its bf16-unit path); the values are
  # the float32 products rounded once, forward and backward.
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.randn(2, 3, 16), jnp.bfloat16)
  w = jnp.asarray(rs.randn(16, 8), jnp.bfloat16)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: network.dense(x, w).astype(
      jnp.float32).sum(), argnums=(0, 1)))(x, w))
  if jax.default_backend() == "cpu":
    assert jaxpr.count("preferred_element_type=float32") == 3  # forward, two gradients
  y = network.dense(x, w)
  assert y.dtype == jnp.bfloat16
  x32, w32 = np.asarray(x, np.float32), np.asarray(w, np.float32)
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(jnp.asarray(x32 @ w32, jnp.bfloat16), np.float32),
                             rtol=1e-2, atol=1e-2)
  gx, gw = jax.grad(lambda x, w: (network.dense(x, w).astype(jnp.float32) ** 2).sum(),
                    argnums=(0, 1))(x, w)
  ex, ew = jax.grad(lambda x, w: ((x @ w) ** 2).sum(), argnums=(0, 1))(x32, w32)
  np.testing.assert_allclose(np.asarray(gx, np.float32), ex, rtol=3e-2, atol=0.2)
  np.testing.assert_allclose(np.asarray(gw, np.float32), ew, rtol=3e-2, atol=0.2)
  assert gx.dtype == gw.dtype == jnp.bfloat16


@pytest.mark.parametrize("tokens", [64, 6, 7])
def test_cpu_weight_gradient_is_a_bf16_dot_with_the_float32_numbers(tokens):
  # x^T g contracts over x's major dimension; left as a transpose XLA:CPU would convert x
  # and g to float32 for its own dot. The written-out transpose keeps a bf16 x bf16 ->
  # float32 dot (YNNPACK's), whose sum is numpy's float32 one of the same bf16 values.
  rs = np.random.RandomState(tokens)
  x = jnp.asarray(rs.randn(tokens, 40), jnp.bfloat16)
  w = jnp.asarray(rs.randn(40, 24), jnp.float32)
  c = jnp.asarray(rs.randn(tokens, 24), jnp.bfloat16)
  grad_w = jax.jit(jax.grad(lambda w, x, c: (network.dense(x, w) * c).astype(jnp.float32).sum()))
  expected = np.asarray(x, np.float32).T @ np.asarray(c, np.float32)
  np.testing.assert_allclose(grad_w(w, x, c), expected, rtol=1e-5, atol=1e-5)
  if jax.default_backend() == "cpu":
    hlo = grad_w.lower(w, x, c).compile().as_text()
    assert f"f32[{tokens},40]" not in hlo and f"f32[40,{tokens}]" not in hlo, (
        "the weight gradient's x was converted to float32")
    assert "__ynn_fusion" in hlo


def test_cpu_weight_gradient_with_sharded_tokens_gathers_nothing():
  # Data parallel over CPU devices: the tokens are sharded; the written-out transpose must
  # leave the sum over them to one all-reduce of the [n, m] result (no all-gather of x,
  # no float32 copy), also where the tokens do not split evenly into groups of 16.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  if jax.default_backend() != "cpu" or jax.device_count() < 2:
    pytest.skip("needs two or more CPU devices (tests/conftest.py forces four)")
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  sharded = NamedSharding(mesh, PartitionSpec("data", None))
  for tokens in (912, 4096):
    x = jax.device_put(jnp.ones((tokens, 40), jnp.bfloat16), sharded)
    g = jax.device_put(jnp.ones((tokens, 24), jnp.bfloat16), sharded)
    fn = jax.jit(lambda x, g: network._weight_gradient(x, g, write_out_transpose=True))
    hlo = fn.lower(x, g).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo
    assert f"f32[{tokens // 2},40]" not in hlo and f"f32[40,{tokens // 2}]" not in hlo
    np.testing.assert_array_equal(fn(x, g), np.full((40, 24), tokens, np.float32))


def test_auto_activation_dtype_is_bf16_where_the_hardware_has_bf16_units():
  prefer = network.preferred_activation_dtype
  assert prefer("cpu", {"avx2", "avx512f"}) == "float32"
  assert prefer("cpu", {"avx512f", "avx512_bf16"}) == "bfloat16"  # e.g. AMD Zen 4
  assert prefer("cpu", {"amx_bf16", "amx_tile"}) == "bfloat16"    # Intel Sapphire Rapids
  assert prefer("gpu") == prefer("tpu") == "bfloat16"
  config = network.T5Config(dtype="auto")  # resolved when built, as checkpoints record it
  assert config.dtype == prefer() and config.replace(d_model=8).dtype == config.dtype
  with pytest.raises(ValueError, match="float32, bfloat16, float16 or auto"):
    network.T5Config(dtype="bf16")


def _projected_loss_and_grads(cfg, params, batch, segments, *, generic: bool, monkeypatch):
  """The loss of a random projection of the logits and its gradient for every parameter:
  through XLA:CPU's hand-written VJPs (the CPU attention, `dense`), or, `generic`, through
  the path other backends take (einsums and plain autodiff), run here on the CPU."""
  model = network.Transformer(cfg)
  projection = jax.random.normal(jax.random.PRNGKey(7), (cfg.vocab_size,))

  def loss(p):
    logits = model.apply({"params": p}, *batch, **segments,
                         enable_dropout=cfg.dropout_rate > 0,
                         rngs={"dropout": jax.random.PRNGKey(3)})
    return jnp.sum(jnp.tanh(logits) * projection)

  with monkeypatch.context() as patch:
    if generic:
      patch.setattr(network.jax, "default_backend", lambda: "gpu")
    jaxpr = str(jax.make_jaxpr(loss)(params))
    # Which path ran: the CPU one is custom VJPs (attention and dense), the generic none.
    assert ("custom_vjp_call" in jaxpr) == (not generic)
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("dropout_rate,packed", [(0.0, False), (0.3, False), (0.0, True)])
def test_cpu_attention_gives_the_einsum_paths_loss_and_every_gradient(monkeypatch,
                                                                      dropout_rate, packed):
  """float32: the CPU attention (its softmax gradient written out, the position-bias
  gradient a dot with ones, nn.Dropout's own mask) and the weight gradients left in float32
  give the generic path's loss and gradients within float32 rounding, with padding, with
  dropout 0.3, with packed rows; with bf16 activations its gradients are about as close to
  the float32 ones as the generic path's."""
  if jax.default_backend() != "cpu":
    pytest.skip("the hand-written VJPs are XLA:CPU's")
  cfg = TINY.replace(dropout_rate=dropout_rate, attention_implementation="xla")
  params = nn.unbox(network.init_params(cfg, jax.random.PRNGKey(0)))
  rs = np.random.RandomState(0)
  enc = jnp.asarray(rs.randint(2, 64, (3, 11)) * (np.arange(11) < [[11], [7], [4]]))
  dec_targets = jnp.asarray(rs.randint(2, 64, (3, 6)) * (np.arange(6) < [[6], [3], [5]]))
  dec_inputs = jnp.concatenate([jnp.zeros((3, 1), dec_targets.dtype), dec_targets[:, :-1]], 1)
  segments = {}
  if packed:  # row 0 holds two examples: 6 + 5 inputs, 4 + 2 targets
    segments = dict(
        encoder_segment_ids=jnp.asarray(np.where(enc > 0, 1, 0)).at[0, 6:].set(2),
        decoder_segment_ids=jnp.asarray(np.where(dec_targets > 0, 1, 0)).at[0, 4:].set(2))
    dec_inputs = dec_inputs.at[0, 4].set(0)  # the second example's BOS
  batch = (enc, dec_inputs, dec_targets)
  run = functools.partial(_projected_loss_and_grads, batch=batch, segments=segments,
                          monkeypatch=monkeypatch)
  loss, grads = run(cfg, params, generic=False)
  ref_loss, ref_grads = run(cfg, params, generic=True)
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-6)
  flat, ref_flat = (jax.tree_util.tree_leaves_with_path(g) for g in (grads, ref_grads))
  for (path, g), (_, r) in zip(flat, ref_flat):
    assert g.dtype == jnp.float32, path
    scale = float(jnp.abs(r).max())
    assert scale > 0, path  # every parameter (both position biases too) gets a gradient
    np.testing.assert_allclose(g, r, atol=2e-5 * scale, err_msg=jax.tree_util.keystr(path))
  # bf16 activations: the CPU path's gradients are as near the float32 ones as the generic
  # path's (relative error of each parameter's gradient, about 2% for both here).
  bf16 = cfg.replace(dtype="bfloat16")
  errors = {}
  for generic in (False, True):
    _, g16 = run(bf16, params, generic=generic)
    errors[generic] = [float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
                       for a, b in zip(jax.tree_util.tree_leaves(g16),
                                       jax.tree_util.tree_leaves(ref_grads))]
  assert max(errors[False]) < 0.06, max(errors[False])
  assert np.mean(errors[False]) <= 1.05 * np.mean(errors[True]), (
      np.mean(errors[False]), np.mean(errors[True]))


def test_cpu_dense_leaves_float32_weight_gradients_in_float32():
  """bf16 activations, float32 weights: the weight gradient is the float32 product of the
  bf16 operands, not rounded to bf16."""
  if jax.default_backend() != "cpu":
    pytest.skip("the hand-written VJP is XLA:CPU's")
  rs = np.random.RandomState(1)
  x = jnp.asarray(rs.randn(4, 16), jnp.bfloat16)
  w = jnp.asarray(rs.randn(16, 8), jnp.float32)
  g = jnp.asarray(rs.randn(4, 8), jnp.bfloat16)
  y, vjp = jax.vjp(network.dense, x, w)
  assert y.dtype == jnp.bfloat16
  gx, gw = vjp(g)
  assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.float32
  x32, g32 = np.asarray(x, np.float32), np.asarray(g, np.float32)
  np.testing.assert_allclose(gw, x32.T @ g32, rtol=1e-6, atol=1e-6)  # not bf16-rounded
  assert not np.array_equal(gw, np.asarray(gw.astype(jnp.bfloat16), np.float32))
