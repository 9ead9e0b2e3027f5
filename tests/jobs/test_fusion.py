"""Checkpoint averaging (`recast fuse average`) and the ColD Fusion round settings.

The rounds end to end on real tasks are in test_cold_fusion_rounds below (slow: four
`recast train` subprocesses); the averaging tests use tiny random checkpoints, some of them
converted from random Hugging Face T5 models.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from recast import atomic_files, cli, metrics_writer
from recast.trainer import checkpoints, network
from recast.jobs import fusion, launcher

CONFIG = network.T5Config(vocab_size=128, d_model=32, num_heads=2, d_kv=8, d_ff=48,
                          num_encoder_layers=1, num_decoder_layers=2)
SPM = {"type": "sentencepiece", "size": 128, "extra_ids": 100, "sha256": "aa"}


def _flat(params) -> dict[str, np.ndarray]:
  return {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _random_checkpoint(path, seed, config=CONFIG, vocabulary=SPM) -> Path:
  params = nn.unbox(network.init_params(config, jax.random.PRNGKey(seed)))
  # Spread magnitudes so float32 rounding of the mean matters.
  params = jax.tree_util.tree_map(lambda x: np.asarray(x) * (1 + 100 * seed), params)
  return checkpoints.save_param_checkpoint(path, params, config=config, vocabulary=vocabulary)


def _hf_folder(tmp_path, seed, vocab_size=128) -> Path:
  """A random Hugging Face T5 (t5-v1_1 layout) saved with save_pretrained."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(seed)
  config = transformers.T5Config(
      vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=1,
      num_decoder_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config)
  with torch.no_grad():
    model.lm_head.weight.copy_(torch.randn(vocab_size, 32))
  hf_dir = tmp_path / f"hf_{seed}"
  model.save_pretrained(hf_dir, safe_serialization=True)
  return hf_dir


def _hf_checkpoint(tmp_path, seed) -> Path:
  from recast.trainer import convert
  return convert.hf_to_recast(_hf_folder(tmp_path, seed), tmp_path / f"converted_{seed}")


def _exact_mean(arrays, weights=None) -> np.ndarray:
  stack = np.stack([a.astype(np.float64) for a in arrays])
  w = np.ones(len(arrays)) if weights is None else np.asarray(weights, np.float64)
  return (np.tensordot(w, stack, axes=1) / w.sum()).astype(np.float32)


@pytest.fixture(scope="module")
def mixed_checkpoints(tmp_path_factory):
  """Two checkpoints converted from random HF models and one recast-native, same shapes."""
  tmp = tmp_path_factory.mktemp("mixed")
  hf_a, hf_b = _hf_checkpoint(tmp, 1), _hf_checkpoint(tmp, 2)
  config = checkpoints.load_config(hf_a)
  vocabulary = checkpoints.read_metadata(hf_a)["vocabulary"]
  native = _random_checkpoint(tmp / "native", 3, config=config, vocabulary=vocabulary)
  return [hf_a, hf_b, native]


def test_average_is_exact_elementwise_mean_incl_hugging_face(mixed_checkpoints, tmp_path):
  out = fusion.average_checkpoints(mixed_checkpoints, out=tmp_path / "fused")
  fused = _flat(checkpoints.load_params(out))
  inputs = [_flat(checkpoints.load_params(p)) for p in mixed_checkpoints]
  assert fused.keys() == inputs[0].keys() and len(fused) > 20
  for name, value in fused.items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, _exact_mean([x[name] for x in inputs]), err_msg=name)
  # The mean really mixes: it differs from every input.
  name = "decoder/logits_dense"
  assert all(not np.array_equal(fused[name], x[name]) for x in inputs)
  assert checkpoints.load_config(out) == checkpoints.load_config(mixed_checkpoints[0])


def test_weighted_average_and_parameter_subset(mixed_checkpoints, tmp_path):
  weights = [2490.0, 3668.0, 250.0]
  inputs = [_flat(checkpoints.load_params(p)) for p in mixed_checkpoints]
  weighted = _flat(checkpoints.load_params(fusion.average_checkpoints(
      mixed_checkpoints, out=tmp_path / "weighted", weights=weights)))
  for name, value in weighted.items():
    np.testing.assert_array_equal(value, _exact_mean([x[name] for x in inputs], weights))
  subset = _flat(checkpoints.load_params(fusion.average_checkpoints(
      mixed_checkpoints, out=tmp_path / "subset", params_regex=r"^encoder/")))
  averaged = [n for n in subset if n.startswith("encoder/")]
  assert averaged and len(averaged) < len(subset)
  for name, value in subset.items():
    expected = (_exact_mean([x[name] for x in inputs]) if name.startswith("encoder/")
                else inputs[0][name])
    np.testing.assert_array_equal(value, expected, err_msg=name)


