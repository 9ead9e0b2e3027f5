"""The train state and the one jitted train step (and the teacher-forced eval step).

`recast.trainer.train` owns the loop (input, checkpoints, logs); this module owns what happens to
one global batch: forward, loss (`trainer.losses`), gradient accumulation over
`num_microbatches`, optimizer update (`trainer.optimizers`), all sharded by a
`trainer.partitioning.Partitioner`.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from recast.trainer import losses, network
from recast.trainer.optimizers import Optimizer
from recast.trainer.partitioning import Partitioner, PartitioningError

Array = jax.Array
Batch = Mapping[str, Array]
TrainStep = Callable[["TrainState", Batch, Array], tuple["TrainState", dict[str, Array]]]
EvalStep = Callable[[Any, Batch], dict[str, Array]]
# (params, batch, dropout_rng, frozen) -> (loss, summable metrics); see make_train_step.
LossFn = Callable[[Any, Batch, Array, Any], tuple[Array, dict[str, Array]]]


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar (updates done); params: unboxed parameter tree; opt_state: optax."""

  step: Array
  params: Any
  opt_state: Any


def _abstract_boxed_params(config: network.T5Config):
  return jax.eval_shape(lambda rng: network.init_params(config, rng), jax.random.PRNGKey(0))


def train_state_shardings(config: network.T5Config, optimizer: Optimizer,
                          partitioner: Partitioner) -> TrainState:
  """A TrainState of NamedShardings: where every array of the state lives."""
  boxed = _abstract_boxed_params(config)
  abstract_params = nn.unbox(boxed)
  params_shardings = partitioner.param_shardings(boxed)
  abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
  return TrainState(
      step=partitioner.replicated, params=params_shardings,
      opt_state=partitioner.opt_state_shardings(abstract_opt_state, params_shardings,
                                                abstract_params))


def abstract_train_state(config: network.T5Config, optimizer: Optimizer,
                         partitioner: Partitioner) -> TrainState:
  """A TrainState of jax.ShapeDtypeStructs with shardings (what orbax restores into)."""
  shardings = train_state_shardings(config, optimizer, partitioner)
  boxed = _abstract_boxed_params(config)
  abstract_params = nn.unbox(boxed)
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                      opt_state=jax.eval_shape(optimizer.init, abstract_params))
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


@functools.lru_cache(maxsize=16)
def _state_initializers(config: network.T5Config, optimizer: Optimizer,
                        partitioner: Partitioner):
  """Jitted (params, opt_state) initialisers, cached so that repeated states (resume,
  tests, sweeps in one process) compile once."""
  shardings = train_state_shardings(config, optimizer, partitioner)
  init_params = jax.jit(lambda r: nn.unbox(network.init_params(config, r)),
                        out_shardings=shardings.params)
  init_opt = jax.jit(optimizer.init, out_shardings=shardings.opt_state)
  return shardings, init_params, init_opt


def create_train_state(config: network.T5Config, optimizer: Optimizer, rng: Array,
                       partitioner: Partitioner, *, params: Any = None) -> TrainState:
  """A step-0 TrainState, built directly in its shardings (never whole on one device).

  Args:
    config: the model; vocab_size must be set.
    optimizer: its state is initialised fresh.
    rng: parameter-initialisation key (ignored when `params` is given).
    partitioner: the mesh.
    params: optional unboxed parameters (e.g. from INITIAL_CHECKPOINT_PATH) to start from.
  """
  shardings, init_params, init_opt = _state_initializers(config, optimizer, partitioner)
  if params is None:
    with partitioner.activation_context():
      params = init_params(rng)
  else:
    params = jax.device_put(params, shardings.params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  return TrainState(step=step, params=params, opt_state=init_opt(params))


class BackgroundCompiledStep:
  """A jitted step whose XLA compilation starts at construction, in a thread, so that it
  overlaps whatever the caller does next (initialising or restoring the state, building
  the input pipeline and the evaluator); the first call waits for it.

  XLA compiles with Python's lock released, so on a GPU the train step's compilation
  (~45 s for T5.1.1-base) runs beside the parameter initialisation's (~2 minutes on a cold
  cache). `abstract_args` are the call's arguments or jax.ShapeDtypeStructs with their
  shardings; later calls must match them (as a train loop's do). `compiler_options`: XLA
  options for this compilation (`Lowered.compile`). If compiling fails the calls go to
  the jitted step, which raises the error in the caller's thread.
  """

  def __init__(self, step: Callable, *abstract_args: Any,
               compiler_options: Optional[Mapping[str, Any]] = None):
    self._step = step
    self._compiled: Optional[Callable] = None
    self._ready: Optional[Callable] = None
    self.compile_seconds: Optional[float] = None  # set when compilation has finished
    self.error: Optional[Exception] = None  # why it failed, if it did
    self._thread = threading.Thread(target=self._compile, args=abstract_args,
                                    kwargs=dict(compiler_options=compiler_options),
                                    daemon=True, name="recast-compile")
    self._thread.start()

  def _compile(self, *abstract_args, compiler_options):
    start = time.perf_counter()
    structs = jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
        else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_args)
    try:
      self._compiled = self._step.lower(*structs).compile(compiler_options)
    except Exception as e:  # noqa: BLE001  (the jitted step raises it where it is called)
      self._compiled, self.error = None, e
    self.compile_seconds = time.perf_counter() - start

  @property
  def compiled(self) -> bool:
    """Whether calls run the executable compiled in the background (waits for it)."""
    self._thread.join()
    return self._compiled is not None

  def __call__(self, *args):
    if self._ready is None:
      self._ready = self._compiled if self.compiled else self._step
    return self._ready(*args)


