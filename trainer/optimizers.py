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
              weight_decay_rate: Optional[float] = None) -> optax.GradientTransformation:
  """Adafactor with T5X's defaults (no momentum, update clipping 1.0, parameter scale)."""
  return optax.adafactor(
      learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate, eps=epsilon1, factored=factored)


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