def test_average_of_copies_is_the_model(tmp_path):
  one = _random_checkpoint(tmp_path / "one", 7)
  original = _flat(checkpoints.load_params(one))
  for i, weights in enumerate([None, [1.0, 3.0, 0.5, 2.0]]):
    fused = _flat(checkpoints.load_params(fusion.average_checkpoints(
        [one] * 4, out=tmp_path / f"copies_{i}", weights=weights)))
    for name, value in original.items():
      np.testing.assert_array_equal(fused[name], value, err_msg=name)


def test_a_fusion_folder_names_its_last_finished_round(tmp_path):
  """A FUSION_DIR as a checkpoint path (INITIAL_CHECKPOINT_PATH, a fusion input, a study's
  reference to a fuse stage): its last round with DONE; an unfinished round is skipped."""
  folder = tmp_path / "fusion"
  folder.mkdir()
  atomic_files.write_json(folder / fusion.SETTINGS_FILE, {"pool": ["t"]})
  with pytest.raises(checkpoints.CheckpointError, match="no finished round yet"):
    checkpoints.resolve(folder, what="INITIAL_CHECKPOINT_PATH")
  for r in range(3):
    _random_checkpoint(folder / f"round_{r}" / "fused", r)
    if r < 2:  # round 2 averaged but not yet scored: not finished
      atomic_files.write_json(folder / f"round_{r}" / fusion.DONE, {"round": r})
  [latest] = checkpoints.resolve(folder)
  assert latest.folder == folder / "round_1" / "fused" and latest.step == 1
  assert [r.step for r in checkpoints.resolve(folder, mode="all")] == [0, 1]
  copied = _flat(checkpoints.load_params(fusion.average_checkpoints([folder],
                                                                     out=tmp_path / "copy")))
  for name, value in _flat(checkpoints.load_params(folder / "round_1" / "fused")).items():
    np.testing.assert_array_equal(copied[name], value, err_msg=name)


def test_round_scores_keep_decoded_and_rank_classification_apart():
  scores = fusion.task_scores({"a": {"accuracy": 60.0, "f1": 40.0, "rank_accuracy": 70.0,
                                     "rank_f1": 50.0, "loss": 2.0}, "b": {"accuracy": 30.0}},
                              ["a", "b"])
  assert scores["a"]["score"] == 50.0 and scores["a"]["rank_score"] == 60.0
  assert scores["b"]["score"] == 30.0 and "rank_score" not in scores["b"]


def test_average_streams_one_tensor_at_a_time(tmp_path, monkeypatch):
  paths = [_random_checkpoint(tmp_path / f"c{i}", i) for i in range(3)]
  reads = []
  read_param = fusion.read_param
  monkeypatch.setattr(fusion, "read_param",
                      lambda src, name, struct: reads.append(name) or read_param(
                          src, name, struct))
  monkeypatch.setattr(checkpoints, "load_params",
                      lambda *a, **k: pytest.fail("a whole model was loaded"))
  fusion.average_checkpoints(paths, out=tmp_path / "fused")
  structs = fusion.param_structs(fusion.open_checkpoint(paths[0]))
  assert sorted(reads) == sorted(list(structs) * 3)


def test_cannot_fuse_different_shapes_or_vocabularies(tmp_path):
  a = _random_checkpoint(tmp_path / "a", 0)
  wider = _random_checkpoint(tmp_path / "wider", 1, config=CONFIG.replace(d_ff=64))
  byte = _random_checkpoint(tmp_path / "byte", 2, vocabulary=dict(SPM, type="byte",
                                                                   sha256=None))
  other_spm = _random_checkpoint(tmp_path / "other_spm", 3, vocabulary=dict(SPM, sha256="bb"))
  with pytest.raises(fusion.FusionError, match=r"parameters differ.*wi_0: \(32, 48\) "
                     r"vs \(32, 64\)"):
    fusion.average_checkpoints([a, wider], out=tmp_path / "x")
  for bad in (byte, other_spm):
    with pytest.raises(fusion.FusionError, match="different vocabularies"):
      fusion.average_checkpoints([a, bad], out=tmp_path / "x")
  with pytest.raises(fusion.FusionError, match="3 weights for 2 checkpoints"):
    fusion.average_checkpoints([a, a], out=tmp_path / "x", weights=[1, 2, 3])
  with pytest.raises(fusion.FusionError, match="matches no parameter"):
    fusion.average_checkpoints([a, a], out=tmp_path / "x", params_regex="^nothing")
  with pytest.raises(fusion.FusionError, match="holds no checkpoint"):
    fusion.average_checkpoints([a, tmp_path], out=tmp_path / "x")
  assert not (tmp_path / "x").exists()
  # Settings that don't change the parameters (kernel choice, activation dtype) may differ.
  xla = _random_checkpoint(tmp_path / "xla", 4, config=CONFIG.replace(
      attention_implementation="xla", dtype="bfloat16"))
  assert fusion.average_checkpoints([a, xla], out=tmp_path / "ok").exists()


