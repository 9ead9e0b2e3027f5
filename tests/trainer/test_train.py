"""`recast train`: input pipeline, overfitting real RTE examples, and errors for bad input.

The toy task here (`register_toy_rte`) is also what test_resume and test_multiprocess
train on, in subprocesses; it reads the first 64 rows of ../shared/data/glue/rte.
"""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recast.mixtures import lookup
from recast.trainer import input_pipeline

REPO = Path(__file__).resolve().parents[2]
TOY_VOCAB = (REPO / ".venv/lib/python3.11/site-packages/seqio/test_data/sentencepiece/"
             "sentencepiece.model")
TOY_TASK = "toy_rte_64"
LABELS = ("entailment", "not entailment")  # the toy vocabulary has no "_"


def register_toy_rte(data_dir, *, name: str = TOY_TASK, num_examples: int = 64) -> str:
  """Registers a seqio task over the first `num_examples` RTE train rows (train and
  validation are the same rows), tokenised with seqio's 26-piece test vocabulary."""
  import seqio
  import tensorflow as tf
  from recast.tasks import metrics
  if name in seqio.TaskRegistry.names():
    return name
  rows = []
  with open(Path(data_dir) / "glue/rte/train.jsonl") as f:
    for line in f:
      rows.append(json.loads(line))
      if len(rows) == num_examples:
        break
  inputs = [f"rte sentence1: {r['sentence1']} sentence2: {r['sentence2']}" for r in rows]
  targets = [LABELS[r["label"]] for r in rows]

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})

  vocab = seqio.SentencePieceVocabulary(str(TOY_VOCAB))
  features = {"inputs": seqio.Feature(vocab, add_eos=True),
              "targets": seqio.Feature(vocab, add_eos=True)}
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=("train", "validation")),
      output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      metric_fns=[metrics.accuracy], shuffle_buffer_size=64)
  return name


# Registers the toy task and runs `recast train` in a subprocess. With HANG_AT set, the
# run stops making progress after writing the metrics of that step (so test_resume can
# kill it at a known point).
DRIVER = textwrap.dedent("""
    import importlib.util, os, sys, time
    spec = importlib.util.spec_from_file_location("toy", {test_train!r})
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    toy.register_toy_rte({data!r})
    from recast import cli, metrics_writer
    hang_at = int(os.environ.get("HANG_AT", "0"))
    if hang_at:
      write = metrics_writer.MetricsWriter.write
      def write_then_hang(self, step, *args, **kwargs):
        write(self, step, *args, **kwargs)
        if step == hang_at:
          open(os.path.join(self.model_dir, "hanging"), "w").close()
          time.sleep(600)
      metrics_writer.MetricsWriter.write = write_then_hang
    sys.exit(cli.main(sys.argv[1:]))
""")


def write_driver(path, data_dir) -> Path:
  """A script: `python DRIVER train --gin...` trains on the toy task in a subprocess."""
  path = Path(path)
  path.write_text(DRIVER.format(test_train=str(Path(__file__).resolve()), data=str(data_dir)))
  return path


@pytest.fixture(scope="module")
def toy_task(shared_data):
  return register_toy_rte(shared_data)


def _batches(n, **kwargs):
  ds = input_pipeline.train_dataset(**kwargs)
  return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def test_train_dataset_is_deterministic_and_resumes_at_the_right_batch(toy_task):
  kwargs = dict(mixture_or_task_name=toy_task, batch_size=4, seed=3,
                task_feature_lengths={"inputs": 32, "targets": 8})
  first = _batches(6, **kwargs)
  again = _batches(6, **kwargs)
  resumed = _batches(3, start_batch=3, **kwargs)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
  for a, b in zip(first[3:], resumed):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  assert set(first[0]) >= {"encoder_input_tokens", "decoder_target_tokens",
                           "decoder_segment_ids", "encoder_positions"}
  assert first[0]["encoder_input_tokens"].shape == (4, 32)
  other_seed = _batches(1, **{**kwargs, "seed": 4})
  assert not np.array_equal(first[0]["encoder_input_tokens"],
                            other_seed[0]["encoder_input_tokens"])


