"""A checkpoint converted from a random-initialised Hugging Face T5 fine-tunes and evaluates
through INITIAL_CHECKPOINT_PATH, on real RTE examples."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

from recast.trainer import checkpoints, convert
from recast import gin_config, metrics_writer  # noqa: E402

# gin/models/t5_1_1/tiny.gin's architecture; the byte vocabulary (359 ids) pads to 384.
TINY = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)


def _train(model_dir, init, shared_data, *, learning_rate: float, steps: int):
  from recast.trainer import train
  gin_config.parse_gin(["models/t5_1_1/tiny.gin", "runs/finetune.gin"], [
      f"MODEL_DIR={str(model_dir)!r}", "MIXTURE_OR_TASK_NAME='glue_rte'",
      f"DATA_DIR={str(shared_data)!r}", "VOCABULARY='byte'",
      "TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 16}", f"TRAIN_STEPS={steps}",
      "BATCH_SIZE=4", f"LEARNING_RATE={learning_rate}", "DROPOUT_RATE=0.0",
      f"INITIAL_CHECKPOINT_PATH={str(init)!r}", f"EVAL_PERIOD={steps}",
      f"CHECKPOINT_PERIOD={steps}", "Evaluator.num_examples=8", "Evaluator.batch_size=8",
      "train.max_truncated_fraction=1.0", "train.stats_period=1"])
  train.train()


@pytest.fixture(scope="module")
def hf_converted(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=384, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False, dropout_rate=0.0,
                                 decoder_start_token_id=0, **TINY)
  model = transformers.T5ForConditionalGeneration(config)
  model.lm_head.weight = torch.nn.Parameter(torch.randn(384, 64) * 0.05)
  hf_dir = tmp_path_factory.mktemp("hf") / "t5"
  model.save_pretrained(hf_dir, safe_serialization=True)
  dst = tmp_path_factory.mktemp("recast") / "ckpt"
  convert.hf_to_recast(hf_dir, dst)
  return dst


def test_converted_checkpoint_fine_tunes_and_evaluates(hf_converted, shared_data, tmp_path):
  start = checkpoints.load_params(hf_converted)

  # Learning rate 0: the trained parameters are exactly the converted Hugging Face ones.
  frozen = tmp_path / "frozen"
  _train(frozen, hf_converted, shared_data, learning_rate=0.0, steps=2)
  state = checkpoints.load_initial_params(frozen, expected_params=start, vocabulary=None)
  for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)

  # A real learning rate moves them, and evaluation writes RTE's metrics.
  tuned = tmp_path / "tuned"
  _train(tuned, hf_converted, shared_data, learning_rate=1e-3, steps=3)
  params = checkpoints.load_initial_params(tuned, expected_params=start, vocabulary=None)
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(params))]
  assert all(moved)
  rows = metrics_writer.read_metrics(tuned)
  train_steps = [r["step"] for r in rows if r["split"] == "train" and r["metric"] == "loss"]
  assert train_steps == [1, 2, 3]
  evals = {(r["task"], r["metric"]): r["value"] for r in rows if r["split"] == "validation"}
  assert 0.0 <= evals[("glue_rte", "accuracy")] <= 100.0
  assert np.isfinite(evals[("glue_rte", "loss")])
