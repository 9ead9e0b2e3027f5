"""One training run over two Ray workers (recast.jobs.multihost), on one CPU machine.

Each worker is a `recast train` process with 2 fake CPU devices; together they must train
like one process of 4 devices (the same global batches: no packing, no shuffling, each
process reads its own shard). A second job has worker 1 SIGKILLed mid-run: the driver
stops both, starts both again, the trainer resumes the newest checkpoint, and the run
ends with the parameters of the uninterrupted job, bit for bit. Bad input (more hosts than
the cluster has, a batch that does not split) fails with one line, before anything runs.
"""

import importlib.util
import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recast import cli, gin_config, run_lock
from recast.jobs import multihost

HERE = Path(__file__).resolve().parent
TRAIN_TESTS = HERE.parent / "trainer" / "test_train.py"
STEPS = 6
HANG_AT = 3  # worker 1 stops after the metrics of step 3 (checkpoint 2 is saved)
TWO_DEVICES = "--xla_force_host_platform_device_count=2"

# `recast train` on the toy RTE task (tests/trainer/test_train.py); with HANG_AT set,
# process 1 of the job stops after writing the metrics of that step, once (the marker
# file, holding its pid, tells the test whom to kill and keeps the restart from hanging).
DRIVER = textwrap.dedent("""
    import importlib.util, os, sys, time
    spec = importlib.util.spec_from_file_location("toy", {test_train!r})
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    toy.register_toy_rte({data!r})
    from recast import cli, metrics_writer
    hang_at, marker = int(os.environ.get("HANG_AT", "0")), os.environ.get("HANG_MARKER", "")
    if hang_at and os.environ.get("JAX_PROCESS_ID") == "1" and not os.path.exists(marker):
      write = metrics_writer.MetricsWriter.write
      def write_then_hang(self, step, *args, **kwargs):
        write(self, step, *args, **kwargs)
        if step == hang_at:
          with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
          os.replace(marker + ".tmp", marker)
          time.sleep(600)
      metrics_writer.MetricsWriter.write = write_then_hang
    sys.exit(cli.main(sys.argv[1:]))
""")


def _toy():
  spec = importlib.util.spec_from_file_location("toy_train_multihost", TRAIN_TESTS)
  toy = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(toy)
  return toy


@pytest.fixture(scope="session")
def ray_cluster(ray_session):
  """The session's Ray (tests/conftest.py), as the ray module."""
  import ray
  return ray