def test_process_shards_split_the_examples(toy_task):
  """Two processes' shards together hold the examples one process reads."""
  kwargs = dict(mixture_or_task_name=toy_task, batch_size=8, shuffle=False, pack=False,
                task_feature_lengths={"inputs": 32, "targets": 8})
  whole = _batches(1, **kwargs)[0]["encoder_input_tokens"]
  halves = [_batches(1, **{**kwargs, "batch_size": 4, "shard_index": i, "num_shards": 2})[0]
            for i in range(2)]
  rows = lambda a: sorted(map(tuple, a))
  assert rows(np.concatenate([h["encoder_input_tokens"] for h in halves])) == rows(whole)
  assert rows(halves[0]["encoder_input_tokens"]) != rows(halves[1]["encoder_input_tokens"])


def test_first_fit_packer_holds_more_examples_than_seqios(toy_task):
  """The default packer (tasks.packing) and seqio's give the same features; first fit puts
  more of the same examples into the same rows. An unknown packer is a named error."""
  from recast import errors
  kwargs = dict(mixture_or_task_name=toy_task, batch_size=8, shuffle=False,
                task_feature_lengths={"inputs": 2048, "targets": 64})
  ours, theirs = (_batches(4, **kwargs, packer=p) for p in ("first_fit", "seqio"))
  assert set(ours[0]) == set(theirs[0])
  assert all(a[k].shape == b[k].shape for a, b in zip(ours, theirs) for k in a)
  count = lambda batches: sum(input_pipeline.batch_counts(b)[0] for b in batches)
  assert count(ours) > count(theirs)
  with pytest.raises(errors.UserError, match="packer='best' is not a packer; use 'first_fit'"):
    input_pipeline.train_dataset(**kwargs, packer="best")


def test_batch_counts_counts_packed_examples_and_tokens():
  batch = {"encoder_input_tokens": np.array([[5, 6, 1, 7, 1, 0], [4, 1, 0, 0, 0, 0]]),
           "decoder_target_tokens": np.array([[3, 1, 3, 1], [2, 1, 0, 0]]),
           "decoder_segment_ids": np.array([[1, 1, 2, 2], [1, 1, 0, 0]])}
  assert input_pipeline.batch_counts(batch) == (3, 13)


def test_truncation_is_reported_and_too_much_is_an_error(toy_task):
  lengths = {"inputs": 64, "targets": 16}
  report = input_pipeline.truncation_report(mixture_or_task_name=toy_task, task_feature_lengths=lengths)
  # Every RTE input is longer than 64 pieces of the toy vocabulary; no target is.
  assert report["inputs"]["fraction"] == 1.0
  assert report["targets"]["fraction"] == 0.0
  assert report["targets"]["longest"] == 16  # "not entailment" + EOS
  with pytest.raises(input_pipeline.TruncationError, match=r"inputs: 100.0% longer than 64"):
    input_pipeline.check_truncation(report, task_feature_lengths=lengths, max_fraction=0.1,
                           name=toy_task)
  warning = input_pipeline.check_truncation(report, task_feature_lengths=lengths, max_fraction=1.0,
                                   name=toy_task)
  assert f"'inputs': {max(64, -(-report['inputs']['p99'] // 8) * 8)}" in warning
  fits = {"inputs": 4096, "targets": 16}
  assert input_pipeline.check_truncation(
      input_pipeline.truncation_report(mixture_or_task_name=toy_task, task_feature_lengths=fits),
      task_feature_lengths=fits, max_fraction=0.0, name=toy_task) is None


def test_a_cut_of_less_than_one_percent_suggests_lengths_that_keep_every_example():
  """When 99% fit already, suggesting the current lengths would be no advice: the warning
  names the lengths that keep every example seen whole."""
  report = {"inputs": {"fraction": 0.004, "longest": 72, "p99": 58},
            "targets": {"fraction": 0.0, "longest": 3, "p99": 3}}
  warning = input_pipeline.check_truncation(report, task_feature_lengths={"inputs": 64,
                                                                          "targets": 8},
                                            max_fraction=0.1, name="sst2")
  assert "99% already fit" in warning
  assert "{'inputs': 72, 'targets': 8}" in warning


def test_unknown_task_names_close_matches(toy_task):
  from recast import errors
  with pytest.raises(errors.UserError, match=r"toy_rte_46.*did you mean toy_rte_64"):
    lookup.get_mixture_or_task("toy_rte_46")


