"""A model trained here leaves recast: `recast convert recast-to-hf` of a run (its newest
checkpoint) and of one checkpoint_N loads in transformers and gives `recast infer`'s
scores and greedy predictions; a byte-vocabulary checkpoint gets ByT5's tokenizer with
seqio's ids; bad sources and destinations are one-line errors."""

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import seqio

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from recast import cli  # noqa: E402
from recast.trainer import evaluation, infer  # noqa: E402,F401  (configurables before gin locks)

TOY_VOCAB = Path(seqio.__file__).parent / "test_data/sentencepiece/sentencepiece.model"
LENGTHS = {"inputs": 32, "targets": 8}
STEPS, PERIOD = 4, 2
PAIRS = [{"inputs": f"a b c {i}", "targets": t} for i, t in
         [(1, "a"), (2, "b"), (3, "a b"), (4, "c"), (5, "b"), (6, "a")]]


def _task_file(folder: Path) -> Path:
  rows = [{"text": f"a b c {i}", "label": "a" if i % 2 else "b"} for i in range(16)]
  (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = folder / "tasks.yaml"
  path.write_text(textwrap.dedent("""\
      tasks:
        - name: convert_run_toy
          files: {train: rows.jsonl, validation: rows.jsonl}
          inputs: "{text}"
          targets: "{label}"
          labels: [a, b]
          metrics: [accuracy]
      """))
  return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny T5.1.1 trained 4 steps on the toy SentencePiece vocabulary (checkpoint_2 and
  checkpoint_4), and the pairs file `recast infer` reads."""
  folder = tmp_path_factory.mktemp("convert_run")
  tasks = _task_file(folder)
  model_dir = folder / "run"
  assert cli.main([
      "train", f"--tasks_file={tasks}", "--gin_file=models/t5_1_1/tiny.gin",
      "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='convert_run_toy'", f"--gin.VOCABULARY='{TOY_VOCAB}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8",
      f"--gin.TRAIN_STEPS={STEPS}", f"--gin.CHECKPOINT_PERIOD={PERIOD}",
      "--gin.EVAL_PERIOD=0", "--gin.LEARNING_RATE=0.01", "--gin.DROPOUT_RATE=0.0",
      "--gin.train.max_truncated_fraction=1.0",
      # float32 activations, as the exported model computes ('auto' is bf16 on CPUs with
      # bf16 units, whose scores differ from the float32 export's by bf16 rounding).
      "--gin.ACTIVATION_DTYPE='float32'"]) == 0
  assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == [
      f"checkpoint_{PERIOD}", f"checkpoint_{STEPS}"]
  pairs = folder / "pairs.jsonl"
  pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
  return model_dir, pairs


def _recast_infer(checkpoint, pairs, out, mode):
  assert cli.main(["infer", f"--gin.CHECKPOINT_PATH='{checkpoint}'",
                   f"--gin.INPUT_FILE='{pairs}'", f"--gin.INFER_OUTPUT_DIR='{out}'",
                   f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.INFER_MODE='{mode}'"]) == 0
  path = out / f"{pairs.stem}-{mode}.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def _ids(vocab, text, length):
  return (vocab.encode(text) + [vocab.eos_id])[:length]


def _hf_scores(model, vocab) -> list[float]:
  """Sum over target tokens of log p(token | inputs, previous tokens), from transformers."""
  scores = []
  with torch.no_grad():
    for pair in PAIRS:
      inputs = torch.tensor([_ids(vocab, pair["inputs"], LENGTHS["inputs"])])
      labels = torch.tensor([_ids(vocab, pair["targets"], LENGTHS["targets"])])
      logits = model(input_ids=inputs, labels=labels).logits.double()
      logp = torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None])
      scores.append(float(logp.sum()))
  return scores


def _hf_greedy(model, vocab) -> list[str]:
  predictions = []
  with torch.no_grad():
    for pair in PAIRS:
      inputs = torch.tensor([_ids(vocab, pair["inputs"], LENGTHS["inputs"])])
      out = model.generate(input_ids=inputs, max_new_tokens=LENGTHS["targets"],
                           do_sample=False, num_beams=1)
      predictions.append(vocab.decode([int(t) for t in out[0, 1:]]))  # after the start id
  return predictions


def test_exported_run_and_checkpoint_match_recast_infer(run, tmp_path, capsys):
  from safetensors.numpy import load_file
  model_dir, pairs = run
  vocab = seqio.SentencePieceVocabulary(str(TOY_VOCAB), extra_ids=100)
  scores = {}
  for name, src in (("run", model_dir), ("early", model_dir / f"checkpoint_{PERIOD}")):
    dst = tmp_path / name
    assert cli.main(["convert", "recast-to-hf", str(src), str(dst)]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    assert sorted(p.name for p in dst.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "spiece.model",
        "tokenizer_config.json"]
    assert json.loads((dst / "generation_config.json").read_text()) == {
        "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
    assert (dst / "spiece.model").read_bytes() == TOY_VOCAB.read_bytes()
    tokenizer = transformers.AutoTokenizer.from_pretrained(dst)
    for pair in PAIRS:  # the exported tokenizer gives recast's ids
      assert tokenizer(pair["inputs"]).input_ids == _ids(vocab, pair["inputs"], 99)

    model = transformers.T5ForConditionalGeneration.from_pretrained(dst).eval()
    ours = [r["score"] for r in _recast_infer(src, pairs, tmp_path / f"{name}-s", "score")]
    scores[name] = _hf_scores(model, vocab)
    np.testing.assert_allclose(ours, scores[name], atol=1e-4, rtol=0)
    assert min(ours) < -0.1  # real log-likelihoods, not a saturated model
    predicted = _recast_infer(src, pairs, tmp_path / f"{name}-p", "predict")
    assert [r["prediction"] for r in predicted] == _hf_greedy(model, vocab)

  # Each export is of the checkpoint asked for: the run's is its newest, checkpoint_4.
  assert np.abs(np.array(scores["run"]) - np.array(scores["early"])).max() > 1e-3
  assert cli.main(["convert", "recast-to-hf", str(model_dir / f"checkpoint_{STEPS}"),
                   str(tmp_path / "newest")]) == 0
  a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("run", "newest"))
  assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_byte_vocabulary_exports_a_byt5_tokenizer_with_seqios_ids(tmp_path):
  import flax.linen as nn
  import jax
  from recast.tasks import vocabularies
  from recast.trainer import checkpoints, network
  vocab = seqio.ByteVocabulary(extra_ids=100)
  config = network.T5Config(vocab_size=384, d_model=32, num_heads=2, d_kv=8, d_ff=32,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  rng = np.random.default_rng(0)  # random weights of the model's shapes (no eager init)
  params = jax.tree_util.tree_map(
      lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
      nn.unbox(jax.eval_shape(lambda r: network.init_params(config, r), jax.random.PRNGKey(0))))
  src = checkpoints.save_param_checkpoint(tmp_path / "bytes", params, config=config,
                                          vocabulary=vocabularies.describe(vocab))
  assert cli.main(["convert", "recast-to-hf", str(src), str(tmp_path / "hf")]) == 0
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert type(tokenizer).__name__ == "ByT5Tokenizer" and len(tokenizer) == vocab.vocab_size
  text = "héllo wörld – 日本 ✓"
  assert tokenizer(text).input_ids == vocab.encode(text) + [1]
  assert tokenizer.decode(vocab.encode(text) + [1], skip_special_tokens=True) == text
  for i in (0, 1, 99):  # seqio counts sentinels down from the top; ByT5 alone counts up
    assert tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") == vocab.vocab_size - 1 - i
  # Random weights decode differently per input: greedy agrees token for token.
  model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
  texts = ["héllo", "wörld", "abc", "日本語", "xyz 123"]
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
  assert cli.main(["infer", f"--gin.CHECKPOINT_PATH='{src}'",
                   f"--gin.INPUT_FILE='{tmp_path / 'in.txt'}'",
                   f"--gin.INFER_OUTPUT_DIR='{tmp_path}'",
                   f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"]) == 0
  rows = [json.loads(line) for line in (tmp_path / "in-predict.jsonl").read_text().splitlines()]
  theirs = []
  with torch.no_grad():
    for text in texts:
      out = model.generate(input_ids=torch.tensor([tokenizer(text).input_ids]),
                           max_new_tokens=LENGTHS["targets"], do_sample=False, num_beams=1)
      theirs.append(tokenizer.decode(out[0, 1:], skip_special_tokens=True))
  assert [r["prediction"] for r in rows] == theirs
  assert len(set(theirs)) > 2 and all(theirs)  # varied, non-empty predictions


def _fails(argv, capsys, match):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_bad_sources_and_destinations_are_one_line_errors(run, tmp_path, capsys):
  model_dir, _ = run
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "README.md").write_text("hello")
  _fails(["convert", "recast-to-hf", str(notes), str(tmp_path / "a")], capsys,
         "holds no checkpoint: point it at a run's MODEL_DIR")
  (notes / "config.json").write_text("{}")
  _fails(["convert", "recast-to-hf", str(notes), str(tmp_path / "a")], capsys,
         "is a Hugging Face folder, not a recast checkpoint")
  damaged = tmp_path / "damaged"
  shutil.copytree(model_dir / "checkpoint_4", damaged / "checkpoint_4")
  (damaged / "checkpoint_4" / "state" / "_METADATA").unlink()
  _fails(["convert", "recast-to-hf", str(damaged), str(tmp_path / "a")], capsys,
         "is damaged (missing state/_METADATA)")
  assert not (tmp_path / "a").exists()
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep.txt").write_text("mine")
  for direction in ("recast-to-hf", "recast-to-t5x"):
    _fails(["convert", direction, str(model_dir), str(taken)], capsys, "already exists")
  assert [p.name for p in taken.iterdir()] == ["keep.txt"]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staged leftovers
