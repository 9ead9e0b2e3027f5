"""Exact resume: N steps straight == N/2 steps, SIGKILL, resume to N (bitwise on CPU).

The runs are `recast train` subprocesses on the toy RTE task of test_train.py, with dropout
on, so the data position, the optimizer state and the dropout keys must all come back.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
STEPS, PERIOD, HANG_AT = 8, 4, 6


def _toy():
  """test_train.py, loaded by path (tests are not a package)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("toy_train", HERE / "test_train.py")
  toy = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(toy)
  return toy


def _flags(model_dir):
  return _toy().toy_run_flags(model_dir, steps=STEPS, extra=[
      "--gin.BATCH_SIZE=8", "--gin.DROPOUT_RATE=0.1", f"--gin.CHECKPOINT_PERIOD={PERIOD}",
      "--gin.train.stats_period=1"])


def _start(driver, model_dir, **env):
  return subprocess.Popen([sys.executable, str(driver), *_flags(model_dir)],
                          env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def _params(model_dir, step):
  import orbax.checkpoint as ocp
  restored = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
      Path(model_dir).resolve() / f"checkpoint_{step}" / "state")
  return jax.tree_util.tree_map(np.asarray, restored)


@pytest.mark.slow  # runs killed, resumed or many steps long: `make test-slow`
def test_killed_and_resumed_run_equals_straight_run(shared_data, tmp_path):
  from recast import metrics_writer
  driver = _toy().write_driver(tmp_path / "driver.py", shared_data)
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  # Later runs reuse the first one's compiled train step.
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")}
  _finish(_start(driver, straight, **env))
  proc = _start(driver, killed, HANG_AT=str(HANG_AT), **env)
  deadline = time.time() + 300
  while not (killed / "hanging").exists():
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.time() < deadline, "the run never reached step 6"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_before = sorted({r["step"] for r in metrics_writer.read_metrics(killed)})
  assert steps_before == list(range(1, HANG_AT + 1))  # rows past checkpoint 4 were written
  assert sorted(p.name for p in killed.glob("checkpoint_*")) == ["checkpoint_4"]

  out = _finish(_start(driver, killed, **env))
  assert "resuming from" in out and "checkpoint_4" in out

  a, b = _params(straight, STEPS), _params(killed, STEPS)
  assert int(a["step"]) == int(b["step"]) == STEPS
  jax.tree_util.tree_map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])

  def stream(model_dir):
    return [(r["step"], r["metric"], r["value"]) for r in metrics_writer.read_metrics(model_dir)
            if r["metric"] in ("loss", "accuracy", "learning_rate")]
  assert [s for s, m, _ in stream(killed) if m == "loss"] == list(range(1, STEPS + 1))
  assert stream(killed) == stream(straight)
  # Dropout was on and the data moved on: the losses are not all the same.
  assert len({v for _, m, v in stream(straight) if m == "loss"}) == STEPS