def test_drop_metrics_after_removes_rows_of_a_killed_run(tmp_path):
  from recast import metrics_writer
  writer = metrics_writer.MetricsWriter(tmp_path, tensorboard=False)
  for step in (10, 20, 30):
    writer.write(step, "train", "", {"loss": 1.0 / step})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "spl')  # torn by a kill
  assert metrics_writer.drop_rows_after(tmp_path, 20) == 1
  assert [r["step"] for r in metrics_writer.read_metrics(tmp_path)] == [10, 20]
  writer.write(30, "train", "", {"loss": 0.5})
  assert [r["step"] for r in metrics_writer.read_metrics(tmp_path)] == [10, 20, 30]


def toy_run_flags(model_dir, *, steps, task=TOY_TASK, extra=()):
  """`recast train` flags for the tiny model on the toy task (no dropout, lr 1e-2)."""
  return ["train", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/finetune.gin",
          f"--gin.MODEL_DIR={model_dir}", f"--gin.MIXTURE_OR_TASK_NAME={task}",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=64", "--gin.DROPOUT_RATE=0.0",
          "--gin.LEARNING_RATE=0.01", "--gin.EVAL_PERIOD=0",
          "--gin.train.max_truncated_fraction=1.0", *extra]


def _shapes(config):
  import flax.linen as nn
  import jax
  from recast.trainer import network
  return jax.eval_shape(lambda r: nn.unbox(network.init_params(config, r)),
                        jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def overfit_run(toy_task, tmp_path_factory):
  """200 steps of the tiny model on the 64 examples (every batch: 64 of them), then an
  evaluation (greedy decoding) on the same 64 examples. (At 150 steps the last examples
  were on a knife edge in bf16: 87.5-100% across runs whose gradients differed by float32
  rounding; at 200 each of them, and float32, decoded all 64, loss 0.0023.)

  Returns (MODEL_DIR, what the run printed to stdout, to stderr)."""
  import contextlib
  import io
  from recast import cli
  model_dir = tmp_path_factory.mktemp("overfit") / "run"
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(toy_run_flags(model_dir, steps=200, extra=[
        "--gin.train.stats_period=50", "--gin.EVAL_PERIOD=200"]))
  assert code == 0, err.getvalue()
  return model_dir, out.getvalue(), err.getvalue()


def test_tiny_model_overfits_64_rte_examples(toy_task, overfit_run):
  from recast import metrics_writer
  model_dir, out, err = overfit_run
  validation = {r["metric"]: r["value"] for r in metrics_writer.read_metrics(model_dir)
                if r["split"] == "validation" and r["task"] == toy_task and r["step"] == 200}
  assert validation["accuracy"] == 100.0  # greedy decoding of all 64 training examples
  assert validation["token_accuracy"] == 1.0
  predictions = list((model_dir / "inference_eval").glob("*"))
  assert predictions and len(predictions[0].read_text().splitlines()) == 64
  rows = [r for r in metrics_writer.read_metrics(model_dir)
          if r["metric"] == "loss" and r["split"] == "train"]
  assert [r["step"] for r in rows] == [50, 100, 150, 200]
  assert rows[-1]["value"] < 0.05 < rows[0]["value"]
  # Each window's rates share its wall time: 64 examples a step, so examples/s = 64 steps/s.
  rates = {(r["step"], r["metric"]): r["value"] for r in metrics_writer.read_metrics(model_dir)
           if r["split"] == "train" and r["metric"].endswith("_per_second")}
  for step in (50, 100, 150, 200):
    assert rates[step, "steps_per_second"] > 0
    assert rates[step, "examples_per_second"] == pytest.approx(
        64 * rates[step, "steps_per_second"], rel=1e-9)
  assert (model_dir / "config.gin").is_file()
  assert "T5Config.d_model = 64" in (model_dir / "operative_config.gin").read_text()
  assert "step 200/200 loss" in out and "tokens/s" in out and "ETA" in out
  assert "truncated" in err  # every input is longer than 64 toy-vocabulary pieces


def test_majority_class_baseline_is_recorded_once(toy_task, overfit_run, shared_data):
  import collections
  from recast import metrics_writer
  model_dir, _, _ = overfit_run
  with open(Path(shared_data) / "glue/rte/train.jsonl") as f:
    labels = [json.loads(line)["label"] for _, line in zip(range(64), f)]
  majority = collections.Counter(labels).most_common(1)[0][1] / 64 * 100
  rows = [r for r in metrics_writer.read_metrics(model_dir)
          if r["split"] == metrics_writer.BASELINE_SPLIT]
  assert [(r["step"], r["task"], r["metric"]) for r in rows] == [(0, toy_task, "accuracy")]
  assert rows[0]["value"] == pytest.approx(majority) and 50 <= majority < 100


def test_console_and_train_log_say_how_the_run_went(toy_task, overfit_run):
  import re
  model_dir, out, _ = overfit_run
  lines = out.splitlines()
  assert lines[0].startswith(f"recast train: {model_dir} ({toy_task}; ")
  assert "batch 64, steps to 200" in lines[0]
  first = [l for l in lines if l.startswith("first step done")]
  assert len(first) == 1 and re.fullmatch(
      r"first step done [0-9.]+ s after start \(state ready at [0-9.]+ s; the train step's "
      r"compilation, overlapping that, took [0-9.]+ s\)", first[0])
  assert lines.index(first[0]) < lines.index(next(l for l in lines if l.startswith("step 50/")))
  evals = [l for l in lines if l.startswith("eval step")]
  assert evals == [l for l in evals if l.startswith(f"eval step 200 {toy_task}: ")]
  assert len(evals) == 1 and "accuracy 100" in evals[0] and "token_accuracy 1" in evals[0]
  assert f"saved {model_dir}/checkpoint_200" in lines
  assert any(l.startswith(f"majority-class baseline {toy_task}: accuracy ") for l in lines)
  done = lines[-1]
  assert done.startswith("done: steps 0 -> 200 in ")
  assert f"best {toy_task}/accuracy 100 at step 200 (checkpoint_200)" in done
  logged = (model_dir / "train.log").read_text().splitlines()
  stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
  logged = [re.sub(stamp, "", l, count=1) for l in logged if re.match(stamp, l)]
  assert logged[0].startswith("warning: ") and "truncated" in logged[0]  # stderr's, logged too
  assert logged[1:] == [l for l in lines if not l.startswith("WARNING")]


def test_a_run_shorter_than_eval_period_is_evaluated_at_its_end(toy_task, tmp_path):
  import contextlib
  import io
  from recast import cli, metrics_writer
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    assert cli.main(toy_run_flags(tmp_path / "run", steps=2, extra=[
        "--gin.EVAL_PERIOD=200", "--gin.Evaluator.num_examples=8"])) == 0
  steps = {r["step"] for r in metrics_writer.read_metrics(tmp_path / "run")
           if r["split"] == "validation"}
  assert steps == {2}
  assert "eval step 2 " in out.getvalue()


def test_a_resume_in_another_activation_dtype_says_so(toy_task, tmp_path):
  """ACTIVATION_DTYPE='auto' resolves per machine: a run resumed where it resolves
  otherwise (here: set by hand) continues, and the console says which steps ran in which."""
  import contextlib
  import io
  from recast import cli
  flags = lambda steps, dtype: toy_run_flags(tmp_path / "run", steps=steps, extra=[
      f"--gin.ACTIVATION_DTYPE='{dtype}'"])
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    assert cli.main(flags(2, "float32")) == 0
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    assert cli.main(flags(4, "bfloat16")) == 0
  assert ("note: steps up to 2 ran with float32 activations, these run with bfloat16 "
          "(ACTIVATION_DTYPE); --gin.ACTIVATION_DTYPE=\"'float32'\" keeps float32"
          in out.getvalue())


def _snapshot(folder):
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in Path(folder).rglob("*")}