def test_cli_average(tmp_path, capsys):
  a, b = _random_checkpoint(tmp_path / "a", 0), _random_checkpoint(tmp_path / "b", 1)
  out = tmp_path / "fused"
  assert cli.main(["fuse", "average", str(a), str(b), "--out", str(out),
                   "--weights", "1", "3"]) == 0
  fused = _flat(checkpoints.load_params(out))
  xa, xb = _flat(checkpoints.load_params(a)), _flat(checkpoints.load_params(b))
  np.testing.assert_array_equal(fused["encoder/encoder_norm/scale"], _exact_mean(
      [xa["encoder/encoder_norm/scale"], xb["encoder/encoder_norm/scale"]], [1, 3]))
  assert cli.main(["fuse", "average", str(a), str(b), "--out", str(out)]) == 2
  assert "already exists" in capsys.readouterr().err
  wider = _random_checkpoint(tmp_path / "wider", 2, config=CONFIG.replace(d_model=48))
  assert cli.main(["fuse", "average", str(a), str(wider), "--out", str(tmp_path / "y")]) == 2
  assert "cannot fuse" in capsys.readouterr().err


def test_base_converted_from_hugging_face(tmp_path):
  from recast.tasks import vocabularies
  from recast.trainer import convert
  byte = vocabularies.byte_vocabulary()
  hf = _hf_folder(tmp_path, 4, vocab_size=byte.vocab_size)
  kwargs = dict(vocabulary=byte, vocab_description=vocabularies.describe(byte), seed=0)
  fused = fusion.prepare_base(tmp_path / "round_0", base_checkpoint=str(hf), **kwargs)
  direct = convert.hf_to_recast(hf, tmp_path / "direct")
  assert checkpoints.load_config(fused) == checkpoints.load_config(direct)
  want, got = _flat(checkpoints.load_params(direct)), _flat(checkpoints.load_params(fused))
  assert all(np.array_equal(got[n], want[n]) for n in want)
  wrong = _hf_folder(tmp_path, 5, vocab_size=128)
  with pytest.raises(fusion.FusionError, match=f"vocab_size 128 but the pool's vocabulary "
                     f"has {byte.vocab_size}"):
    fusion.prepare_base(tmp_path / "other_round_0", base_checkpoint=str(wrong), **kwargs)
  assert not (tmp_path / "other_round_0" / "fused").exists()


def test_contributor_sampling_and_bad_settings():
  pool = ["glue_rte", "glue_mrpc", "glue_cola", "super_glue_cb", "glue_stsb"]
  picks = [fusion.sample_contributors(pool, round_index=r, count=3, seed=0)
           for r in range(1, 6)]
  assert all(len(p) == 3 and set(p) <= set(pool) for p in picks)
  assert picks == [fusion.sample_contributors(pool, round_index=r, count=3, seed=0)
                   for r in range(1, 6)]  # deterministic for a seed
  assert len({tuple(p) for p in picks}) > 1  # and varies over rounds
  assert fusion.sample_contributors(pool, round_index=1, count=None, seed=0) == pool
  ok = dict(rounds=3, contributors_per_round=3, contributor_steps=2, fusion_rule="mean")
  with pytest.raises(fusion.FusionError, match="pool is empty"):
    fusion.check_settings(pool=[], **ok)
  with pytest.raises(fusion.FusionError, match="CONTRIBUTORS_PER_ROUND=6 but the pool has 5"):
    fusion.check_settings(pool=pool, **dict(ok, contributors_per_round=6))
  with pytest.raises(fusion.FusionError, match="FUSION_RULE='median'"):
    fusion.check_settings(pool=pool, **dict(ok, fusion_rule="median"))
  fusion.check_settings(pool=pool, **ok)