@pytest.fixture(scope="module")
def driver(shared_data, tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp("driver") / "driver.py"
  path.write_text(DRIVER.format(test_train=str(TRAIN_TESTS), data=str(shared_data)))
  return path


def _command(driver, model_dir):
  flags = _toy().toy_run_flags(model_dir, steps=STEPS, extra=[
      "--gin.BATCH_SIZE=8", "--gin.train.stats_period=1", "--gin.train.pack=False",
      "--gin.train.shuffle=False",
      # float32: in bf16 the sharded and the single-process sums round differently (7e-4
      # relative after 6 steps), more than the 1e-5 compared here.
      "--gin.ACTIVATION_DTYPE='float32'", "--gin.train.checkpoint_period=2"])
  return [sys.executable, str(driver), *flags]


def _job(driver, model_dir, **env):
  spec = multihost.LaunchSpec(num_hosts=2, cpus_per_host=1, max_failures=2,
                              placement_timeout_s=120)
  return multihost.run_job(_command(driver, model_dir), model_dir=model_dir, spec=spec,
                           env={"XLA_FLAGS": TWO_DEVICES, **env}, batch_size=8)


def _losses(model_dir):
  from recast import metrics_writer
  rows = [r for r in metrics_writer.read_metrics(model_dir)
          if r["metric"] == "loss" and r["split"] == "train"]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  return np.array([r["value"] for r in rows])


def _state(model_dir, step):
  """A checkpoint's train state as numpy arrays (saved on 2 processes' devices, read here
  on others)."""
  import jax
  import orbax.checkpoint as ocp
  path = Path(model_dir).resolve() / f"checkpoint_{step}" / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path)
  tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
  return checkpointer.restore(path, restore_args=jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


@pytest.fixture(scope="module")
def straight_job(ray_cluster, driver, shared_data, tmp_path_factory):
  """An uninterrupted 2-worker job (its MODEL_DIR and outcome), and while it runs, one
  `recast train` of 4 devices in this process (conftest's 4 fake devices): its MODEL_DIR."""
  folder = tmp_path_factory.mktemp("straight")
  result = {}
  import jax
  from recast.trainer import checkpoints, train  # noqa: F401 (imported once, before threads)
  assert jax.device_count() == 4 and jax.process_count() == 1
  _toy().register_toy_rte(shared_data)

  def job():
    try:
      result["outcome"] = _job(driver, folder / "run")
    except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
      result["error"] = e

  thread = threading.Thread(target=job, daemon=True)
  thread.start()
  single_code = cli.main(_command(driver, folder / "single")[2:])
  import gin
  gin.clear_config()
  thread.join(timeout=600)
  if "error" in result:
    raise result["error"]
  return folder / "run", result["outcome"], (folder / "single", single_code)


@pytest.mark.slow  # many processes: `make test-slow`
def test_two_hosts_of_two_devices_train_like_one_process_of_four(straight_job):
  model_dir, outcome, (single_dir, single_code) = straight_job
  assert outcome.attempts == 1 and len(outcome.nodes) == 2
  assert single_code == 0
  one, two = _losses(single_dir), _losses(model_dir)
  np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
  assert len(set(one.round(4))) == STEPS  # it trains: the loss moves every step
  # Both workers ran, only process 0 wrote: metrics, checkpoints, the driver's records.
  assert (model_dir / "output.log").is_file() and (model_dir / "output.host1.log").is_file()
  assert f"step {STEPS}/{STEPS}" in (model_dir / "output.log").read_text()
  assert f"step {STEPS}/{STEPS}" not in (model_dir / "output.host1.log").read_text()
  attempts = [json.loads(l) for l in (model_dir / multihost.ATTEMPTS_FILE).read_text()
              .splitlines()]
  assert [(a["attempt"], a["num_hosts"], a["resumes_step"]) for a in attempts] == [
      (1, 2, None)]
  assert (model_dir / f"checkpoint_{STEPS}").is_dir()
  run_lock.check_free(model_dir)  # the driver let go of the lock


@pytest.mark.slow  # many processes: `make test-slow`
def test_killed_worker_restarts_both_and_ends_bit_identical(straight_job, driver, tmp_path):
  model_dir = tmp_path / "killed"
  marker = tmp_path / "hanging"
  result = {}

  def job():
    try:
      result["outcome"] = _job(driver, model_dir, HANG_AT=str(HANG_AT),
                               HANG_MARKER=str(marker))
    except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
      result["error"] = e

  thread = threading.Thread(target=job, daemon=True)
  thread.start()
  deadline = time.monotonic() + 240
  while not marker.exists() and thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.2)
  assert marker.exists(), result.get("error")
  # While the job runs, its driver holds MODEL_DIR: a second writer is turned away.
  with pytest.raises(run_lock.RunLockError, match="is in use by pid"):
    run_lock.check_free(model_dir)
  os.kill(int(marker.read_text()), signal.SIGKILL)
  thread.join(timeout=300)
  assert not thread.is_alive()
  if "error" in result:
    raise result["error"]
  assert result["outcome"].attempts == 2
  attempts = [json.loads(l) for l in (model_dir / multihost.ATTEMPTS_FILE).read_text()
              .splitlines()]
  assert [(a["attempt"], a["start"], a["resumes_step"]) for a in attempts] == [
      (1, 1, None), (2, 2, HANG_AT - 1)]
  assert f"resuming from {model_dir}/checkpoint_{HANG_AT - 1}" in (
      model_dir / "output.log").read_text()
  straight, resumed = _state(straight_job[0], STEPS), _state(model_dir, STEPS)
  import jax
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed["params"],
                         straight["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed["opt_state"],
                         straight["opt_state"])
  np.testing.assert_array_equal(_losses(model_dir), _losses(straight_job[0]))


def test_more_hosts_than_the_cluster_has_is_a_named_timeout(ray_cluster, tmp_path):
  spec = multihost.LaunchSpec(num_hosts=3, cpus_per_host=1, gpus_per_host=8,
                              placement_timeout_s=1)
  with pytest.raises(multihost.PlacementTimeoutError) as e:
    multihost.run_job(["python", "-m", "recast", "train"], model_dir=tmp_path / "run",
                      spec=spec)
  message = str(e.value)
  assert message.startswith("3 bundles of {CPU: 1, GPU: 8} could not be placed in 1 s "
                            "(SPREAD): the cluster has 1 node: ")
  assert "short of {CPU: " in message and "GPU: " in message and "\n" not in message
  assert not (tmp_path / "run").exists()  # nothing written
  assert not [p for p in ray_cluster.util.placement_group_table().values()
              if p["state"] in ("PENDING", "CREATED")]  # nothing left reserved


def test_batch_that_does_not_split_over_the_hosts_devices_is_refused(tmp_path):
  spec = multihost.LaunchSpec(num_hosts=2)
  with pytest.raises(multihost.MultihostError,
                     match=r"^BATCH_SIZE=6 does not split over 4 data-parallel devices "
                     r"\(2 hosts x 2 devices\); use a multiple of 4$"):
    multihost.run_job(["python"], model_dir=tmp_path / "run", spec=spec, batch_size=6,
                      env={"XLA_FLAGS": TWO_DEVICES})
  with pytest.raises(multihost.MultihostError, match=r"over 16 .*\(2 hosts x 8 devices\)"):
    multihost.check_batch_split(12, num_hosts=2, devices_per_host=multihost.devices_per_host(
        multihost.LaunchSpec(num_hosts=2, gpus_per_host=8), {}))
  multihost.check_batch_split(32, num_hosts=2, devices_per_host=8)
  # JAX_NUM_CPU_DEVICES comes before the XLA flag (JAX reads it first); -1 is JAX's unset.
  cpu = multihost.LaunchSpec(num_hosts=2)
  assert multihost.devices_per_host(cpu, {"JAX_NUM_CPU_DEVICES": "3",
                                          "XLA_FLAGS": TWO_DEVICES}) == 3
  assert multihost.devices_per_host(cpu, {"JAX_NUM_CPU_DEVICES": "-1",
                                          "XLA_FLAGS": TWO_DEVICES}) == 2
  assert multihost.devices_per_host(cpu, {}) == 1
  assert not (tmp_path / "run").exists()


