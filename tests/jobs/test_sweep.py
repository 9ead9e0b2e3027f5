"""`recast sweep`: grids of tiny `recast train` runs on Ray Tune with fake GPUs.

One scenario (module fixture `sweep_run`) carries the slow checks: 8 trials on 64 real RTE
rows; the train process of trial 000 is SIGKILLed mid-run (Tune retries it, the trainer
resumes its checkpoint); the driver, a `recast sweep` subprocess, is SIGKILLed while trial
002 is mid-run; `--resume` then finishes only what was not done. Trials 004 and 006 have
the same bindings as 000 and 002 but a different CHECKPOINT_PERIOD and run uninterrupted,
so they give the metrics the interrupted ones must end with. The rest is fast: spec
checks, tables from synthetic metrics, the trial environment.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from recast import metrics_writer
from recast.jobs import launcher, sweep

REPO = Path(__file__).resolve().parents[2]
TOY_VOCAB = (REPO / ".venv/lib/python3.11/site-packages/seqio/test_data/sentencepiece/"
             "sentencepiece.model")
TASK = "sweep_rte_64"
STEPS = 6
# The trial process hangs (once) after writing the metrics of this step, so the test can
# kill it at a known point: 000 after checkpoint 4, 002 after checkpoint 2.
HANGS = {0: 5, 2: 3}
HOOK = textwrap.dedent("""
    import json, os, time
    _hangs = json.loads(os.environ.get("SWEEP_TEST_HANGS", "{}"))
    if _hangs:
      from recast import metrics_writer
      _write = metrics_writer.MetricsWriter.write
      def _write_then_hang(self, step, *args, **kwargs):
        _write(self, step, *args, **kwargs)
        marker = self.model_dir / "hanging"
        if _hangs.get(self.model_dir.name) == step and not marker.exists():
          marker.write_text(str(os.getpid()))
          time.sleep(600)
      metrics_writer.MetricsWriter.write = _write_then_hang