def model_inputs(batch: Batch) -> dict[str, Array]:
  """The features `network.Transformer.__call__` takes, out of a batch of
  seqio.EncDecFeatureConverter features (loss weights and the rest left out)."""
  names = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
           "encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
           "decoder_positions")
  return {name: batch[name] for name in names if name in batch}


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """[b, ...] -> [num_microbatches, b / num_microbatches, ...], microbatch i = rows i::m, so
  each data-parallel shard contributes rows to every microbatch (no resharding)."""
  def split(x):
    if x.ndim == 0:
      return jnp.broadcast_to(x, (num_microbatches,))
    b = x.shape[0]
    x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return {name: split(x) for name, x in batch.items()}


def _check_microbatches(batch_size: int, num_microbatches: int, num_data_shards: int):
  if batch_size % (num_microbatches * num_data_shards):
    raise PartitioningError(
        f"a batch of {batch_size} rows does not split into num_microbatches="
        f"{num_microbatches} x {num_data_shards} data-parallel devices; use a BATCH_SIZE "
        f"that is a multiple of {num_microbatches * num_data_shards}")


def make_train_step(model: network.Transformer, optimizer: Optimizer,
                    partitioner: Partitioner, *, num_microbatches: int = 1,
                    z_loss: float = 1e-4, label_smoothing: float = 0.0,
                    loss_normalizing_factor: losses.LossNormalizingFactor = (
                        losses.SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS),
                    loss_fn: Optional[LossFn] = None, frozen_shardings: Any = None,
                    ) -> TrainStep:
  """One jitted `train_step(state, batch, rng) -> (new_state, metrics)`; state is donated.

  Args:
    model: the Transformer (dropout follows its config's dropout_rate).
    optimizer: from `trainer.optimizers.create_optimizer`.
    partitioner: the mesh; `batch` arrays should be sharded by `partitioner.shard_batch`.
    num_microbatches: gradient accumulation; the global batch must divide into
      num_microbatches * data-parallel size rows. Same update as one big batch.
    z_loss, label_smoothing, loss_normalizing_factor: see `trainer.losses`.
    loss_fn: replaces the cross-entropy loss (distillation does):
      `loss_fn(params, batch, dropout_rng, frozen) -> (loss, metrics)`, traced in the
      partitioner's activation context; its metrics are sums, at least compute_loss's.
    frozen_shardings: the shardings of `frozen`, then a 4th argument of the step
      (`train_step(state, batch, rng, frozen)`, e.g. a teacher's parameters), handed to
      every loss_fn call; never donated, never updated.

  The batch is seqio EncDecFeatureConverter output, int32 [batch, length]:
  encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights,
  and for packed batches encoder/decoder_segment_ids and _positions. `rng` is a key
  shared by all steps; the dropout key of a step is fold_in(rng, step). Pass states whose
  arrays sit in their shardings (from `create_train_state`, the step itself, or a restore
  into `abstract_train_state`): an uncommitted array (e.g. `jnp.asarray(5)` as step)
  makes jit compile the step again.

  Metrics (float32 scalars): loss, z_loss, cross_ent_loss, accuracy, correct_tokens,
  num_tokens, weight_sum, learning_rate (the rate this update used), grad_norm (global
  norm before any clipping), param_norm.
  """
  if num_microbatches < 1:
    raise PartitioningError(f"num_microbatches must be >= 1, got {num_microbatches}")
  config = model.config
  shardings = train_state_shardings(config, optimizer, partitioner)
  loss_kwargs = dict(z_loss=z_loss, label_smoothing=label_smoothing)

  def cross_entropy_loss_fn(params, batch, dropout_rng, frozen):
    del frozen
    logits = model.apply({"params": params}, **model_inputs(batch),
                         enable_dropout=config.dropout_rate > 0,
                         rngs={"dropout": dropout_rng})
    return losses.compute_loss(logits, batch, **loss_kwargs)

  def traced_loss_fn(params, batch, dropout_rng, frozen):
    with partitioner.activation_context():
      return (loss_fn or cross_entropy_loss_fn)(params, batch, dropout_rng, frozen)

  grad_fn = jax.value_and_grad(traced_loss_fn, has_aux=True)

  def constrain(grads):
    return jax.lax.with_sharding_constraint(grads, shardings.params)

  def train_step(state: TrainState, batch: Batch, rng: Array, frozen: Any = None):
    dropout_rng = jax.random.fold_in(rng, state.step)
    factor, weights = losses.get_loss_normalizing_factor_and_weights(
        loss_normalizing_factor, batch)
    if factor is None:  # Summed loss: a factor of 1 keeps the precomputed-weights path.
      factor = 1.0
    batch = dict(batch, decoder_loss_weights=weights,
                 loss_normalizing_factor=jnp.asarray(factor, jnp.float32))
    _check_microbatches(batch["decoder_target_tokens"].shape[0], num_microbatches,
                        partitioner.num_data_shards)
    if num_microbatches == 1:
      (_, metrics), grads = grad_fn(state.params, batch, dropout_rng, frozen)
    else:
      micro = _split_microbatches(batch, num_microbatches)
      micro = {name: x if x.ndim == 1 else jax.lax.with_sharding_constraint(
          x, NamedSharding(partitioner.mesh, PartitionSpec(None, "data")))
               for name, x in micro.items()}

      def accumulate(carry, inputs):
        grads_sum, metrics_sum = carry
        index, mb = inputs
        (_, metrics), grads = grad_fn(state.params, mb, jax.random.fold_in(dropout_rng, index),
                                      frozen)
        grads_sum = constrain(jax.tree_util.tree_map(jnp.add, grads_sum, grads))
        metrics_sum = jax.tree_util.tree_map(jnp.add, metrics_sum, metrics)
        return (grads_sum, metrics_sum), None

      zero_grads = constrain(jax.tree_util.tree_map(jnp.zeros_like, state.params))
      metric_shapes = jax.eval_shape(
          lambda mb: grad_fn(state.params, mb, dropout_rng, frozen)[0][1],
          jax.tree_util.tree_map(lambda x: x[0], micro))
      zero_metrics = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                            metric_shapes)
      (grads, metrics), _ = jax.lax.scan(
          accumulate, (zero_grads, zero_metrics),
          (jnp.arange(num_microbatches), micro))
    grads = constrain(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics["accuracy"] = metrics["correct_tokens"] / jnp.maximum(metrics["num_tokens"], 1.0)
    metrics["learning_rate"] = jnp.asarray(
        optimizer.learning_rate_schedule(state.step), jnp.float32)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  in_shardings = (shardings, partitioner.batch_sharding, partitioner.replicated)
  if frozen_shardings is not None:
    in_shardings += (frozen_shardings,)
  return jax.jit(train_step, in_shardings=in_shardings,
                 out_shardings=(shardings, partitioner.replicated), donate_argnums=(0,))


def make_eval_step(model: network.Transformer, partitioner: Partitioner, *,
                   z_loss: float = 0.0) -> EvalStep:
  """One jitted teacher-forced `eval_step(params, batch) -> metrics` (no dropout).

  Metrics (float32 scalars, sums over the batch so batches add up): loss (summed
  weighted cross entropy, nats; with z_loss if set), weight_sum (sum of
  decoder_loss_weights), correct_tokens (argmax == target where the weight is nonzero).
  Per-token loss = loss / weight_sum; accuracy = correct_tokens / weight_sum.
  """
  config = model.config
  params_shardings = partitioner.param_shardings(_abstract_boxed_params(config))

  def eval_step(params, batch: Batch):
    with partitioner.activation_context():
      logits = model.apply({"params": params}, **model_inputs(batch), enable_dropout=False)
    _, metrics = losses.compute_loss(logits, batch, z_loss=z_loss,
                                     loss_normalizing_factor=None)
    return {"loss": metrics["loss"], "weight_sum": metrics["weight_sum"],
            "correct_tokens": metrics["correct_tokens"]}

  return jax.jit(eval_step, in_shardings=(params_shardings, partitioner.batch_sharding),
                 out_shardings=partitioner.replicated)