def _run_cli(flags, capsys):
  from recast import cli
  code = cli.main(flags)
  return code, capsys.readouterr().err


def test_missing_required_macros_are_named(tmp_path, capsys):
  code, err = _run_cli(["train", "--gin_file=models/t5_1_1/tiny.gin",
                        "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR={tmp_path / 'r'}",
                        "--gin.TRAIN_STEPS=10"], capsys)
  assert code == 2
  assert "needs MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS set" in err
  assert "--gin.MIXTURE_OR_TASK_NAME=..." in err and "Traceback" not in err
  assert not (tmp_path / "r").exists()


def test_unknown_task_from_the_command_line(toy_task, tmp_path, capsys):
  code, err = _run_cli(toy_run_flags(tmp_path / "r", steps=1, task="toy_rte64"), capsys)
  assert code == 2
  assert "no task or mixture named 'toy_rte64'; did you mean toy_rte_64?" in err
  assert not (tmp_path / "r").exists()


def test_checkpoint_of_another_shape_is_rejected_and_kept(overfit_run, capsys):
  model_dir = overfit_run[0]
  before = _snapshot(model_dir)
  code, err = _run_cli(toy_run_flags(model_dir, steps=300,
                                     extra=["--gin.T5Config.d_model=32"]), capsys)
  assert code == 2
  assert "checkpoint_200 does not fit the model" in err
  assert "decoder/decoder_norm/scale: checkpoint (64,) vs model (32,)" in err
  assert "In call to configurable" not in err
  assert _snapshot(model_dir) == before


