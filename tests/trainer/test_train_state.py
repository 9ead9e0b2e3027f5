"""The train step: same losses on 1 device, 4x1 and 2x2 meshes; microbatching equals one big
batch; the first step's loss equals numpy's; dropout keys; the eval step's sums."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recast.trainer import losses, network, optimizers, partitioning, train_state

TINY = network.T5Config(vocab_size=64, d_model=32, num_heads=2, d_kv=8, d_ff=64,
                        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
STEPS = 4


def _batch(batch_size=8, input_length=12, target_length=8, seed=0):
  """A padded EncDecFeatureConverter-style batch (decoder inputs = targets shifted right)."""
  rs = np.random.RandomState(seed)
  inputs = rs.randint(2, 64, (batch_size, input_length)).astype(np.int32)
  targets = rs.randint(2, 64, (batch_size, target_length)).astype(np.int32)
  for row in range(batch_size):  # ragged lengths with padding
    inputs[row, rs.randint(4, input_length + 1):] = 0
    targets[row, rs.randint(2, target_length + 1):] = 0
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def _packed_batch(batch_size=16, seed=1):
  """Two examples packed per row: segment ids 1 and 2, decoder inputs restart at 0."""
  rs = np.random.RandomState(seed)
  enc_len, dec_len = 12, 8
  out = {k: np.zeros((batch_size, n), np.int32) for k, n in [
      ("encoder_input_tokens", enc_len), ("encoder_segment_ids", enc_len),
      ("encoder_positions", enc_len), ("decoder_target_tokens", dec_len),
      ("decoder_input_tokens", dec_len), ("decoder_segment_ids", dec_len),
      ("decoder_positions", dec_len), ("decoder_loss_weights", dec_len)]}
  for row in range(batch_size):
    e0, d0 = 0, 0
    for seg in (1, 2):
      e, d = rs.randint(2, 6), rs.randint(1, 4)
      out["encoder_input_tokens"][row, e0:e0 + e] = rs.randint(2, 64, e)
      out["encoder_segment_ids"][row, e0:e0 + e] = seg
      out["encoder_positions"][row, e0:e0 + e] = np.arange(e)
      targets = rs.randint(2, 64, d)
      out["decoder_target_tokens"][row, d0:d0 + d] = targets
      out["decoder_input_tokens"][row, d0 + 1:d0 + d] = targets[:-1]
      out["decoder_segment_ids"][row, d0:d0 + d] = seg
      out["decoder_positions"][row, d0:d0 + d] = np.arange(d)
      out["decoder_loss_weights"][row, d0:d0 + d] = 1
      e0, d0 = e0 + e, d0 + d
  return out


def _optimizer():
  # Factoring from 16 exercises Adafactor's factored statistics on the tiny model.
  return optimizers.create_optimizer(
      optimizer_def=lambda s: optimizers.adafactor(s, min_dim_size_to_factor=16),
      learning_rate_schedule=optimizers.linear_warmup_schedule(
          peak_learning_rate=0.04, warmup_steps=2, total_steps=10))


def _run(partitioner, batch, optimizer, steps, **step_kwargs):
  state = train_state.create_train_state(TINY, optimizer, jax.random.PRNGKey(0), partitioner)
  step = train_state.make_train_step(network.Transformer(TINY), optimizer, partitioner,
                                     **step_kwargs)
  sharded = partitioner.shard_batch(batch)
  history = []
  for _ in range(steps):
    state, metrics = step(state, sharded, jax.random.PRNGKey(7))
    history.append(jax.device_get(metrics))
  return state, history, step


@pytest.fixture(scope="module")
def mesh_runs():
  batch = _batch()
  runs = {}
  for name, kwargs in [("one_device", dict(devices=jax.devices()[:1])),
                       ("data_4x1", dict(num_partitions=1)),
                       ("data_model_2x2", dict(num_partitions=2))]:
    partitioner = partitioning.Partitioner(**kwargs)
    runs[name] = (partitioner,) + _run(partitioner, batch, _optimizer(), STEPS,
                                       label_smoothing=0.1)
  return batch, runs


def test_meshes_give_the_loss_of_one_device(mesh_runs):
  _, runs = mesh_runs
  reference = [h["loss"] for h in runs["one_device"][2]]
  assert reference[-1] < reference[0]  # it trains
  for name in ("data_4x1", "data_model_2x2"):
    losses_ = [h["loss"] for h in runs[name][2]]
    np.testing.assert_allclose(losses_, reference, atol=1e-5, rtol=0, err_msg=name)
    ref_params = jax.device_get(runs["one_device"][1].params)
    got = jax.device_get(runs[name][1].params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), got,
                           ref_params)


def test_state_lives_in_its_shardings(mesh_runs):
  _, runs = mesh_runs
  partitioner, state = runs["data_model_2x2"][:2]
  spec = state.params["decoder"]["logits_dense"].sharding.spec
  assert spec == jax.sharding.PartitionSpec(None, "model")
  expected = train_state.abstract_train_state(TINY, _optimizer(), partitioner)
  jax.tree_util.tree_map(
      lambda x, a: (x.shape == a.shape and x.dtype == a.dtype and
                    x.sharding.is_equivalent_to(a.sharding, x.ndim)) or pytest.fail(str(a)),
      state, expected)
  assert int(state.step) == STEPS


def test_first_step_loss_and_metrics_match_numpy(mesh_runs):
  batch, runs = mesh_runs
  params = jax.jit(lambda r: nn.unbox(network.init_params(TINY, r)))(jax.random.PRNGKey(0))
  logits = np.asarray(jax.jit(network.Transformer(TINY).apply)(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch["decoder_target_tokens"]), np.float64)
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  vocab, smoothing = logits.shape[-1], 0.1
  log_z = np.log(np.exp(logits).sum(-1))
  log_probs = logits - log_z[..., None]
  soft = np.full(logits.shape, smoothing / (vocab - 1))
  np.put_along_axis(soft, targets[..., None], 1 - smoothing, -1)
  low = smoothing / (vocab - 1)
  constant = -((1 - smoothing) * np.log(1 - smoothing) + (vocab - 1) * low * np.log(low))
  z = 1e-4 * log_z ** 2
  per_token = -(soft * log_probs).sum(-1) - constant + z
  n = weights.sum()
  first = runs["data_model_2x2"][2][0]
  np.testing.assert_allclose(first["loss"], (per_token * weights).sum() / n, rtol=1e-5)
  np.testing.assert_allclose(first["z_loss"], (z * weights).sum() / n, rtol=1e-4)
  correct = ((logits.argmax(-1) == targets) * weights).sum()
  np.testing.assert_allclose(first["accuracy"], correct / n, rtol=1e-6)
  assert first["num_tokens"] == n
  schedule = _optimizer().learning_rate_schedule
  lrs = [h["learning_rate"] for h in runs["data_model_2x2"][2]]
  np.testing.assert_allclose(lrs, [schedule(s) for s in range(STEPS)], rtol=1e-6)
  assert lrs[0] == 0.0 and lrs[2] == pytest.approx(0.04)
  assert first["grad_norm"] > 0


def test_state_is_donated(mesh_runs):
  _, runs = mesh_runs
  partitioner, state, _, step = runs["data_4x1"]
  batch = partitioner.shard_batch(_batch())
  old = state.params["decoder"]["logits_dense"]
  copy = jax.tree_util.tree_map(jnp.copy, state)
  new_state, _ = step(copy, batch, jax.random.PRNGKey(7))
  assert copy.params["decoder"]["logits_dense"].is_deleted()
  assert not old.is_deleted() and int(new_state.step) == STEPS + 1


def test_keeps_training_to_full_accuracy_on_one_batch(mesh_runs):
  _, runs = mesh_runs
  partitioner, state, history, step = runs["data_4x1"]
  batch = partitioner.shard_batch(_batch())
  state = jax.tree_util.tree_map(jnp.copy, state)
  for _ in range(60):
    state, metrics = step(state, batch, jax.random.PRNGKey(7))
  assert float(metrics["accuracy"]) == 1.0
  assert float(metrics["loss"]) < history[0]["loss"] / 4


@pytest.mark.parametrize("num_microbatches", [2, 4])
def test_microbatches_match_one_big_batch(num_microbatches, microbatch_reference):
  batch, reference, reference_state = microbatch_reference
  state, history, _ = _run(partitioning.Partitioner(), batch, _sgd(), 2,
                           num_microbatches=num_microbatches,
                           loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  for got, want in zip(history, reference):
    for name in ("loss", "z_loss", "accuracy", "num_tokens", "weight_sum", "grad_norm"):
      np.testing.assert_allclose(got[name], want[name], rtol=2e-6, atol=1e-7, err_msg=name)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                         jax.device_get(state.params), jax.device_get(reference_state.params))


def _sgd():
  # Plain SGD: parameter differences are linear in gradient differences.
  return optimizers.create_optimizer(optimizer_def=optax.sgd, learning_rate_schedule=0.5)


@pytest.fixture(scope="module")
def microbatch_reference():
  batch = _packed_batch()
  state, history, _ = _run(partitioning.Partitioner(), batch, _sgd(), 2,
                           loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  # 32 packed segments, each weighted 1 / its length: the factor counts segments.
  assert history[0]["weight_sum"] == pytest.approx(32.0)
  return batch, history, state


def test_microbatches_must_divide_the_batch():
  with pytest.raises(partitioning.PartitioningError, match="num_microbatches"):
    train_state.make_train_step(network.Transformer(TINY), _sgd(), partitioning.Partitioner(),
                                num_microbatches=0)
  partitioner = partitioning.Partitioner()
  step = train_state.make_train_step(network.Transformer(TINY), _sgd(), partitioner,
                                     num_microbatches=4)
  state = train_state.create_train_state(TINY, _sgd(), jax.random.PRNGKey(0), partitioner)
  with pytest.raises(partitioning.PartitioningError, match="multiple of 16"):
    step(state, partitioner.shard_batch(_batch(batch_size=8)), jax.random.PRNGKey(0))


def test_dropout_key_is_folded_per_step():
  cfg = TINY.replace(dropout_rate=0.3, num_encoder_layers=1, num_decoder_layers=1)
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  opt = _sgd()
  step = train_state.make_train_step(network.Transformer(cfg), opt, partitioner)
  batch = partitioner.shard_batch(_batch())
  fresh = lambda: train_state.create_train_state(cfg, opt, jax.random.PRNGKey(0), partitioner)
  loss = lambda state, key: float(step(state, batch, jax.random.PRNGKey(key))[1]["loss"])
  same_a, same_b, other = loss(fresh(), 1), loss(fresh(), 1), loss(fresh(), 2)
  assert same_a == same_b and same_a != other
  # The key of a step is fold_in(rng, step): a later step draws another mask.
  state = fresh()
  later = state.replace(step=jax.device_put(jnp.asarray(5, jnp.int32), state.step.sharding))
  assert loss(later, 1) != same_a


def test_create_train_state_from_given_params():
  partitioner = partitioning.Partitioner(num_partitions=2)
  params = nn.unbox(network.init_params(TINY, jax.random.PRNGKey(3)))
  state = train_state.create_train_state(TINY, _optimizer(), jax.random.PRNGKey(0),
                                         partitioner, params=params)
  assert int(state.step) == 0
  np.testing.assert_array_equal(state.params["token_embedder"]["embedding"],
                                params["token_embedder"]["embedding"])
  assert state.params["token_embedder"]["embedding"].sharding.spec == (
      jax.sharding.PartitionSpec("model", None))


def test_eval_step_sums_teacher_forced_loss():
  partitioner = partitioning.Partitioner(num_partitions=2)
  batch = _batch()
  params = nn.unbox(network.init_params(TINY, jax.random.PRNGKey(0)))
  model = network.Transformer(TINY)
  eval_step = train_state.make_eval_step(model, partitioner)
  got = jax.device_get(eval_step(jax.device_put(params, partitioner.param_shardings(
      network.init_params(TINY, jax.random.PRNGKey(0)))), partitioner.shard_batch(batch)))
  logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"], batch["decoder_target_tokens"])
  loss, _, weight_sum = losses.compute_weighted_cross_entropy(
      logits, jnp.asarray(batch["decoder_target_tokens"]),
      jnp.asarray(batch["decoder_loss_weights"]))
  np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
  assert got["weight_sum"] == float(weight_sum) == batch["decoder_loss_weights"].sum()
  correct = ((np.asarray(logits).argmax(-1) == batch["decoder_target_tokens"]) *
             batch["decoder_loss_weights"]).sum()
  assert got["correct_tokens"] == correct


def test_step_compiled_in_the_background_gives_the_jitted_steps_updates():
  """BackgroundCompiledStep (what `recast train` runs) compiles from the abstract state
  while the state is created, on a 2x2 mesh, and updates exactly as the jitted step."""
  partitioner = partitioning.Partitioner(num_partitions=2)
  optimizer = _optimizer()
  step = train_state.make_train_step(network.Transformer(TINY), optimizer, partitioner)
  batch = partitioner.shard_batch(_batch())
  rng = jax.device_put(jax.random.PRNGKey(7), partitioner.replicated)
  background = train_state.BackgroundCompiledStep(
      step, train_state.abstract_train_state(TINY, optimizer, partitioner), batch, rng)
  make_state = lambda: train_state.create_train_state(TINY, optimizer, jax.random.PRNGKey(0),
                                                      partitioner)
  a, b = make_state(), make_state()
  for _ in range(3):
    a, metrics_a = background(a, batch, rng)
    b, metrics_b = step(b, batch, rng)
  assert background.compiled  # the ahead-of-time executable ran, not the jitted step
  np.testing.assert_array_equal(metrics_a["loss"], metrics_b["loss"])
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
    assert x.sharding == y.sharding


def test_background_compile_failure_surfaces_from_the_jitted_step():
  step = jax.jit(lambda state, batch, rng: (state, {"loss": state + batch["x"]}))
  # Shapes that can't be traced: the background compile fails quietly, the call then goes
  # through the jitted step and raises its own error where it is called.
  bad = train_state.BackgroundCompiledStep(step, jnp.zeros(2), {"x": jnp.zeros(3)}, None)
  assert not bad.compiled
  with pytest.raises(TypeError, match="add got incompatible shapes"):
    bad(jnp.zeros(2), {"x": jnp.zeros(3)}, None)
