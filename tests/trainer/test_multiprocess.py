"""Two local processes joined by jax.distributed train like one process.

Each process has one CPU device and reads its own shard of the examples (seqio.ShardInfo);
without packing or shuffling the two shards make up the same global batches as one
process reading everything, so the losses agree to float rounding.
"""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
STEPS = 3


def _toy():
  """test_train.py, loaded by path (tests are not a package)."""
  spec = importlib.util.spec_from_file_location("toy_train_mp", HERE / "test_train.py")
  toy = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(toy)
  return toy


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(driver, model_dir, *, env, extra=()):
  flags = _toy().toy_run_flags(model_dir, steps=STEPS, extra=[
      "--gin.BATCH_SIZE=8", "--gin.train.stats_period=1", "--gin.train.pack=False",
      "--gin.train.shuffle=False",
      # float32: in bf16 the sharded and the single-process sums round differently (7e-4
      # relative after 6 steps), more than the 1e-5 compared here.
      "--gin.ACTIVATION_DTYPE='float32'", *extra])
  return subprocess.Popen([sys.executable, str(driver), *flags],
                          env={**os.environ, "XLA_FLAGS":
                               "--xla_force_host_platform_device_count=1", **env},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(model_dir):
  from recast import metrics_writer
  rows = [r for r in metrics_writer.read_metrics(model_dir) if r["metric"] == "loss"]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  return np.array([r["value"] for r in rows])


@pytest.mark.slow  # runs killed, resumed or many steps long: `make test-slow`
def test_two_processes_give_the_loss_of_one(shared_data, tmp_path):
  driver = _toy().write_driver(tmp_path / "driver.py", shared_data)
  single = _run(driver, tmp_path / "one", env={})
  out, _ = single.communicate(timeout=300)
  assert single.returncode == 0, out[-3000:]

  address = f"127.0.0.1:{_free_port()}"
  procs = [_run(driver, tmp_path / "two", extra=["--multiprocess"],
                env={"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                     "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "step 3/3" in outs[0] and "step 3/3" not in outs[1]  # process 0 logs

  one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
  assert len(set(one.round(4))) == STEPS  # the model trains: losses move
  assert (tmp_path / "two" / "checkpoint_3").is_dir()
