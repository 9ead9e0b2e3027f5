"""Optimizers and learning-rate schedules, gin-configurable, with T5X's defaults.

Run gin files choose them (`create_optimizer.optimizer_def = @adamw`,
`create_optimizer.learning_rate_schedule = @rsqrt_schedule()`); the train step reads the
schedule back to log the learning rate of every step.

Gotchas:
- Adafactor factors the two largest dimensions of a parameter when both are at least
  `min_dim_size_to_factor` (128); smaller parameters (and every parameter of a tiny model)
  keep a full second-moment estimate. T5X chooses the factored dimensions the same way.
- The factored statistics (v_row, v_col) have shapes of their own; `trainer.partitioning`
  replicates them (they hold sum-of-dims values, not product-of-dims) while the full-size
  states (v, AdamW's mu and nu) take their parameter's sharding.
- The schedule is evaluated at optax's own step count, which starts at 0 with the optimizer
  state: fresh optimizer state means a fresh schedule (as a new `TrainState` has step 0).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

Schedule = Callable[[jax.Array], jax.Array]
OptimizerDef = Callable[..., optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation and the learning-rate schedule inside it.

  `learning_rate_schedule(step)` is the rate the update of `step` uses (step counts from 0).
  """

  tx: optax.GradientTransformation
  learning_rate_schedule: Schedule

  def init(self, params):
    return self.tx.init(params)

  def update(self, grads, opt_state, params):
    return self.tx.update(grads, opt_state, params)


@gin.configurable
def constant_schedule(*, base_learning_rate: float = 1e-3) -> Schedule:
  """T5X's fine-tuning default: a constant 1e-3."""
  return optax.constant_schedule(base_learning_rate)


@gin.configurable
def rsqrt_schedule(*, base_learning_rate: float = 1.0, warmup_steps: int = 10000) -> Schedule:
  """T5X's pretraining default: base / sqrt(max(step, warmup_steps)).

  Constant at base / sqrt(warmup_steps) for the first `warmup_steps` (0.01 with the
  defaults), then decaying as 1/sqrt(step).
  """
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return base_learning_rate * jax.lax.rsqrt(jnp.maximum(step, float(warmup_steps)))
  return schedule


