"""Schedules, Adafactor (T5X defaults), AdamW and gradient clipping against hand-computed values."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recast.trainer import optimizers


def _values(schedule, steps):
  return np.array([float(schedule(jnp.asarray(s))) for s in steps])


def test_rsqrt_schedule_is_t5x_pretraining_default():
  schedule = optimizers.rsqrt_schedule()
  np.testing.assert_allclose(_values(schedule, [0, 5000, 10000, 40000, 250000]),
                             [0.01, 0.01, 0.01, 0.005, 0.002], rtol=1e-6)


def test_constant_schedule():
  np.testing.assert_allclose(_values(optimizers.constant_schedule(), [0, 7, 10 ** 6]), 1e-3)


def test_linear_warmup_then_cosine_decay():
  schedule = optimizers.linear_warmup_schedule(peak_learning_rate=1.0, warmup_steps=100,
                                               total_steps=300, end_learning_rate=0.1)
  values = _values(schedule, [0, 50, 100, 200, 300, 1000])
  np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-6)


def test_linear_warmup_then_linear_decay():
  schedule = optimizers.linear_warmup_schedule(peak_learning_rate=2.0, warmup_steps=10,
                                               total_steps=30, decay="linear")
  np.testing.assert_allclose(_values(schedule, [5, 10, 15, 20, 30, 31]),
                             [1.0, 2.0, 1.5, 1.0, 0.0, 0.0], atol=1e-6)


def test_bad_schedule_settings_are_named():
  with pytest.raises(ValueError, match="decay"):
    optimizers.linear_warmup_schedule(decay="step")
  with pytest.raises(ValueError, match="total_steps"):
    optimizers.linear_warmup_schedule(warmup_steps=10, total_steps=10)


def _step(optimizer, params, grads, steps=1):
  state = optimizer.init(params)
  for _ in range(steps):
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_adafactor_unfactored_first_step():
  # Step 0: decay 1 - 1**-0.8 = 0, so v = g^2 and the update is sign(g) (RMS 1, not
  # clipped), scaled by the learning rate and by max(RMS(param), 1e-3).
  p = jnp.array([0.5, -2.0, 1.0, 0.0])
  g = jnp.array([0.1, -3.0, 0.0001, 2.0])
  opt = optimizers.create_optimizer(learning_rate_schedule=0.01)
  new, _ = _step(opt, {"w": p}, {"w": g})
  rms = np.sqrt(np.mean(np.square(p)))
  np.testing.assert_allclose(new["w"], p - 0.01 * rms * np.sign(g), rtol=1e-5)


def test_adafactor_factored_step_and_update_clipping():
  rs = np.random.RandomState(0)
  p = rs.randn(128, 256).astype(np.float32)
  g = rs.randn(128, 256).astype(np.float32) * np.linspace(0.1, 3, 256)
  opt = optimizers.create_optimizer(learning_rate_schedule=0.01)
  new, state = _step(opt, {"w": jnp.asarray(p)}, {"w": jnp.asarray(g)})
  factored = state[0]
  assert factored.v_row["w"].shape == (128,) and factored.v_col["w"].shape == (256,)
  g2 = g.astype(np.float64) ** 2 + 1e-30
  v_row, v_col = g2.mean(1), g2.mean(0)
  v = np.outer(v_row, v_col) / v_row.mean()
  update = g / np.sqrt(v)
  update /= max(1.0, np.sqrt(np.mean(update ** 2)))  # clipping_threshold 1.0
  expected = p - 0.01 * np.sqrt(np.mean(p.astype(np.float64) ** 2)) * update
  np.testing.assert_allclose(new["w"], expected, rtol=1e-4, atol=1e-6)


def test_adafactor_below_min_dim_is_not_factored():
  opt = optimizers.create_optimizer(learning_rate_schedule=0.01)
  _, state = _step(opt, {"w": jnp.ones((127, 256))}, {"w": jnp.ones((127, 256))})
  assert state[0].v["w"].shape == (127, 256)


def test_adamw_two_steps_match_formula():
  p = np.array([1.0, -2.0, 3.0], np.float32)
  g = np.array([0.5, 0.1, -1.0], np.float32)
  lr, wd, b1, b2, eps = 0.1, 0.01, 0.9, 0.999, 1e-8
  opt = optimizers.create_optimizer(
      optimizer_def=lambda s: optimizers.adamw(s, weight_decay=wd),
      learning_rate_schedule=lr)
  new, _ = _step(opt, {"w": jnp.asarray(p)}, {"w": jnp.asarray(g)}, steps=2)
  x, m, v = p.astype(np.float64), 0.0, 0.0
  for t in (1, 2):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g ** 2
    x = x - lr * ((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * x)
  np.testing.assert_allclose(new["w"], x, rtol=1e-5)


def test_global_norm_clipping():
  # SGD-like check through AdamW's first step is sign-only, so use a custom optimizer_def.
  opt = optimizers.create_optimizer(optimizer_def=optax.sgd, learning_rate_schedule=1.0,
                                    max_grad_norm=1.0)
  g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # norm 5
  new, _ = _step(opt, {"a": jnp.zeros(2), "b": jnp.zeros(1)}, g)
  np.testing.assert_allclose(new["a"], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(new["b"], [-0.8], rtol=1e-6)


def test_schedule_drives_the_update_and_is_exposed():
  opt = optimizers.create_optimizer(
      optimizer_def=optax.sgd,
      learning_rate_schedule=optimizers.linear_warmup_schedule(
          peak_learning_rate=1.0, warmup_steps=4, total_steps=8, decay="linear"))
  params, state = {"w": jnp.zeros(())}, None
  state = opt.init(params)
  for _ in range(3):  # rates 0, 0.25, 0.5 at steps 0, 1, 2
    updates, state = opt.update({"w": jnp.ones(())}, state, params)
    params = optax.apply_updates(params, updates)
  assert float(params["w"]) == pytest.approx(-0.75)
  assert float(opt.learning_rate_schedule(3)) == pytest.approx(0.75)


def test_default_is_adafactor_with_rsqrt_and_gin_selects_adamw():
  default = optimizers.create_optimizer()
  assert float(default.learning_rate_schedule(0)) == pytest.approx(0.01)
  assert type(default.init({"w": jnp.ones(3)})[0]).__name__ == "FactoredState"
  gin.clear_config()
  try:
    gin.parse_config("""
        from recast.trainer import optimizers
        optimizers.create_optimizer.optimizer_def = @optimizers.adamw
        optimizers.create_optimizer.learning_rate_schedule = @optimizers.constant_schedule()
        optimizers.constant_schedule.base_learning_rate = 0.5
        optimizers.adamw.weight_decay = 0.1
    """)
    opt = optimizers.create_optimizer()
  finally:
    gin.clear_config()
  assert float(opt.learning_rate_schedule(123)) == pytest.approx(0.5)
  new, _ = _step(opt, {"w": jnp.array([2.0])}, {"w": jnp.array([0.0])})
  np.testing.assert_allclose(new["w"], [2.0 - 0.5 * 0.1 * 2.0], rtol=1e-6)  # decay only


def _tree_of_same_shapes(seed):
  """Two layers of same-named, same-shaped tensors (factored and not), plus loners."""
  rs = np.random.RandomState(seed)
  draw = lambda *shape: jnp.asarray(rs.randn(*shape).astype(np.float32))
  layer = lambda: {"query": draw(128, 160), "out": draw(160, 128), "wi": draw(8, 130),
                   "scale": draw(16)}
  return {"layers_0": layer(), "layers_1": layer(), "layers_2": layer(),
          "embedding": draw(300, 128), "rel": draw(32, 4)}


@pytest.mark.parametrize("settings", [
    dict(learning_rate_schedule=0.01),
    dict(learning_rate_schedule=optimizers.rsqrt_schedule(warmup_steps=2), max_grad_norm=5.0),
])
def test_stacked_adafactor_equals_optax_over_steps(settings):
  stacked = optimizers.create_optimizer(
      optimizer_def=lambda s: optimizers.adafactor(s, stacked=True), **settings)
  reference = optimizers.create_optimizer(
      optimizer_def=lambda s: optimizers.adafactor(s, stacked=False), **settings)
  params = _tree_of_same_shapes(0)
  states = {"stacked": stacked.init(params), "reference": reference.init(params)}
  assert (jax.tree_util.tree_structure(states["stacked"])
          == jax.tree_util.tree_structure(states["reference"]))
  news = {name: params for name in states}
  update = {name: jax.jit(opt.update) for name, opt in (("stacked", stacked),
                                                         ("reference", reference))}
  for step in range(4):
    grads = jax.tree_util.tree_map(lambda x: x * (step + 1.0),
                                   _tree_of_same_shapes(step + 1))
    for name in states:
      updates, states[name] = update[name](grads, states[name], news[name])
      news[name] = optax.apply_updates(news[name], updates)
    flat_a = jax.tree_util.tree_leaves(news["stacked"])
    flat_b = jax.tree_util.tree_leaves(news["reference"])
    for a, b in zip(flat_a, flat_b):
      np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    for a, b in zip(jax.tree_util.tree_leaves(states["stacked"]),
                    jax.tree_util.tree_leaves(states["reference"])):
      np.testing.assert_allclose(a, b, rtol=2e-6, atol=0)
  assert float(jnp.max(jnp.abs(news["stacked"]["layers_1"]["query"] - params["layers_1"]["query"]))) > 0