""")


@pytest.fixture(scope="session")
def task_file(shared_data, tmp_path_factory) -> Path:
  """A task file over the first 64 RTE train rows (train and validation alike); one for
  the session, as a task name can be registered once per process."""
  folder = tmp_path_factory.mktemp("task")
  with open(shared_data / "glue/rte/train.jsonl") as f:
    (folder / "train.jsonl").write_text("".join(next(f) for _ in range(64)))
  path = folder / "recast.tasks.yaml"
  path.write_text(textwrap.dedent(f"""\
      tasks:
        - name: {TASK}
          files: {{train: train.jsonl, validation: train.jsonl}}
          inputs: "rte sentence1: {{sentence1}} sentence2: {{sentence2}}"
          targets: "{{label}}"
          labels: [entailment, not_entailment]
  """))
  return path


def _spec(tmp_path: Path, task_file: Path, **changes) -> dict:
  spec = {
      "name": "grid",
      "gin_files": ["models/t5_1_1/tiny.gin", "runs/finetune.gin"],
      "tasks_files": [str(task_file)],
      "bindings": {"MIXTURE_OR_TASK_NAME": TASK, "VOCABULARY": str(TOY_VOCAB),
                   "TASK_FEATURE_LENGTHS": {"inputs": 32, "targets": 8},
                   "TRAIN_STEPS": STEPS, "BATCH_SIZE": 4, "EVAL_PERIOD": 0,
                   "train.stats_period": 1, "train.max_truncated_fraction": 1.0},
      "grid": {"SEED": [0, 1], "LEARNING_RATE": [0.001, 0.003]},
      "points": [{"CHECKPOINT_PERIOD": 2}, {"CHECKPOINT_PERIOD": 3}],
      "resources_per_trial": {"gpu": 1, "cpu": 1},
      "max_concurrent_trials": 2,
      "max_failures": 2,
      "storage_path": str(tmp_path / "sweeps"),
      "env": {"XLA_FLAGS": "--xla_force_host_platform_device_count=1",
              "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")},
  }
  spec.update(changes)
  return spec


def _write_spec(path: Path, spec: dict) -> Path:
  import yaml
  path.write_text(yaml.safe_dump(spec, sort_keys=False))
  return path


# ------------------------------------------------------------------------------------------
# The spec


def test_points_cross_the_grid_into_named_trials(tmp_path, task_file):
  spec = sweep.load_spec(_write_spec(tmp_path / "s.yaml", _spec(tmp_path, task_file)))
  trials = spec.trials()
  assert len(trials) == 8
  assert spec.axis_names == ["CHECKPOINT_PERIOD", "SEED", "LEARNING_RATE"]
  assert spec.seed_axis == "SEED"
  assert trials[0].name == "000_CHECKPOINT_PERIOD=2,SEED=0,LEARNING_RATE=0.001"
  assert trials[5].point == {"CHECKPOINT_PERIOD": 3, "SEED": 0, "LEARNING_RATE": 0.003}
  assert trials[5].model_dir == str(tmp_path / "sweeps/grid/runs" / trials[5].name)
  assert trials[5].bindings[-4:] == (
      "CHECKPOINT_PERIOD=3", "SEED=0", "LEARNING_RATE=0.003",
      f"MODEL_DIR='{trials[5].model_dir}'")
  assert "MIXTURE_OR_TASK_NAME='sweep_rte_64'" in trials[5].bindings
  assert "TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}" in trials[5].bindings
  command = trials[5].train_command(spec)
  assert command[1:4] == ["-m", "recast", "train"]
  assert "--gin_file=models/t5_1_1/tiny.gin" in command
  assert f"--gin.MODEL_DIR='{trials[5].model_dir}'" in command
  # A gin_file axis puts its file first, as T5X orders model and run files.
  (model_point,) = sweep.load_spec(_write_spec(tmp_path / "m.yaml", _spec(
      tmp_path, task_file, gin_files=["runs/finetune.gin"], points=[],
      grid={"gin_file": ["models/t5_1_1/tiny.gin"]}))).trials()
  assert model_point.gin_files == ("models/t5_1_1/tiny.gin", "runs/finetune.gin")
  assert model_point.name == "000_gin_file=models-t5_1_1-tiny"


def test_gin_values_read_as_command_line_flags():
  assert sweep.gin_binding("LEARNING_RATE", "1e-3") == "LEARNING_RATE=1e-3"
  assert sweep.gin_binding("LEARNING_RATE", 0.001) == "LEARNING_RATE=0.001"
  assert sweep.gin_binding("MIXTURE_OR_TASK_NAME", "glue_rte") == \
      "MIXTURE_OR_TASK_NAME='glue_rte'"
  assert sweep.gin_binding("INITIAL_CHECKPOINT_PATH", None) == "INITIAL_CHECKPOINT_PATH=None"
  assert sweep.gin_binding("create_optimizer.optimizer_def", "@adamw") == \
      "create_optimizer.optimizer_def=@adamw"


@pytest.mark.parametrize("change, message", [
    ({"grids": {"SEED": [0]}}, r"unknown key 'grids' \(did you mean 'grid'\?\)"),
    ({"grid": {}, "points": []}, r"the grid is empty \(it has no grid and no points\)"),
    ({"grid": {"SEED": []}, "points": []}, r"the grid is empty \(grid axis SEED has no"),
    ({"grid": {"SEED": 3}}, r"grid axis SEED needs a list of values"),
    ({"bindings": {"SEED": 1, "MIXTURE_OR_TASK_NAME": TASK}}, r"SEED is both in bindings"),
    ({"baseline": {"LEARNING_RATE": 0.5}}, r"no point of the grid has baseline"),
    ({"baseline": {"SEED": 0}}, r"baseline names SEED, which is not a grid axis"),
])
def test_malformed_spec_is_rejected_when_read(tmp_path, task_file, change, message):
  path = _write_spec(tmp_path / "bad.yaml", _spec(tmp_path, task_file, **change))
  with pytest.raises(sweep.SweepSpecError, match=message):
    sweep.load_spec(path)


@pytest.mark.parametrize("change, message", [
    ({"grid": {"train.learning_rte": [0.1]}},
     r"trial 000_CHECKPOINT_PERIOD=2,learning_rte=0.1: invalid gin binding "
     r"--gin.train.learning_rte=0.1: Configurable 'train' doesn't have a parameter"),
    ({"grid": {"LEARNING_RTE": [0.1]}},
     r"gin macro LEARNING_RTE is neither defined nor used by"),
    ({"grid": {"SEED": [0]}, "bindings": {"MIXTURE_OR_TASK_NAME": "no_such_task",
                                          "TASK_FEATURE_LENGTHS": {"inputs": 8}, "TRAIN_STEPS": 1}},
     r"no task or mixture named 'no_such_task'"),
    ({"grid": {"SEED": [0]}, "bindings": {"MIXTURE_OR_TASK_NAME": TASK}},
     r"needs TASK_FEATURE_LENGTHS, TRAIN_STEPS set"),
])
def test_bad_binding_is_rejected_before_any_trial_starts(tmp_path, task_file, change,
                                                         message):
  spec = sweep.load_spec(_write_spec(tmp_path / "bad.yaml",
                                     _spec(tmp_path, task_file, **change)))
  with pytest.raises(sweep.errors.UserError, match=message):
    sweep.run_sweep(spec)
  assert not spec.experiment_dir.exists()  # nothing was started or written


def test_cli_reports_a_bad_spec_without_a_traceback(tmp_path, task_file, capsys):
  from recast import cli
  path = _write_spec(tmp_path / "bad.yaml", _spec(tmp_path, task_file, grid={"SEED": []},
                                                 points=[]))
  assert cli.main(["sweep", str(path)]) == 2
  assert "recast sweep: error:" in capsys.readouterr().err
  good = _write_spec(tmp_path / "good.yaml", _spec(tmp_path, task_file))
  assert cli.main(["sweep", str(good), "--dry_run", "--gin.TRAIN_STEPS=3"]) == 0
  out = capsys.readouterr().out
  assert "8 trials; gin checked" in out and out.count("--gin.TRAIN_STEPS=3") == 8
  assert cli.main(["sweep", str(good), "--dry_run", "--gin.SEED=3"]) == 2
  assert "--gin.SEED sets a grid axis" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Tables and the trial environment


def _record(point, status="done", **final):
  return {"trial": "t", "status": status, "point": point, "step": 10, "final": final,
          "best": {k: v + 1 for k, v in final.items()}}


def test_groups_average_over_seeds():
  records = [_record({"LR": 1, "SEED": 0}, **{"train/loss": 2.0}),
             _record({"LR": 1, "SEED": 1}, **{"train/loss": 4.0}),
             _record({"LR": 2, "SEED": 0}, **{"train/loss": 3.0}),
             _record({"LR": 2, "SEED": 1}, status="incomplete", **{"train/loss": 9.0})]
  columns, rows = sweep.groups_table(records, ["LR", "SEED"], seed_axis="SEED")
  assert columns[:2] == ["LR", "seeds"] and "train/loss final std" in columns
  assert rows[0]["LR"] == 1 and rows[0]["seeds"] == 2
  assert rows[0]["train/loss final mean"] == 3.0
  assert rows[0]["train/loss final std"] == pytest.approx(np.std([2.0, 4.0], ddof=1))
  assert rows[0]["train/loss best mean"] == 4.0
  assert rows[1] == {"LR": 2, "seeds": 1, "train/loss final mean": 3.0,
                     "train/loss final std": None, "train/loss best mean": 4.0,
                     "train/loss best std": None}


def test_recycling_table_gives_gain_per_task_over_the_baseline(tmp_path):
  acc = "validation/{}/accuracy"
  records = [
      _record({"base": "t5", "SEED": 0}, **{acc.format("rte"): 0.50, acc.format("cb"): 0.60}),
      _record({"base": "t5", "SEED": 1}, **{acc.format("rte"): 0.60, acc.format("cb"): 0.70}),
      _record({"base": "fused", "SEED": 0}, **{acc.format("rte"): 0.70, acc.format("cb"): 0.60,
                                               "validation/rte/f1": 0.1})]
  columns, rows = sweep.recycling_rows(records, row_axes=["base"], metric="accuracy",
                                       baseline={"base": "t5"})
  assert columns == ["base", "cb gain", "rte gain", "mean gain", "mean accuracy"]
  assert rows[0]["base"] == "t5" and rows[0]["mean gain"] == 0.0
  assert rows[1]["rte gain"] == pytest.approx(0.15)
  assert rows[1]["cb gain"] == pytest.approx(-0.05)
  assert rows[1]["mean gain"] == pytest.approx(0.05)
  assert rows[1]["mean accuracy"] == pytest.approx(0.65)
  csv_path, md_path = sweep.write_table(columns, rows, tmp_path / "recycling")
  fused = csv_path.read_text().splitlines()[2].split(",")
  assert fused[0] == "fused"
  np.testing.assert_allclose([float(v) for v in fused[1:]], [-0.05, 0.15, 0.05, 0.65])
  assert md_path.read_text().splitlines()[3] == "| fused | -0.05 | 0.15 | 0.05 | 0.65 |"


def test_results_from_run_folders(tmp_path, task_file):
  """write_results over finished run folders: trials, groups, recycling tables, plots."""
  spec = sweep.load_spec(_write_spec(tmp_path / "s.yaml", _spec(
      tmp_path, task_file, points=[], baseline={"LEARNING_RATE": 0.001},
      grid={"LEARNING_RATE": [0.001, 0.003], "SEED": [0, 1]})))
  accuracy = {(0.001, 0): (0.50, 0.60), (0.001, 1): (0.60, 0.70),  # (rte, cb)
              (0.003, 0): (0.70, 0.60), (0.003, 1): (0.70, 0.80)}
  for trial in spec.trials():
    rte, cb = accuracy[(trial.point["LEARNING_RATE"], trial.point["SEED"])]
    rows = [{"step": 10, "split": "train", "task": "", "metric": "loss", "value": 1.0},
            {"step": 10, "split": "validation", "task": "rte", "metric": "accuracy",
             "value": rte},
            {"step": 10, "split": "validation", "task": "cb", "metric": "accuracy",
             "value": cb}]
    metrics_writer.atomic_files.write_jsonl(Path(trial.model_dir) / "metrics.jsonl", rows)
    metrics_writer.atomic_files.write_json(Path(trial.model_dir) / sweep.DONE_FILE, {})
  results = sweep.write_results(spec, spec.trials())
  import csv
  with open(results / "groups.csv") as f:
    groups = {r["LEARNING_RATE"]: r for r in csv.DictReader(f)}
  assert float(groups["0.003"]["validation/rte/accuracy final mean"]) == pytest.approx(0.7)
  assert float(groups["0.003"]["validation/cb/accuracy final std"]) == pytest.approx(
      np.std([0.6, 0.8], ddof=1))
  assert float(groups["0.001"]["validation/average final mean"]) == pytest.approx(0.6)
  recycling = (results / "recycling.md").read_text().splitlines()
  assert recycling[0] == "| LEARNING_RATE | cb gain | rte gain | mean gain | mean accuracy |"
  assert recycling[2] == "| 0.001 | 0 | 0 | 0 | 0.6 |"
  assert recycling[3] == "| 0.003 | 0.05 | 0.15 | 0.1 | 0.7 |"
  for plot in ("train_loss", "eval_rte", "groups_validation_rte_accuracy"):
    assert (results / "plots" / f"{plot}.png").stat().st_size > 1000


def test_summary_takes_the_last_value_and_the_best_in_the_right_direction():
  rows = [{"step": s, "split": split, "task": task, "metric": m, "value": v} for s, split,
          task, m, v in [(1, "train", "", "loss", 3.0), (2, "train", "", "loss", 1.0),
                         (3, "train", "", "loss", 2.0), (3, "train", "", "tokens_per_second", 9),
                         (2, "validation", "rte", "accuracy", 0.7),
                         (4, "validation", "rte", "accuracy", 0.6),
                         (4, "validation", "cb", "accuracy", 0.8)]]
  # Evaluation columns and their average come from trainer.report's tables.
  assert sweep.summarize_metrics(rows) == {
      "step": 4, "final": {"train/loss": 2.0, "validation/rte/accuracy": 0.6,
                           "validation/cb/accuracy": 0.8, "validation/average": 0.7,
                           "validation/average/accuracy": 0.7},
      "best": {"train/loss": 1.0, "validation/rte/accuracy": 0.7,
               "validation/cb/accuracy": 0.8, "validation/average": 0.75,
               "validation/average/accuracy": 0.75}}


def test_trial_environment_gives_jax_its_gpu_share():
  base = {"CUDA_VISIBLE_DEVICES": "3", "PATH": "/bin"}
  assert launcher.train_environment(base, gpus=1, extra={})["XLA_PYTHON_CLIENT_MEM_FRACTION"] \
      == "0.9"
  half = launcher.train_environment(base, gpus=0.5, extra={"A": "b"})
  assert half["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45" and half["A"] == "b"
  assert half["CUDA_VISIBLE_DEVICES"] == "3"  # Ray's choice of GPU is kept
  cpu = launcher.train_environment(base, gpus=0, extra={})
  assert cpu["CUDA_VISIBLE_DEVICES"] == "" and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in cpu
  assert launcher.train_environment(base, gpus=1, extra={
      "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == ".5"


def test_metrics_tail_reports_the_newest_values_across_a_resumed_rewrite(tmp_path):
  row = lambda step, value: {"step": step, "split": "train", "task": "", "metric": "loss",
                             "value": value}
  tail = sweep.MetricsTail(tmp_path)
  assert not tail.poll()
  metrics_writer.atomic_files.append_jsonl(tmp_path / "metrics.jsonl", [row(1, 3.0), row(2, 2.0)])
  assert tail.poll() and (tail.step, tail.latest) == (2, {"train/loss": 2.0})
  assert not tail.poll()
  # A resumed run drops rows after its checkpoint (atomic rewrite) and appends again.
  metrics_writer.atomic_files.write_jsonl(tmp_path / "metrics.jsonl", [row(1, 3.0)])
  metrics_writer.atomic_files.append_jsonl(tmp_path / "metrics.jsonl", [row(2, 2.5), row(3, 2.2)])
  assert tail.poll() and (tail.step, tail.latest) == (3, {"train/loss": 2.2})


# ------------------------------------------------------------------------------------------
# The scenario: 8 trials, a killed trial process, a killed driver, --resume


def _attempts(model_dir):
  path = Path(model_dir) / sweep.ATTEMPTS_FILE
  return metrics_writer.atomic_files.read_jsonl(path) if path.exists() else []


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  state = Path(f"/proc/{pid}/stat")
  return not (state.exists() and state.read_text().split()[2] == "Z")


@pytest.fixture(scope="module")
def sweep_run(ray_session, task_file, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sweep")
  hook = tmp / "hook"
  hook.mkdir()
  (hook / "sitecustomize.py").write_text(HOOK)
  names = [t.name for t in sweep.load_spec(_write_spec(
      tmp / "spec.yaml", _spec(tmp, task_file))).trials()]
  spec = _spec(tmp, task_file)
  spec["env"].update(PYTHONPATH=str(hook), SWEEP_TEST_HANGS=json.dumps(
      {names[i]: step for i, step in HANGS.items()}))
  path = _write_spec(tmp / "spec.yaml", spec)
  runs = tmp / "sweeps/grid/runs"
  killed, interrupted = runs / names[0], runs / names[2]

  # Phase 1: `recast sweep` in a subprocess, joined to this Ray.
  log = open(tmp / "driver.log", "w")
  driver = subprocess.Popen([sys.executable, "-m", "recast", "sweep", str(path),
                             f"--address={ray_session}"], stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)
  trial_pid = None
  deadline = time.time() + 1200
  while True:
    assert driver.poll() is None, (tmp / "driver.log").read_text()[-5000:]
    assert time.time() < deadline, "phase 1 did not reach its kill point"
    if trial_pid is None and (killed / "hanging").exists():
      trial_pid = int((killed / "hanging").read_text())
      os.kill(trial_pid, signal.SIGKILL)  # a real kill of the trial's train process
    if (killed / sweep.DONE_FILE).exists() and (interrupted / "hanging").exists():
      break
    time.sleep(0.5)
  driver.send_signal(signal.SIGKILL)
  driver.wait()
  orphan = int((interrupted / "hanging").read_text())
  deadline = time.time() + 120
  while _alive(orphan):  # Ray ends the dead driver's trials; the train process follows.
    assert time.time() < deadline, "the killed driver's train process kept running"
    time.sleep(0.5)
  time.sleep(2)
  done_at_kill = {n for n in names if (runs / n / sweep.DONE_FILE).exists()}
  attempts_at_kill = {n: len(_attempts(runs / n)) for n in names}

  # Phase 2: --resume, driven from this process.
  outcome = sweep.run_sweep(sweep.load_spec(path, cwd=str(tmp)), resume=True, verbose=0)
  return {"names": names, "runs": runs, "outcome": outcome, "done_at_kill": done_at_kill,
          "attempts_at_kill": attempts_at_kill, "results": outcome.results_dir}


def _stream(model_dir):
  return [(r["step"], r["metric"], r["value"]) for r in metrics_writer.read_metrics(model_dir)
          if r["metric"] in ("loss", "accuracy", "cross_ent_loss")]


@pytest.mark.slow  # many processes: `make test-slow`
def test_grid_of_8_trials_completes_with_a_table_row_each(sweep_run):
  import csv
  names, runs = sweep_run["names"], sweep_run["runs"]
  assert sweep_run["outcome"].failed == []
  with open(sweep_run["results"] / "trials.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["trial"] for r in rows] == names
  assert list(rows[0])[:6] == ["trial", "status", "step", "CHECKPOINT_PERIOD", "SEED",
                               "LEARNING_RATE"]
  assert {(r["CHECKPOINT_PERIOD"], r["SEED"], r["LEARNING_RATE"]) for r in rows} == {
      (c, s, lr) for c in "23" for s in "01" for lr in ("0.001", "0.003")}
  assert all(r["status"] == "done" and r["step"] == str(STEPS) for r in rows)
  for r in rows:  # the table holds each run's own final loss
    final = [v for s, m, v in _stream(runs / r["trial"]) if m == "loss" and s == STEPS]
    assert float(r["train/loss final"]) == pytest.approx(final[0])
  with open(sweep_run["results"] / "groups.csv") as f:
    groups = list(csv.DictReader(f))
  assert len(groups) == 4 and all(g["seeds"] == "2" for g in groups)
  assert "SEED" not in groups[0]
  md = (sweep_run["results"] / "groups.md").read_text()
  assert md.startswith("| CHECKPOINT_PERIOD | LEARNING_RATE | seeds | train/accuracy final")
  assert " ± " in md
  assert (sweep_run["results"] / "plots/train_loss.png").stat().st_size > 1000
  assert (sweep_run["results"] / "plots/groups_train_loss.png").stat().st_size > 1000
  # Each trial held one of the two (fake) GPUs, and only it was visible to its process.
  for name in names:
    for attempt in _attempts(runs / name):
      assert len(attempt["gpu_ids"]) == 1
      assert attempt["cuda_visible_devices"] == attempt["gpu_ids"][0] in ("0", "1")


@pytest.mark.slow  # many processes: `make test-slow`
def test_killed_trial_is_retried_from_its_checkpoint_and_matches_an_uninterrupted_one(
    sweep_run):
  names, runs = sweep_run["names"], sweep_run["runs"]
  attempts = _attempts(runs / names[0])
  assert [a["resumes_step"] for a in attempts] == [None, 4]
  assert attempts[1]["tune_restored"]  # Tune restarted it from its registered checkpoint
  log = (runs / names[0] / sweep.LOG_FILE).read_text()
  assert "resuming from" in log and "checkpoint_4" in log
  # 004 differs from 000 only in CHECKPOINT_PERIOD and was never interrupted.
  for interrupted, straight in ((0, 4), (2, 6)):
    a, b = _stream(runs / names[interrupted]), _stream(runs / names[straight])
    assert [s for s, m, _ in a if m == "loss"] == list(range(1, STEPS + 1))
    assert [(s, m) for s, m, _ in a] == [(s, m) for s, m, _ in b]
    np.testing.assert_allclose([v for *_, v in a], [v for *_, v in b], rtol=1e-6)
  done = json.loads((runs / names[0] / sweep.DONE_FILE).read_text())
  assert done["attempts"] == 2 and done["step"] == STEPS


@pytest.mark.slow  # many processes: `make test-slow`
def test_killed_driver_resumed_runs_only_the_unfinished_trials(sweep_run):
  names, runs, outcome = sweep_run["names"], sweep_run["runs"], sweep_run["outcome"]
  done_at_kill = sweep_run["done_at_kill"]
  assert names[0] in done_at_kill and names[2] not in done_at_kill
  assert 2 <= len(done_at_kill) < 8
  assert sorted(outcome.skipped) == sorted(done_at_kill)
  assert sorted(outcome.ran) == sorted(set(names) - done_at_kill)
  for name in done_at_kill:  # finished trials did not run again
    assert len(_attempts(runs / name)) == sweep_run["attempts_at_kill"][name]
  resumed = _attempts(runs / names[2])
  assert [a["resumes_step"] for a in resumed] == [None, 2]
  assert all((runs / n / sweep.DONE_FILE).exists() for n in names)
  # Each driver ran its own Tune experiment; the second held only the unfinished trials.
  tune_runs = sorted((runs.parent / "tune").iterdir())
  assert [p.name for p in tune_runs] == ["driver_1", "driver_2"]
  assert sorted(p.name for p in tune_runs[1].iterdir() if p.is_dir()) == sorted(outcome.ran)


@pytest.mark.parametrize("name", ["lr_seed", "compact_models", "recycling"])
def test_example_specs_are_valid(name):
  spec = sweep.load_spec(REPO / "gin/experiments/sweeps" / f"{name}.yaml", cwd=str(REPO))
  trials = spec.trials()
  assert len(trials) == {"lr_seed": 9, "compact_models": 64, "recycling": 36}[name]
  sweep.validate_trials(spec, trials)


@pytest.mark.slow  # Ray trials: `make test-slow`
def test_a_rejected_input_fails_its_trial_once_without_retries(ray_session, task_file,
                                                                tmp_path):
  """RTE pairs at 32 input tokens, the truncation check left on: `recast train` rejects
  the run (exit 2); a retry would be rejected the same way, so there is none."""
  bindings = dict(_spec(tmp_path, task_file)["bindings"])
  del bindings["train.max_truncated_fraction"]
  spec = sweep.load_spec(_write_spec(tmp_path / "spec.yaml", _spec(
      tmp_path, task_file, bindings=bindings, grid={"SEED": [0]}, points=[],
      max_failures=2, resources_per_trial={"cpu": 1})))
  outcome = sweep.run_sweep(spec, verbose=0)
  [trial] = spec.trials()
  assert outcome.failed == [trial.name]
  model_dir = Path(trial.model_dir)
  assert len(_attempts(model_dir)) == 1  # not retried
  rejected = json.loads((model_dir / sweep.REJECTED_FILE).read_text())["error"]
  assert "examples will be truncated by TASK_FEATURE_LENGTHS" in rejected
  assert not (model_dir / sweep.DONE_FILE).exists()
