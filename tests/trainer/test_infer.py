"""`recast infer`: predictions for a file of inputs or a task split, and score mode."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from recast.tasks import vocabularies
from recast.trainer import checkpoints, infer, network
from recast import cli

VOCAB = seqio.ByteVocabulary()
LENGTHS = "{'inputs': 16, 'targets': 8}"
TASK = "toy_infer_yes"
CONFIG = network.T5Config(vocab_size=384, d_model=32, num_heads=2, d_kv=8, d_ff=32,
                          num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


def yes_params():
  """A decoder that only looks at its input token and spells "yes" (BOS->y->e->s->EOS)."""
  params = jax.tree_util.tree_map(
      np.asarray, nn.unbox(network.init_params(CONFIG, jax.random.PRNGKey(0))))
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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return checkpoints.save_param_checkpoint(
      tmp_path_factory.mktemp("infer") / "ckpt", yes_params(), config=CONFIG,
      vocabulary=vocabularies.describe(VOCAB))


def _infer(checkpoint, out, *bindings):
  return cli.main(["infer", f"--gin.CHECKPOINT_PATH={checkpoint}",
                   f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.INFER_OUTPUT_DIR={out}",
                   "--gin.BATCH_SIZE=4", *bindings])


def _rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_infer_writes_one_prediction_per_input_line(checkpoint, tmp_path):
  inputs = ["is the sky blue?", "", "is fire cold?", "a", "b", "c"]  # the blank line is skipped
  (tmp_path / "questions.txt").write_text("\n".join(inputs) + "\n")
  assert _infer(checkpoint, tmp_path / "out",
                f"--gin.INPUT_FILE={tmp_path / 'questions.txt'}") == 0
  rows = _rows(tmp_path / "out" / "questions-predict.jsonl")
  assert [r["inputs"] for r in rows] == [i for i in inputs if i]
  assert [r["prediction"] for r in rows] == ["yes"] * 5
  assert all(-1.0 < r["score"] <= 0.0 for r in rows)


def test_score_ranks_the_forced_target_above_a_random_one(checkpoint, tmp_path):
  pairs = [{"inputs": "q1", "targets": "yes"}, {"inputs": "q1", "targets": "xqz"},
           {"inputs": "q2", "targets": "no"}, {"inputs": "q2", "targets": "yes"}]
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
  assert _infer(checkpoint, tmp_path, f"--gin.INPUT_FILE={tmp_path / 'pairs.jsonl'}",
                "--gin.INFER_MODE='score'") == 0
  rows = _rows(tmp_path / "pairs-score.jsonl")
  assert [(r["inputs"], r["targets"]) for r in rows] == [(p["inputs"], p["targets"])
                                                          for p in pairs]
  scores = [r["score"] for r in rows]
  assert scores[0] > scores[1] and scores[3] > scores[2]
  assert scores[0] == pytest.approx(scores[3], abs=1e-3)  # the decoder ignores the inputs
  assert scores[0] > -1e-3  # the forced model is sure of "yes"


def test_infer_on_a_task_split_adds_targets(checkpoint, tmp_path):
  def dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensor_slices({"inputs": ["q: one", "q: two", "q: three"],
                                               "targets": ["yes", "no", "yes"]})
  features = {n: seqio.Feature(VOCAB, add_eos=True) for n in ("inputs", "targets")}
  seqio.TaskRegistry.add(
      TASK, source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features)
  try:
    assert _infer(checkpoint, tmp_path, f"--gin.MIXTURE_OR_TASK_NAME={TASK}",
                  "--gin.NUM_INFER_EXAMPLES=2", "--gin.DECODING_METHOD='beam_search'") == 0
  finally:
    seqio.TaskRegistry.remove(TASK)
  rows = _rows(tmp_path / f"{TASK}-validation-predict.jsonl")
  assert [(r["inputs"], r["target"], r["prediction"]) for r in rows] == [
      ("q: one", "yes", "yes"), ("q: two", "no", "yes")]
  assert [r["postprocessed_prediction"] for r in rows] == ["yes", "yes"]


def test_bad_settings_name_the_fix(checkpoint, tmp_path, capsys):
  assert _infer(checkpoint, tmp_path) == 2
  assert "exactly one of MIXTURE_OR_TASK_NAME" in capsys.readouterr().err
  (tmp_path / "in.txt").write_text("hello\n")
  assert _infer(checkpoint, tmp_path, f"--gin.INPUT_FILE={tmp_path / 'in.txt'}",
                "--gin.INFER_MODE='score'") == 2
  assert "score mode needs targets" in capsys.readouterr().err
  assert not list(tmp_path.glob("*.jsonl"))
  with pytest.raises(infer.InferError, match="no \"inputs\" field"):
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    infer.read_input_file(tmp_path / "bad.jsonl")