def test_cli_rejects_bad_pool_before_training(tmp_path, capsys):
  base = ["fuse", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=experiments/cold_fusion.gin",
          f"--gin.FUSION_DIR={tmp_path / 'f'}", "--gin.VOCABULARY='byte'"]
  assert cli.main(base + ["--gin.CONTRIBUTOR_POOL=[]"]) == 2
  assert "pool is empty" in capsys.readouterr().err
  assert cli.main(base + ["--gin.CONTRIBUTOR_POOL=['glue_rte', 'glue_cola']",
                          "--gin.CONTRIBUTORS_PER_ROUND=3"]) == 2
  assert "CONTRIBUTORS_PER_ROUND=3 but the pool has 2" in capsys.readouterr().err
  assert not (tmp_path / "f").exists()


# ------------------------------------------------------------------------------------------
# Rounds end to end: real GLUE/SuperGLUE tasks, tiny model, killed in round 2 and resumed.

POOL = ["glue_rte", "glue_mrpc", "glue_cola", "super_glue_cb"]


def _fuse_argv(fusion_dir, data_dir) -> list[str]:
  return [sys.executable, "-m", "recast", "fuse", "--gin_file=models/t5_1_1/tiny.gin",
          "--gin_file=experiments/cold_fusion.gin", f"--gin.FUSION_DIR={fusion_dir}",
          f"--gin.DATA_DIR={data_dir}", "--gin.VOCABULARY='byte'",
          f"--gin.CONTRIBUTOR_POOL={POOL!r}", "--gin.ROUNDS=2",
          "--gin.CONTRIBUTORS_PER_ROUND=2", "--gin.CONTRIBUTOR_STEPS=3",
          "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}",
          "--gin.train.max_truncated_fraction=1.0", "--gin.train.stats_period=3",
          "--gin.NUM_EVAL_EXAMPLES=8", "--gin.FUSION_PARALLEL='sequential'"]


def _events(fusion_dir) -> list[dict]:
  path = Path(fusion_dir) / fusion.EVENTS_FILE
  return atomic_files.read_jsonl(path) if path.exists() else []


@pytest.fixture(scope="module")
def fusion_run(shared_data, tmp_path_factory):
  """Runs 2 rounds x 2 contributors; kills the driver (and its running contributor) once
  the first contributor of round 2 is done; runs the same command again to the end.
  Returns (FUSION_DIR, {marker file: mtime} of round-1 files taken at the kill)."""
  fusion_dir = tmp_path_factory.mktemp("cold_fusion") / "run"
  argv = _fuse_argv(fusion_dir, shared_data)
  repo = Path(__file__).resolve().parents[2]
  log = open(fusion_dir.parent / "driver.log", "wb")
  driver = subprocess.Popen(argv, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
  deadline = time.time() + 1500
  while time.time() < deadline and driver.poll() is None:
    if any(e["event"] == "contributor_done" and e["round"] == 2 for e in _events(fusion_dir)):
      break
    time.sleep(1)
  assert driver.poll() is None, (fusion_dir.parent / "driver.log").read_text()[-3000:]
  os.killpg(driver.pid, signal.SIGKILL)
  driver.wait()
  round_1 = fusion_dir / "round_1"
  stamps = {p: p.stat().st_mtime_ns for p in
            [round_1 / "DONE", round_1 / "fused" / checkpoints.METADATA_FILE,
             *round_1.glob("contributors/*/DONE"), *fusion_dir.glob("round_2/contributors/*/DONE")]}
  resumed = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=1500)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  print(resumed.stdout)
  return fusion_dir, stamps


