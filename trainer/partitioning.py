"""Where parameters, optimizer state and batches live: a (data, model) device mesh.

`Partitioner(num_partitions=1)` is pure data parallelism over every device (of every
process); `num_partitions > 1` also shards parameters along the `model` axis following
T5X's logical axis rules. Multi-host runs call `initialize_distributed` first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from recast import errors

LogicalAxisRules = Sequence[tuple[str, Optional[str]]]

# T5X's `standard_logical_axis_rules()` (1-D parameter and activation partitioning).
STANDARD_LOGICAL_AXIS_RULES: tuple[tuple[str, Optional[str]], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("layers", None),
    ("stack", None),
    ("mlp_activations", None),
)


class PartitioningError(errors.UserError):
  """A mesh that cannot be built on the devices at hand, or a batch that does not fit it."""


@gin.configurable
def initialize_distributed(*, coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Joins a multi-process run (`jax.distributed.initialize`) before any device is used.

  Each argument falls back to the environment: JAX_COORDINATOR_ADDRESS ("host:port"),
  JAX_NUM_PROCESSES, JAX_PROCESS_ID. With no coordinator address and no process count
  this is a single-process run and nothing happens. Returns whether it initialised.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address is None and num_processes in (None, 1):
    return False
  if coordinator_address is None or num_processes is None or process_id is None:
    raise PartitioningError(
        "multi-process run needs all of coordinator_address, num_processes and process_id "
        f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); set "
        "--gin.initialize_distributed.* or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
        "JAX_PROCESS_ID")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """What this process feeds: `batch_size` rows, shard `shard_id` of `num_shards`."""

  batch_size: int
  shard_id: int
  num_shards: int


@gin.configurable
class Partitioner:
  """A ("data", "model") mesh and the logical axis rules that map arrays onto it.

  Args:
    num_partitions: size of the `model` axis; the `data` axis takes the remaining devices.
    logical_axis_rules: (logical name, mesh axis or None) pairs; T5X's standard rules.
    devices: defaults to every device of every process.
  """

  def __init__(self, *, num_partitions: int = 1,
               logical_axis_rules: LogicalAxisRules = STANDARD_LOGICAL_AXIS_RULES,
               devices: Optional[Sequence[jax.Device]] = None):
    devices = list(jax.devices() if devices is None else devices)
    if num_partitions < 1 or len(devices) % num_partitions:
      raise PartitioningError(
          f"num_partitions={num_partitions} does not divide the {len(devices)} devices; "
          f"use a divisor of {len(devices)}")
    shape = (len(devices) // num_partitions, num_partitions)
    self.mesh = jax.make_mesh(shape, ("data", "model"), (AxisType.Auto, AxisType.Auto),
                              devices=devices)
    self.num_partitions = num_partitions
    self.logical_axis_rules = tuple((name, axis) for name, axis in logical_axis_rules)

  @property
  def num_data_shards(self) -> int:
    """Size of the data axis: the number of data-parallel replicas."""
    return self.mesh.shape["data"]

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_sharding(self) -> NamedSharding:
    """Leading (batch) dimension split over the data axis, the rest replicated."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  @contextlib.contextmanager
  def activation_context(self) -> Iterator[None]:
    """Mesh and rules for tracing the model, so its `with_logical_constraint`s apply."""
    with (jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh),
          nn.logical_axis_rules(self.logical_axis_rules)):
      yield

  def param_shardings(self, boxed_params: Any) -> Any:
    """NamedShardings for a tree of `nn.LogicallyPartitioned` params (or their shapes)."""
    specs = nn.get_partition_spec(boxed_params)
    return nn.logical_to_mesh_sharding(specs, self.mesh, self.logical_axis_rules)

  def opt_state_shardings(self, abstract_opt_state: Any, params_shardings: Any,
                          abstract_params: Any) -> Any:
    """Shardings of an optimizer state: a leaf whose dict-key path ends with a parameter's
    path and has that parameter's shape takes its sharding; everything else (step counts,
    factored Adafactor statistics) is replicated."""
    by_path = {}
    for path, sharding in jax.tree_util.tree_flatten_with_path(params_shardings)[0]:
      by_path[_dict_keys(path)] = sharding
    shapes = {_dict_keys(p): x.shape
              for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}

    def choose(path, leaf):
      keys = _dict_keys(path)
      for start in range(len(keys)):
        suffix = keys[start:]
        if suffix in by_path:
          if shapes[suffix] == tuple(leaf.shape):
            return by_path[suffix]
          break
      return self.replicated
    return jax.tree_util.tree_map_with_path(choose, abstract_opt_state)

  def get_data_layout(self, global_batch_size: int) -> DataLayout:
    """How the global batch splits over processes (each process feeds its own rows).

    Assumes the model axis stays inside a process (num_partitions <= local devices), so
    every process holds whole, distinct data shards: the usual multi-host layout.
    """
    num_processes = jax.process_count()
    if global_batch_size % self.num_data_shards:
      where = (f" ({num_processes} processes x {jax.local_device_count()} devices)"
               if num_processes > 1 else "")
      raise PartitioningError(
          f"BATCH_SIZE={global_batch_size} does not split over {self.num_data_shards} "
          f"data-parallel devices{where}; use a multiple of {self.num_data_shards}")
    return DataLayout(batch_size=global_batch_size // num_processes,
                      shard_id=jax.process_index(), num_shards=num_processes)

  def shard_batch(self, batch: Mapping[str, np.ndarray], *, batch_is_global: bool = False
                  ) -> dict[str, jax.Array]:
    """Global arrays, split along the batch over the data axis: the one way batches reach
    the mesh (training, evaluation, distillation, benchmarks).

    Args:
      batch: features of [rows, ...]: this process's `DataLayout` share (training), or
        with `batch_is_global` the whole global batch, which every process holds (evaluation
        reads the same examples everywhere; each device takes its rows).

    Returns:
      The same features as jax.Arrays of [global rows, ...] (rows * num_processes for a
      local batch).
    """
    sharding = self.batch_sharding
    out = {}
    for name, value in batch.items():
      value = np.asarray(value)
      global_rows = value.shape[0] * (1 if batch_is_global else jax.process_count())
      if global_rows % self.num_data_shards:
        raise PartitioningError(
            f"batch of {global_rows} rows ('{name}') does not split over "
            f"{self.num_data_shards} data-parallel devices; use a multiple of "
            f"{self.num_data_shards}")
      if batch_is_global:
        out[name] = jax.make_array_from_callback(value.shape, sharding,
                                                 lambda index, v=value: v[index])
      else:
        out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out


def _dict_keys(path) -> tuple[str, ...]:
  """The dict keys (and attribute names) along a pytree path; sequence indices dropped."""
  keys = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      keys.append(str(entry.key))
  return tuple(keys)