def test_checkpoint_of_another_vocabulary_is_rejected_and_kept(overfit_run, capsys):
  import seqio
  model_dir = overfit_run[0]
  if "toy_rte_bytes" not in seqio.TaskRegistry.names():
    task = seqio.get_mixture_or_task(TOY_TASK)
    features = {k: seqio.Feature(seqio.ByteVocabulary(), add_eos=True) for k in
                ("inputs", "targets")}
    seqio.TaskRegistry.add("toy_rte_bytes", source=task.source, output_features=features,
                           preprocessors=task.preprocessors)
  before = _snapshot(model_dir)
  code, err = _run_cli(toy_run_flags(model_dir, steps=300, task="toy_rte_bytes"), capsys)
  assert code == 2
  assert "vocabulary mismatch" in err and "type: " in err and "'sentencepiece'" in err
  assert _snapshot(model_dir) == before


def test_initial_checkpoint_path_starts_from_its_parameters(overfit_run, tmp_path, capsys):
  """A parameter checkpoint (recast convert's format) of the overfit model: training
  starts at step 0 with fresh optimizer state but already-low loss; one of another shape
  is rejected before anything is written."""
  from recast.trainer import checkpoints, network
  from recast import metrics_writer
  model_dir = overfit_run[0]
  meta = checkpoints.read_meta(model_dir / "checkpoint_200")
  config = network.T5Config(**meta["model"])
  params = checkpoints.load_initial_params(model_dir, expected_params=_shapes(config),
                                               vocabulary=meta["vocabulary"])
  ckpt = checkpoints.save_param_checkpoint(tmp_path / "init", params, config=config,
                                           vocabulary=meta["vocabulary"])
  small = checkpoints.save_param_checkpoint(
      tmp_path / "small", _random_params(config.replace(d_ff=32)), config=config)
  code, err = _run_cli(toy_run_flags(tmp_path / "bad", steps=1, extra=[
      f"--gin.INITIAL_CHECKPOINT_PATH={small}"]), capsys)
  assert code == 2 and "does not fit the model" in err
  assert "mlp/wi_0: checkpoint (64, 32) vs model (64, 128)" in err
  assert not (tmp_path / "bad").exists()

  assert _run_cli(toy_run_flags(tmp_path / "ft", steps=1, extra=[
      f"--gin.INITIAL_CHECKPOINT_PATH={ckpt}", "--gin.train.stats_period=1"]), capsys)[0] == 0
  loss = [r["value"] for r in metrics_writer.read_metrics(tmp_path / "ft")
          if r["metric"] == "loss"]
  assert len(loss) == 1 and loss[0] < 0.1  # from scratch the first loss is about 5
  assert checkpoints.read_meta(tmp_path / "ft" / "checkpoint_1")["data_position"] == 1


def _random_params(config):
  import flax.linen as nn
  import jax
  from recast.trainer import network
  return nn.unbox(network.init_params(config, jax.random.PRNGKey(0)))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(toy_task, tmp_path,
                                                                   capsys):
  """Step 1 updates with learning rate 0; step 2 with 1e38 blows the parameters up."""
  from recast.trainer import checkpoints
  model_dir = tmp_path / "nan"
  code, err = _run_cli(toy_run_flags(model_dir, steps=4, extra=[
      "--gin.BATCH_SIZE=8", "--gin.CHECKPOINT_PERIOD=1",
      "--gin.create_optimizer.learning_rate_schedule=@linear_warmup_schedule()",
      "--gin.linear_warmup_schedule.peak_learning_rate=1e38",
      "--gin.linear_warmup_schedule.warmup_steps=2",
      "--gin.linear_warmup_schedule.total_steps=10"]), capsys)
  assert code == 2
  assert "at step 2" in err and "checkpoint_1, is intact" in err and "LEARNING_RATE" in err
  assert checkpoints.checkpoint_steps(model_dir) == [1]
