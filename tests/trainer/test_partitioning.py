"""The (data, model) mesh, T5X's logical axis rules, batch sharding and the multi-host setup."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from recast.trainer import network, optimizers, partitioning, train_state

TINY = network.T5Config(vocab_size=64, d_model=32, num_heads=2, d_kv=8, d_ff=64,
                        num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


def _abstract_boxed():
  return jax.eval_shape(lambda r: network.init_params(TINY, r), jax.random.PRNGKey(0))


def test_default_is_data_parallel_over_all_devices():
  assert jax.device_count() == 4  # conftest's fake CPU devices
  p = partitioning.Partitioner()
  assert dict(p.mesh.shape) == {"data": 4, "model": 1}
  assert p.num_data_shards == 4
  spec = p.param_shardings(_abstract_boxed())
  # The model axis has size 1: every parameter is effectively whole on every device.
  assert spec["decoder"]["logits_dense"].is_fully_replicated


def test_model_partitions_follow_t5x_rules():
  p = partitioning.Partitioner(num_partitions=2)
  assert dict(p.mesh.shape) == {"data": 2, "model": 2}
  shardings = p.param_shardings(_abstract_boxed())
  specs = jax.tree_util.tree_map(lambda s: s.spec, shardings)
  assert specs["token_embedder"]["embedding"] == P("model", None)  # vocab, embed
  assert specs["decoder"]["logits_dense"] == P(None, "model")  # embed, vocab
  assert specs["encoder"]["layers_0"]["attention"]["query"] == P(None, "model", None)
  assert specs["encoder"]["layers_0"]["attention"]["out"] == P("model", None, None)
  assert specs["encoder"]["layers_0"]["mlp"]["wo"] == P("model", None)
  assert specs["encoder"]["relpos_bias"]["rel_embedding"] == P("model", None)
  assert specs["encoder"]["encoder_norm"]["scale"] == P(None)


def test_custom_rules_replace_the_standard_ones():
  rules = [(name, None) if name == "vocab" else (name, axis)
           for name, axis in partitioning.STANDARD_LOGICAL_AXIS_RULES]
  p = partitioning.Partitioner(num_partitions=2, logical_axis_rules=rules)
  specs = jax.tree_util.tree_map(lambda s: s.spec, p.param_shardings(_abstract_boxed()))
  assert specs["token_embedder"]["embedding"] == P(None, None)
  assert specs["encoder"]["layers_0"]["mlp"]["wo"] == P("model", None)


def test_bad_num_partitions_is_named():
  with pytest.raises(partitioning.PartitioningError, match="num_partitions=3"):
    partitioning.Partitioner(num_partitions=3)


def test_factored_adafactor_state_shardings():
  p = partitioning.Partitioner(num_partitions=2)
  boxed = _abstract_boxed()
  params = nn.unbox(boxed)
  # min_dim_size_to_factor 16 factors the tiny model's 32x64 and 64x32 matrices.
  opt = optimizers.create_optimizer(
      optimizer_def=lambda s: optimizers.adafactor(s, min_dim_size_to_factor=16))
  state = jax.eval_shape(opt.init, params)
  shardings = p.opt_state_shardings(state, p.param_shardings(boxed), params)
  factored = shardings[0]
  wo = ("encoder", "layers_0", "mlp", "wo")
  pick = lambda tree: tree[wo[0]][wo[1]][wo[2]][wo[3]]
  assert pick(state[0].v_row).shape in ((32,), (64,))  # a vector for the [64, 32] kernel
  assert pick(factored.v_row).is_fully_replicated  # factored statistics: replicated
  assert pick(factored.v).is_fully_replicated  # (1,) placeholder of a factored param
  # An unfactored parameter's full second moment takes the parameter's sharding.
  assert factored.v["encoder"]["relpos_bias"]["rel_embedding"].spec == P("model", None)
  assert factored.count.is_fully_replicated


def test_adamw_state_shardings_follow_params():
  p = partitioning.Partitioner(num_partitions=2)
  boxed = _abstract_boxed()
  params = nn.unbox(boxed)
  opt = optimizers.create_optimizer(optimizer_def=optimizers.adamw, max_grad_norm=1.0)
  state = jax.eval_shape(opt.init, params)
  shardings = p.opt_state_shardings(state, p.param_shardings(boxed), params)
  adam = shardings[1][0]  # chain(clip, adamw(chain(scale_by_adam, ...)))
  assert isinstance(adam, optax.ScaleByAdamState)
  assert adam.mu["decoder"]["logits_dense"].spec == P(None, "model")
  assert adam.nu["token_embedder"]["embedding"].spec == P("model", None)


def test_shard_batch_splits_rows_over_the_data_axis():
  p = partitioning.Partitioner(num_partitions=2)
  tokens = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  batch = p.shard_batch({"encoder_input_tokens": tokens})
  array = batch["encoder_input_tokens"]
  assert array.shape == (8, 3) and array.sharding.spec == P("data")
  np.testing.assert_array_equal(np.asarray(array), tokens)
  rows = sorted({tuple(np.asarray(s.data)[:, 0]) for s in array.addressable_shards})
  assert rows == [(0, 3, 6, 9), (12, 15, 18, 21)]  # 2 data shards of 4 rows, each on 2 devices


def test_bad_batch_size_is_named():
  p = partitioning.Partitioner()
  with pytest.raises(partitioning.PartitioningError, match="multiple of 4"):
    p.shard_batch({"encoder_input_tokens": np.zeros((6, 3), np.int32)})
  with pytest.raises(partitioning.PartitioningError, match="BATCH_SIZE=6"):
    p.get_data_layout(6)
  assert p.get_data_layout(8) == partitioning.DataLayout(batch_size=8, shard_id=0, num_shards=1)


def test_activation_context_applies_logical_constraints():
  p = partitioning.Partitioner(num_partitions=2)

  def f(x):
    with p.activation_context():
      return nn.with_logical_constraint(x * 2, ("batch", "mlp"))
  text = jax.jit(f).lower(jnp.ones((4, 4))).as_text()
  assert 'sharding_constraint' in text and '[{"data"}, {"model"}]' in text


def test_initialize_distributed_single_process_is_a_no_op(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  assert partitioning.initialize_distributed() is False
  assert partitioning.initialize_distributed(num_processes=1) is False


def test_initialize_distributed_partial_settings_are_named(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  with pytest.raises(partitioning.PartitioningError, match="JAX_NUM_PROCESSES"):
    partitioning.initialize_distributed()


# One process of a 2-process run: 2 local CPU devices each, 4 in all; every process feeds
# its own half of the global batch (rows [4 * id, 4 * id + 4)).
_WORKER = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, numpy as np
from recast.trainer import network, optimizers, partitioning, train_state
assert partitioning.initialize_distributed()
cfg = network.T5Config(**json.loads(sys.argv[1]))
batch = {k: np.asarray(v, np.int32) for k, v in json.loads(sys.argv[2]).items()}
p = partitioning.Partitioner()
layout = p.get_data_layout(8)
rows = slice(layout.shard_id * layout.batch_size, (layout.shard_id + 1) * layout.batch_size)
opt = optimizers.create_optimizer(learning_rate_schedule=0.01)
state = train_state.create_train_state(cfg, opt, jax.random.PRNGKey(0), p)
step = train_state.make_train_step(network.Transformer(cfg), opt, p)
sharded = p.shard_batch({k: v[rows] for k, v in batch.items()})
losses = []
for _ in range(3):
  state, metrics = step(state, sharded, jax.random.PRNGKey(1))
  losses.append(float(metrics["loss"]))
print("LOSSES", json.dumps(losses), flush=True)
"""


