"""Evaluator on toy seqio tasks with a model forced to answer "yes"; `recast eval`."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from recast.tasks import metrics as task_metrics
from recast.tasks import vocabularies
from recast.trainer import checkpoints, evaluation, network
from recast import cli, metrics_writer

VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 16, "targets": 8}
TASK, LOSS_ONLY_TASK, MIXTURE = "toy_eval_yes", "toy_eval_loss_only", "toy_eval_mixture"
EXAMPLES = [("q: sky blue?", "yes"), ("q: snow hot?", "no"), ("q: fire hot?", "yes"),
            ("q: ice cold?", "yes"), ("q: sun cold?", "no"), ("q: sea wet?", "yes"),
            ("q: rock soft?", "no")]
CONFIG = network.T5Config(vocab_size=384, d_model=32, num_heads=2, d_kv=8, d_ff=32,
                          num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


def _source(examples):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": [e[0] for e in examples],
                                               "targets": [e[1] for e in examples]})
  return seqio.FunctionDataSource(dataset_fn, splits=["validation"])


@pytest.fixture(scope="module", autouse=True)
def toy_tasks():
  features = {name: seqio.Feature(VOCAB, add_eos=True) for name in ("inputs", "targets")}
  preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  seqio.TaskRegistry.add(TASK, source=_source(EXAMPLES), preprocessors=preprocessors,
                         output_features=features, metric_fns=[task_metrics.accuracy])
  seqio.TaskRegistry.add(LOSS_ONLY_TASK, source=_source(EXAMPLES[:3]),
                         preprocessors=preprocessors, output_features=features)
  seqio.MixtureRegistry.add(MIXTURE, [TASK, LOSS_ONLY_TASK], default_rate=1.0)
  yield
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.remove(LOSS_ONLY_TASK)


def yes_params(seed=0):
  """A model whose decoder ignores everything but its input token and spells "yes":
  attention and MLP outputs are zero, and the logits map BOS->y, y->e, e->s, s->EOS."""
  params = nn.unbox(network.init_params(CONFIG, jax.random.PRNGKey(seed)))
  params = jax.tree_util.tree_map(np.asarray, params)
  for layer in params["decoder"]["layers_0"].values():
    for name in ("out", "wo"):
      if name in layer:
        layer[name] = np.zeros_like(layer[name])
  embedding = params["token_embedder"]["embedding"]
  normed = embedding / np.sqrt(np.mean(embedding ** 2, axis=-1, keepdims=True) + 1e-6)
  kernel = np.zeros((CONFIG.d_model, CONFIG.vocab_size), np.float32)
  y, e, s = VOCAB.encode("yes")
  for current, following in [(0, y), (y, e), (e, s), (s, 1)]:
    kernel[:, following] += 10.0 * normed[current]
  params["decoder"]["logits_dense"] = kernel
  return params


def _expected_teacher_forced(params, examples):
  """Loss per token and token accuracy by one direct forward pass over the examples."""
  pad = lambda ids, n: ids + [0] * (n - len(ids))
  enc = np.array([pad(VOCAB.encode(i) + [1], LENGTHS["inputs"]) for i, _ in examples])
  tgt = np.array([pad(VOCAB.encode(t) + [1], LENGTHS["targets"]) for _, t in examples])
  dec_in = np.concatenate([np.zeros((len(examples), 1), np.int32), tgt[:, :-1]], axis=1)
  logits = np.asarray(network.Transformer(CONFIG).apply({"params": params}, enc, dec_in, tgt))
  log_p = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tgt[..., None], -1)[..., 0]
  real = tgt > 0
  return -log_p[real].sum() / real.sum(), (logits.argmax(-1) == tgt)[real].mean()


def test_forced_model_metrics_match_its_predictions(tmp_path):
  params = yes_params()
  evaluator = evaluation.Evaluator(mixture_or_task_name=MIXTURE, task_feature_lengths=LENGTHS,
                                   config=CONFIG.replace(vocab_size=None), batch_size=4,
                                   model_dir=tmp_path)
  results = evaluator.evaluate(params, step=7)
  # Always "yes": accuracy is the share of "yes" targets (4 of 7).
  assert results[TASK]["accuracy"] == pytest.approx(100.0 * 4 / 7)
  loss, token_accuracy = _expected_teacher_forced(params, EXAMPLES)
  assert results[TASK]["loss"] == pytest.approx(loss, rel=1e-4)
  assert results[TASK]["token_accuracy"] == pytest.approx(token_accuracy, rel=1e-6)
  # A task without metric functions still gets its teacher-forced numbers.
  assert set(results[LOSS_ONLY_TASK]) == {"loss", "token_accuracy"}
  assert results[LOSS_ONLY_TASK]["loss"] == pytest.approx(
      _expected_teacher_forced(params, EXAMPLES[:3])[0], rel=1e-4)
  # Averages over the mixture's tasks.
  assert results[MIXTURE]["average"] == pytest.approx(100.0 * 4 / 7)
  assert results[MIXTURE]["loss"] == pytest.approx(
      (results[TASK]["loss"] + results[LOSS_ONLY_TASK]["loss"]) / 2)
  rows = [json.loads(line) for line in
          (tmp_path / evaluation.PREDICTIONS_DIR / f"{TASK}-7.jsonl").read_text().splitlines()]
  assert [r["inputs"] for r in rows] == [e[0] for e in EXAMPLES]
  assert [r["target"] for r in rows] == [e[1] for e in EXAMPLES]
  assert {r["prediction"] for r in rows} == {"yes"}
  assert {r["postprocessed_prediction"] for r in rows} == {"yes"}
  evaluator.close()


def test_num_examples_and_beam_search(tmp_path):
  params = yes_params()
  from recast.trainer import decoding
  evaluator = evaluation.Evaluator(
      mixture_or_task_name=TASK, task_feature_lengths=LENGTHS, config=CONFIG, batch_size=4,
      num_examples=2, decoding_options=decoding.DecodingOptions(method="beam_search",
                                                                num_beams=2))
  results = evaluator.evaluate(params, step=1)
  assert results[TASK]["accuracy"] == pytest.approx(50.0)  # "yes", "no": one right
  assert set(results) == {TASK}


def test_unknown_split_names_the_available_ones():
  with pytest.raises(evaluation.EvaluationError, match="no split 'test'; available: validation"):
    evaluation.Evaluator(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                         config=CONFIG, split="test")


def _run_eval(tmp_path, checkpoint_path, *extra):
  return cli.main(["eval", f"--gin.CHECKPOINT_PATH={checkpoint_path}",
                   f"--gin.MIXTURE_OR_TASK_NAME={TASK}",
                   f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=4", *extra])


def test_recast_eval_of_a_parameter_checkpoint(tmp_path, capsys):
  ckpt = checkpoints.save_param_checkpoint(tmp_path / "ckpt", yes_params(), config=CONFIG,
                                           vocabulary=vocabularies.describe(VOCAB))
  assert _run_eval(tmp_path, ckpt) == 2
  assert "EVAL_OUTPUT_DIR" in capsys.readouterr().err
  out = tmp_path / "out"
  assert _run_eval(tmp_path, ckpt, f"--gin.EVAL_OUTPUT_DIR={out}") == 0
  rows = {(r["step"], r["split"], r["task"], r["metric"]): r["value"]
          for r in metrics_writer.read_metrics(out)}
  assert rows[(0, "validation", TASK, "accuracy")] == pytest.approx(100.0 * 4 / 7)
  assert (0, "validation", TASK, "loss") in rows
  assert (out / evaluation.PREDICTIONS_DIR / f"{TASK}-0.jsonl").is_file()


def test_recast_eval_of_every_checkpoint_in_a_run(tmp_path):
  run = tmp_path / "run"
  saver = checkpoints.RunCheckpoints(run)
  meta = {"model": CONFIG.to_dict(), "vocabulary": vocabularies.describe(VOCAB),
          "data_position": 0}
  random_params = jax.tree_util.tree_map(
      np.asarray, nn.unbox(network.init_params(CONFIG, jax.random.PRNGKey(1))))
  saver.save(10, {"params": random_params}, meta=meta)
  saver.save(20, {"params": yes_params()}, meta=meta)
  saver.wait()
  saver.close()
  assert _run_eval(tmp_path, run) == 0
  rows = metrics_writer.read_metrics(run)
  accuracy = {r["step"]: r["value"] for r in rows if r["metric"] == "accuracy"}
  assert accuracy[20] == pytest.approx(100.0 * 4 / 7) and accuracy[10] < accuracy[20]
  assert {r["split"] for r in rows} == {"validation"} and {r["task"] for r in rows} == {TASK}
  assert {(r["step"], r["metric"]) for r in rows} >= {(10, "loss"), (20, "token_accuracy")}


def test_recast_eval_rejects_a_checkpoint_with_another_vocabulary(tmp_path, capsys):
  other = {"type": "sentencepiece", "size": 32100, "extra_ids": 100, "sha256": "x"}
  ckpt = checkpoints.save_param_checkpoint(tmp_path / "ckpt", yes_params(), config=CONFIG,
                                           vocabulary=other)
  assert _run_eval(tmp_path, ckpt, f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'out'}") == 2
  assert "vocabulary" in capsys.readouterr().err
  assert not (tmp_path / "out" / metrics_writer.METRICS_FILE).exists()