@pytest.mark.timeout(3000)
@pytest.mark.slow  # many processes: `make test-slow`
def test_cold_fusion_rounds_end_to_end(fusion_run):
  fusion_dir, _ = fusion_run
  base = checkpoints.load_config(fusion_dir / "round_0" / "fused")
  assert (base.d_model, base.num_encoder_layers) == (64, 2)  # tiny.gin
  for r in (1, 2):
    round_dir = fusion_dir / f"round_{r}"
    chosen = json.loads((round_dir / "contributors.json").read_text())
    assert chosen == fusion.sample_contributors(POOL, round_index=r, count=2, seed=0)
    assert (round_dir / "DONE").is_file()
    members = [round_dir / "contributors" / t for t in chosen]
    for member in members:
      assert (member / "DONE").is_file()
      assert f"round_{r - 1}/fused" in (member / "config.gin").read_text()  # shared model
    # The fused model is the exact mean of the contributors' fine-tuned parameters.
    fused = _flat(checkpoints.load_params(round_dir / "fused"))
    name = "encoder/layers_0/mlp/wi_0"
    contributed = [fusion.read_param(fusion.open_checkpoint(m), name,
                                     jax.ShapeDtypeStruct(fused[name].shape, np.float32))
                   for m in members]
    np.testing.assert_array_equal(fused[name], _exact_mean(contributed))
    assert not np.array_equal(contributed[0], contributed[1])
  rows = fusion.score_rows(fusion_dir)
  assert [row["round"] for row in rows] == [0, 1, 2]
  for row in rows:
    assert all(0 <= row[t] <= 100 for t in POOL)
    assert row["average"] == pytest.approx(np.mean([row[t] for t in POOL]))
    assert 0 < row["loss"] < 20 and 0 <= row["token_accuracy"] <= 1
  # Fine-tuning on the pool lowers the fused model's teacher-forced loss below the base's.
  assert rows[-1]["loss"] < rows[0]["loss"]
  table = (fusion_dir / "scores.md").read_text()
  lines = [line for line in table.splitlines() if line.startswith("| ")]
  assert lines[0] == ("| round | glue_cola | glue_mrpc | glue_rte | super_glue_cb | average | "
                      "rank_average | loss | token_accuracy |")
  for r, row in enumerate(rows):  # rank classification averaged apart from decoding
    scores = json.loads((fusion_dir / f"round_{r}" / fusion.SCORES_FILE).read_text())
    assert row["rank_average"] == pytest.approx(np.mean([scores[t]["rank_score"]
                                                         for t in POOL]))
  assert [line.split(" | ")[0] for line in lines[1:]] == ["| 0", "| 1", "| 2"]
  assert (fusion_dir / "scores.png").stat().st_size > 1000
  averages = {(r["step"]) for r in metrics_writer.read_metrics(fusion_dir)
              if r["task"] == "average"}
  assert averages == {0, 1, 2}
  print(table)


@pytest.mark.timeout(3000)
@pytest.mark.slow  # many processes: `make test-slow`
def test_resume_after_kill_redoes_no_finished_contributor(fusion_run):
  fusion_dir, stamps = fusion_run
  for path, mtime in stamps.items():
    assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
  starts = [(e["round"], e["task"]) for e in _events(fusion_dir)
            if e["event"] == "contributor_started"]
  done = [(e["round"], e["task"]) for e in _events(fusion_dir)
          if e["event"] == "contributor_done"]
  assert sorted(done) == sorted(set(done)) and len(done) == 4  # each finished exactly once
  assert all(starts.count((1, t)) == 1 for t in
             json.loads((fusion_dir / "round_1/contributors.json").read_text()))
  round_2 = [t for r, t in starts if r == 2]
  finished_before_kill = [p.parent.name for p in stamps if "round_2" in str(p)]
  assert len(finished_before_kill) >= 1
  assert all(round_2.count(t) == 1 for t in finished_before_kill)
  assert len(round_2) <= 3  # at most the one killed mid-run started again


def test_jobs_run_one_per_gpu_through_ray(ray_session, tmp_path):
  """With (fake) GPUs in Ray, each job is a Ray task holding one GPU: Ray gives each its
  own CUDA_VISIBLE_DEVICES, and the driver's callbacks run for every job."""
  import psutil
  # The local Ray recast starts (conftest's, through launcher.connect_ray): token
  # authentication on, no dashboard listening.
  assert os.environ.get("RAY_AUTH_MODE") == "token"
  listening = {c.laddr.port for c in psutil.net_connections(kind="inet")
               if c.status == psutil.CONN_LISTEN}
  assert 8265 not in listening  # Ray's dashboard port
  calls = []
  jobs = [launcher.TrainJob(
      [sys.executable, "-c", "import os; print('gpu=' + os.environ['CUDA_VISIBLE_DEVICES'])"],
      tmp_path / f"job{i}.log", on_start=lambda i=i: calls.append(("start", i)),
      on_done=lambda i=i: calls.append(("done", i))) for i in range(2)]
  launcher.run_jobs(jobs, parallel="ray")
  gpus = {line for i in range(2) for line in (tmp_path / f"job{i}.log").read_text().split()
          if line.startswith("gpu=")}
  assert gpus == {"gpu=0", "gpu=1"}
  assert sorted(calls) == [("done", 0), ("done", 1), ("start", 0), ("start", 1)]
  failing = launcher.TrainJob([sys.executable, "-c", "raise SystemExit(3)"],
                              tmp_path / "bad.log")
  with pytest.raises(Exception, match="exited with 3"):
    launcher.run_jobs([failing, failing], parallel="ray")