def _tiny_batch():
  rs = np.random.RandomState(0)
  targets = rs.randint(2, 64, (8, 6)).astype(np.int32)
  targets[:, 4:] = 0
  return {"encoder_input_tokens": rs.randint(1, 64, (8, 10)).astype(np.int32),
          "decoder_target_tokens": targets,
          "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]],
                                                 axis=1),
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def test_two_processes_give_the_loss_of_one(tmp_path):
  batch = _tiny_batch()
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  args = [json.dumps(dataclasses.asdict(TINY)),
          json.dumps({k: v.tolist() for k, v in batch.items()})]
  repo = Path(__file__).resolve().parents[2]
  procs = []
  for process_id in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(process_id))
    procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, *args], cwd=repo, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  try:
    # The same run in this process, on its 4 local devices.
    p = partitioning.Partitioner()
    opt = optimizers.create_optimizer(learning_rate_schedule=0.01)
    state = train_state.create_train_state(TINY, opt, jax.random.PRNGKey(0), p)
    step = train_state.make_train_step(network.Transformer(TINY), opt, p)
    sharded = p.shard_batch(batch)
    expected = []
    for _ in range(3):
      state, metrics = step(state, sharded, jax.random.PRNGKey(1))
      expected.append(float(metrics["loss"]))
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  assert expected[-1] < expected[0]
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("LOSSES "))
    np.testing.assert_allclose(json.loads(line[len("LOSSES "):]), expected, atol=1e-5, rtol=0)