def test_launch_blocks_and_flags_are_checked():
  assert multihost.launch_spec({"num_hosts": 2, "gpus_per_host": 8}).bundle() == {
      "CPU": 1.0, "GPU": 8.0}
  assert multihost.launch_spec({"num_hosts": 4, "resources_per_host": {"TPU": 4}}).bundle(
      ) == {"CPU": 1.0, "TPU": 4.0}
  with pytest.raises(multihost.MultihostError, match="unknown key.*hosts; known: num_hosts"):
    multihost.launch_spec({"hosts": 2})
  with pytest.raises(multihost.MultihostError, match="num_hosts=0: use a whole number"):
    multihost.LaunchSpec(num_hosts=0)
  with pytest.raises(multihost.MultihostError, match="placement_strategy='RANDOM': use one"):
    multihost.LaunchSpec(placement_strategy="RANDOM")
  # `recast train --num_hosts=N` is the job driver's; without it, the trainer's.
  parser, module = cli.build_parser("train", ["train", "--num_hosts=2"])
  assert module is multihost
  args = parser.parse_args(["train", "--num_hosts=2", "--gpus_per_host=8",
                            "--placement_strategy=STRICT_SPREAD"])
  assert (args.num_hosts, args.gpus_per_host, args.placement_strategy) == (
      2, 8.0, "STRICT_SPREAD")
  assert not cli.wants_multihost("train", ["train", "--gin_file=a.gin"])
  assert not cli.wants_multihost("sweep", ["sweep", "--num_hosts=2"])


def test_a_sweep_launch_block_gives_each_trial_a_placement_group_of_hosts(tmp_path):
  from recast.jobs import sweep
  spec_file = tmp_path / "big.yaml"
  spec_file.write_text(textwrap.dedent("""\
      gin_files: [models/t5_1_1/tiny.gin, runs/finetune.gin]
      grid: {SEED: [0, 1]}
      launch: {num_hosts: 2, gpus_per_host: 8, placement_strategy: STRICT_SPREAD}
  """))
  spec = sweep.load_spec(spec_file, cwd=str(tmp_path))
  assert spec.launch == multihost.LaunchSpec(num_hosts=2, gpus_per_host=8,
                                             placement_strategy="STRICT_SPREAD")
  resources = sweep.trial_resources(spec)
  # The trial's driver needs no bundle; each host one {CPU: 1, GPU: 8}, all or none.
  assert resources.head_bundle_is_empty
  assert resources.bundles == [{"CPU": 1.0, "GPU": 8.0}] * 2
  assert resources.strategy == "STRICT_SPREAD"
  spec_file.write_text(spec_file.read_text().replace("num_hosts: 2", "hosts: 2"))
  with pytest.raises(sweep.SweepSpecError, match=r"big.yaml: launch: unknown key\(s\) hosts"):
    sweep.load_spec(spec_file, cwd=str(tmp_path))


def test_recast_train_num_hosts_parses_the_run_and_refuses_a_bad_batch(tmp_path, capsys):
  flags = _toy().toy_run_flags(tmp_path / "run", steps=STEPS, extra=["--gin.BATCH_SIZE=6"])
  launch = ["--num_hosts=2", f"--host_env=XLA_FLAGS={TWO_DEVICES}", "--max_failures=1"]
  argv, bindings = gin_config.split_gin_bindings([*flags, *launch])
  parser, module = cli.build_parser("train", argv)
  args = parser.parse_args(argv)
  args.gin_bindings = bindings
  plan = module.plan_from_args(args)
  # The workers run the trainer with the same gin flags, and none of the launch flags.
  assert plan.command[1:4] == ["-m", "recast", "train"]
  assert plan.command[4].startswith("--gin_file=") and plan.command[4].endswith(
      "models/t5_1_1/tiny.gin")
  assert "--gin.BATCH_SIZE=6" in plan.command and not any(
      a.startswith(("--num_hosts", "--host_env", "--max_failures")) for a in plan.command)
  assert (plan.model_dir, plan.batch_size, plan.env) == (
      str(tmp_path / "run"), 6, {"XLA_FLAGS": TWO_DEVICES})
  assert (plan.spec.num_hosts, plan.spec.max_failures) == (2, 1)
  import gin
  gin.clear_config()
  assert cli.main([*flags, *launch]) == 2
  err = capsys.readouterr().err.strip()
  assert err == ("recast train: error: BATCH_SIZE=6 does not split over 4 data-parallel "
                 "devices (2 hosts x 2 devices); use a multiple of 4")
  assert not (tmp_path / "run").exists()