@gin.configurable
def linear_warmup_schedule(*, peak_learning_rate: float = 1e-3, warmup_steps: int = 1000,
                           total_steps: int = 100000, decay: str = "cosine",
                           end_learning_rate: float = 0.0) -> Schedule:
  """Linear warmup from 0 to `peak_learning_rate` over `warmup_steps`, then a cosine or
  linear decay reaching `end_learning_rate` at `total_steps` (and staying there)."""
  if decay not in ("cosine", "linear"):
    raise ValueError(f"linear_warmup_schedule.decay={decay!r}: use 'cosine' or 'linear'")
  if total_steps <= warmup_steps:
    raise ValueError(f"linear_warmup_schedule: total_steps ({total_steps}) must exceed "
                     f"warmup_steps ({warmup_steps})")
  warmup = optax.linear_schedule(0.0, peak_learning_rate, warmup_steps)
  decay_steps = total_steps - warmup_steps
  if decay == "cosine":
    after = optax.cosine_decay_schedule(peak_learning_rate, decay_steps,
                                        alpha=end_learning_rate / peak_learning_rate)
  else:
    after = optax.linear_schedule(peak_learning_rate, end_learning_rate, decay_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


@gin.configurable
def adafactor(learning_rate: Schedule, *, decay_rate: float = 0.8,
              clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True, min_dim_size_to_factor: int = 128,
              epsilon1: float = 1e-30, factored: bool = True, momentum: Optional[float] = None,
              weight_decay_rate: Optional[float] = None,
              stacked: bool = True) -> optax.GradientTransformation:
  """Adafactor with T5X's defaults (no momentum, update clipping 1.0, parameter scale).

  stacked: update same-shaped parameters together (`stacked_adafactor`: one vmapped
    update per group, ~a dozen for a T5, instead of one per tensor); same state and
    numbers as optax's. Used without momentum and weight decay; with either, and with
    `stacked=False`, this is `optax.adafactor` itself.
  """
  reference = optax.adafactor(
      learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate, eps=epsilon1, factored=factored)
  if not stacked or momentum is not None or weight_decay_rate is not None:
    return reference
  return stacked_adafactor(
      learning_rate, reference=reference, decay_rate=decay_rate,
      clipping_threshold=clipping_threshold,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      min_dim_size_to_factor=min_dim_size_to_factor, epsilon1=epsilon1, factored=factored)


def _factored_dims(shape: tuple, factored: bool, min_dim_size_to_factor: int):
  """optax's choice: the two largest axes, if the second largest has min_dim_size_to_factor."""
  if not factored or len(shape) < 2:
    return None
  sorted_dims = np.argsort(shape)
  if shape[sorted_dims[-2]] < min_dim_size_to_factor:
    return None
  return int(sorted_dims[-2]), int(sorted_dims[-1])


def _leaf_name(path) -> str:
  last = path[-1] if path else None
  for attribute in ("key", "name", "idx"):
    if hasattr(last, attribute):
      return str(getattr(last, attribute))
  return str(last)


def stacked_adafactor(learning_rate: Union[Schedule, float, None], *,
                      reference: optax.GradientTransformation, decay_rate: float,
                      clipping_threshold: Optional[float], multiply_by_parameter_scale: bool,
                      min_dim_size_to_factor: int, epsilon1: float,
                      factored: bool) -> optax.GradientTransformation:
  """`optax.adafactor` (without momentum or weight decay) computed group by group.

  Parameters with the same shape, dtype and name (the last key of their path:
  `query`, `wi_0`, `scale`, ...; one name has one sharding in `trainer.network`, so a
  group never mixes layouts) are stacked and updated by one `jax.vmap`ped copy of
  Adafactor's per-tensor update, then unstacked. XLA then emits each reduction and
  elementwise kernel once per group instead of once per tensor (282 tensors, 11 groups
  for T5.1.1-base). The state is `reference.init`'s, leaf for leaf (checkpoints and
  `trainer.partitioning` see no difference), and every operation is optax's own, in its
  order, on the same values: the results agree to float32 rounding (reductions may
  sum in another order).
  """
  has_clip = clipping_threshold is not None
  schedule_index = (2 if has_clip else 1) if callable(learning_rate) else None

  def leaf_update(grad, v_row, v_col, v, param, decay_t, step_size):
    dtype = param.dtype
    # The unused slots hold init's zeros((1,)); passing them through (optax writes fresh
    # zeros) keeps their values and lets a donated state keep its buffers (no copies).
    new_v_row, new_v_col, new_v = v_row, v_col, v
    dims = _factored_dims(param.shape, factored, min_dim_size_to_factor)
    grad_sqr = grad * grad + epsilon1
    if dims is not None:
      d1, d0 = dims
      new_v_row = decay_t * v_row + (1.0 - decay_t) * jnp.mean(grad_sqr, axis=d0)
      new_v_col = decay_t * v_col + (1.0 - decay_t) * jnp.mean(grad_sqr, axis=d1)
      new_v_row, new_v_col = new_v_row.astype(dtype), new_v_col.astype(dtype)
      reduced_d1 = d1 - 1 if d1 > d0 else d1
      row_col_mean = jnp.mean(new_v_row, axis=reduced_d1, keepdims=True)
      row_factor = (new_v_row / row_col_mean) ** -0.5
      col_factor = new_v_col ** -0.5
      update = (grad * jnp.expand_dims(row_factor, axis=d0)
                * jnp.expand_dims(col_factor, axis=d1))
    else:
      new_v = (decay_t * v + (1.0 - decay_t) * grad_sqr).astype(dtype)
      update = grad * new_v ** -0.5
    if has_clip:
      update = update / jnp.maximum(
          1.0, jnp.sqrt(jnp.mean(update * update)) / clipping_threshold)
    if step_size is not None:
      update = jnp.array(step_size, dtype=update.dtype) * update
    if multiply_by_parameter_scale:
      update = update * optax.safe_root_mean_squares(param, 1e-3)
    return -1 * update, new_v_row, new_v_col, new_v

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("stacked_adafactor.update needs params (parameter scale)")
    factored_state = state[0]
    decay_t = 1.0 - jnp.array(factored_state.count + 1, jnp.float32) ** (-decay_rate)
    if schedule_index is not None:
      step_size = learning_rate(state[schedule_index].count)
    else:
      step_size = learning_rate
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    columns = [jax.tree_util.tree_leaves(t) for t in (
        grads, factored_state.v_row, factored_state.v_col, factored_state.v)]
    columns.append([leaf for _, leaf in path_leaves])
    groups: dict[tuple, list[int]] = {}
    for i, (path, leaf) in enumerate(path_leaves):
      groups.setdefault((_leaf_name(path), leaf.shape, leaf.dtype), []).append(i)
    outputs: list[list] = [[None] * len(path_leaves) for _ in range(4)]
    for members in groups.values():
      if len(members) == 1:
        i, = members
        results = leaf_update(*(column[i] for column in columns), decay_t, step_size)
        for out, value in zip(outputs, results):
          out[i] = value
        continue
      stacked = [jnp.stack([column[i] for i in members]) for column in columns]
      results = jax.vmap(leaf_update, in_axes=(0, 0, 0, 0, 0, None, None))(
          *stacked, decay_t, step_size)
      for out, value in zip(outputs, results):
        for j, i in enumerate(members):
          out[i] = value[j]
    updates, v_row, v_col, v = (jax.tree_util.tree_unflatten(treedef, out) for out in outputs)
    new_state = list(state)
    new_state[0] = optax.FactoredState(count=optax.safe_increment(factored_state.count),
                                       v_row=v_row, v_col=v_col, v=v)
    if schedule_index is not None:
      new_state[schedule_index] = optax.ScaleByScheduleState(
          count=optax.safe_increment(state[schedule_index].count))
    return updates, tuple(new_state)

  return optax.GradientTransformation(reference.init, update)


@gin.configurable
def adamw(learning_rate: Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0) -> optax.GradientTransformation:
  """AdamW; `weight_decay` is multiplied by the learning rate (optax's convention)."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


@gin.configurable
def create_optimizer(*, optimizer_def: OptimizerDef = adafactor,
                     learning_rate_schedule: Union[Schedule, float, None] = None,
                     max_grad_norm: Optional[float] = None) -> Optimizer:
  """The optimizer of a run.

  Args:
    optimizer_def: `adafactor` or `adamw` (or any f(learning_rate) -> optax transform).
    learning_rate_schedule: a schedule (step -> rate), a constant, or None for T5X's
      pretraining default `rsqrt_schedule()`.
    max_grad_norm: if set, gradients are first clipped to this global norm.
  """
  if learning_rate_schedule is None:
    learning_rate_schedule = rsqrt_schedule()
  elif not callable(learning_rate_schedule):
    learning_rate_schedule = optax.constant_schedule(float(learning_rate_schedule))
  tx = optimizer_def(learning_rate_schedule)
  if max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
  return Optimizer(tx=tx, learning_rate_schedule=learning_rate_schedule)
