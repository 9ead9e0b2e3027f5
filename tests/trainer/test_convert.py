"""Hugging Face T5 <-> recast conversion: logit parity, bit-identical round trips, bad input."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402

from recast.trainer import checkpoints, convert, network
from recast import cli  # noqa: E402

SPIECE = (Path(__import__("seqio").__file__).parent / "test_data" / "sentencepiece" /
          "sentencepiece.model")
VOCAB = 128  # >= the toy spiece.model's 26 pieces + 100 extra ids
# Right-padded batch: row 1 has padding in the inputs and the targets.
INPUTS = np.array([[5, 9, 13, 7, 22, 3, 1], [8, 31, 4, 1, 0, 0, 0]], np.int32)
TARGETS = np.array([[11, 6, 42, 17, 1], [25, 1, 0, 0, 0]], np.int32)
DECODER_INPUTS = np.concatenate([np.zeros((2, 1), np.int32), TARGETS[:, :-1]], axis=1)


def _hf_model(variant: str):
  torch.manual_seed(0 if variant == "t5_1_1" else 1)
  gated = variant == "t5_1_1"
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
      num_heads=4, feed_forward_proj="gated-gelu" if gated else "relu",
      tie_word_embeddings=not gated, dropout_rate=0.0, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config)
  if gated:  # google/t5-v1_1 checkpoints hold their own output layer.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
  # Per-position differences make the relative-position tables matter.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "relative_attention_bias" in name or "layer_norm" in name:
        p.add_(torch.rand_like(p))
  return model.eval()


def _hf_logits(model) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.tensor(INPUTS, dtype=torch.long),
                attention_mask=torch.tensor(INPUTS != 0),
                decoder_input_ids=torch.tensor(DECODER_INPUTS, dtype=torch.long))
  return out.logits.numpy()


@pytest.fixture(scope="module", params=["t5_1_0", "t5_1_1"])
def hf_checkpoint(request, tmp_path_factory):
  """(variant, HF model, its save_pretrained folder with spiece.model)."""
  model = _hf_model(request.param)
  path = tmp_path_factory.mktemp(request.param) / "hf"
  model.save_pretrained(path, safe_serialization=True)
  shutil.copyfile(SPIECE, path / "spiece.model")
  return request.param, model, path


@pytest.fixture(scope="module")
def converted(hf_checkpoint, tmp_path_factory):
  _, _, hf_path = hf_checkpoint
  dst = tmp_path_factory.mktemp("recast") / "ckpt"
  convert.hf_to_recast(hf_path, dst)
  return dst


def test_config_matches_variant(hf_checkpoint, converted):
  variant, _, _ = hf_checkpoint
  config = checkpoints.load_config(converted)
  assert (config.vocab_size, config.d_model, config.num_heads, config.d_kv, config.d_ff) == (
      VOCAB, 32, 4, 8, 48)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  if variant == "t5_1_1":
    assert config.feed_forward == "gated-gelu" and not config.tie_word_embeddings
  else:
    assert config.feed_forward == "relu" and config.tie_word_embeddings


def test_logits_match_transformers(hf_checkpoint, converted):
  _, model, _ = hf_checkpoint
  config = checkpoints.load_config(converted)
  params = checkpoints.load_params(converted)
  ours = np.asarray(network.Transformer(config).apply(
      {"params": params}, INPUTS, DECODER_INPUTS, TARGETS))
  theirs = _hf_logits(model)
  real = TARGETS > 0  # T5X-style masks differ from HF's only at padded target positions.
  assert ours.shape == theirs.shape == (2, 5, VOCAB)
  assert np.abs(theirs).max() > 1.0  # not trivially small
  np.testing.assert_array_less(np.abs(ours - theirs)[real], 1e-4)


def test_round_trip_is_bit_identical_and_loads_in_transformers(hf_checkpoint, converted,
                                                               tmp_path):
  _, model, hf_path = hf_checkpoint
  back = convert.recast_to_hf(converted, tmp_path / "hf_back")
  original = load_file(hf_path / "model.safetensors")
  again = load_file(back / "model.safetensors")
  assert sorted(again) == sorted(original)
  for name, value in original.items():
    assert again[name].dtype == value.dtype and again[name].shape == value.shape, name
    assert again[name].tobytes() == value.tobytes(), name
  hf_config = json.loads((back / "config.json").read_text())
  assert hf_config["model_type"] == "t5"
  assert hf_config["architectures"] == ["T5ForConditionalGeneration"]
  assert (hf_config["pad_token_id"], hf_config["eos_token_id"],
          hf_config["decoder_start_token_id"]) == (0, 1, 0)
  assert (back / "spiece.model").read_bytes() == SPIECE.read_bytes()
  tokenizer = transformers.AutoTokenizer.from_pretrained(back)
  assert len(tokenizer) == 26 + 100 and tokenizer.convert_tokens_to_ids("<extra_id_0>") == 125
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(back).eval()
  np.testing.assert_array_equal(_hf_logits(reloaded), _hf_logits(model))


def test_vocabulary_is_carried(converted):
  assert checkpoints.vocabulary_file(converted).read_bytes() == SPIECE.read_bytes()
  vocabulary = checkpoints.read_metadata(converted)["vocabulary"]
  assert vocabulary["type"] == "sentencepiece"
  assert vocabulary["size"] == vocabulary["pieces"] + vocabulary["extra_ids"]
  assert vocabulary["extra_ids"] == 100 and vocabulary["pieces"] > 0


def test_pytorch_bin_gives_the_same_checkpoint(hf_checkpoint, converted, tmp_path):
  _, model, hf_path = hf_checkpoint
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  shutil.copyfile(hf_path / "config.json", bin_dir / "config.json")
  torch.save({k: v.clone() for k, v in model.state_dict().items()},
             bin_dir / "pytorch_model.bin")
  convert.hf_to_recast(bin_dir, tmp_path / "from_bin")
  a, b = checkpoints.load_params(converted), checkpoints.load_params(tmp_path / "from_bin")
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))


def test_sharded_safetensors_give_the_same_checkpoint(hf_checkpoint, converted, tmp_path):
  _, model, _ = hf_checkpoint
  model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  convert.hf_to_recast(tmp_path / "sharded", tmp_path / "from_shards")
  a, b = checkpoints.load_params(converted), checkpoints.load_params(tmp_path / "from_shards")
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))


def test_tie_flag_read_as_transformers_reads_it():
  base = {"model_type": "t5", "vocab_size": 64, "d_model": 32, "num_heads": 4, "d_kv": 8,
          "d_ff": 48, "num_layers": 2}
  assert convert.config_from_hf(base).tie_word_embeddings  # HF's default: tied.
  assert not convert.config_from_hf({**base, "tie_word_embeddings": False}).tie_word_embeddings
  # transformers >= 5 writes tie_word_embeddings true and says whether it rescales.
  assert not convert.config_from_hf({**base, "tie_word_embeddings": True,
                                     "scale_decoder_outputs": False}).tie_word_embeddings


def _copy_hf(hf_path: Path, tmp_path: Path, **config_changes) -> Path:
  src = tmp_path / "src"
  shutil.copytree(hf_path, src)
  config = json.loads((src / "config.json").read_text())
  config.update(config_changes)
  (src / "config.json").write_text(json.dumps(config))
  return src


def _assert_fails(src, dst, *, match):
  with pytest.raises(convert.ConversionError, match=match):
    convert.hf_to_recast(src, dst)
  assert not dst.exists()
  assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]


def test_folder_that_is_not_a_checkpoint(tmp_path):
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "README.md").write_text("hello")
  _assert_fails(tmp_path / "notes", tmp_path / "out", match="no config.json")
  _assert_fails(tmp_path / "missing", tmp_path / "out", match="not a folder")
  (tmp_path / "notes" / "config.json").write_text(json.dumps({"model_type": "t5"}))
  _assert_fails(tmp_path / "notes", tmp_path / "out", match="no model.safetensors")


def test_config_that_does_not_match_weights(hf_checkpoint, tmp_path):
  variant, _, hf_path = hf_checkpoint
  src = _copy_hf(hf_path, tmp_path, d_ff=64)
  wi = "wi_0" if variant == "t5_1_1" else "wi"
  _assert_fails(src, tmp_path / "out",
                match=rf"tensor decoder\.block\.0\.layer\.2\.DenseReluDense\.{wi}\.weight has "
                r"shape \(48, 32\) but config.json implies \(64, 32\)")
  shutil.rmtree(src)
  src = _copy_hf(hf_path, tmp_path, num_decoder_layers=4)
  _assert_fails(src, tmp_path / "out", match=r"no tensor decoder\.block\.3\.")
  shutil.rmtree(src)
  src = _copy_hf(hf_path, tmp_path, num_layers=1, num_decoder_layers=3)
  _assert_fails(src, tmp_path / "out", match=r"encoder\.block\.1\..* not part of")


def test_unsupported_architectures(hf_checkpoint, tmp_path):
  _, _, hf_path = hf_checkpoint
  for changes in ({"architectures": ["T5EncoderModel"]},
                  {"model_type": "mt5", "architectures": ["MT5ForConditionalGeneration"]},
                  {"model_type": "bart", "architectures": ["BartForConditionalGeneration"]}):
    src = _copy_hf(hf_path, tmp_path, **changes)
    _assert_fails(src, tmp_path / "out", match="not supported.*T5ForConditionalGeneration")
    shutil.rmtree(src)
  src = _copy_hf(hf_path, tmp_path, feed_forward_proj="gated-silu")
  _assert_fails(src, tmp_path / "out", match="gated-silu.*not supported; use one of")


def test_vocabulary_larger_than_the_model(hf_checkpoint, tmp_path):
  _, _, hf_path = hf_checkpoint
  src = _copy_hf(hf_path, tmp_path)
  (src / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 200}))
  _assert_fails(src, tmp_path / "out",
                match="26 pieces \\+ 200 extra ids, more than the model's vocab_size 128")


def test_existing_destination_is_left_alone(hf_checkpoint, converted, tmp_path):
  _, _, hf_path = hf_checkpoint
  dst = tmp_path / "taken"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  for direction, src in ((convert.hf_to_recast, hf_path), (convert.recast_to_hf, converted)):
    with pytest.raises(convert.ConversionError, match="already exists"):
      direction(src, dst)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_cli(hf_checkpoint, tmp_path, capsys):
  _, _, hf_path = hf_checkpoint
  assert cli.main(["convert", "hf-to-recast", str(hf_path), str(tmp_path / "a")]) == 0
  assert checkpoints.is_param_checkpoint(tmp_path / "a")
  assert cli.main(["convert", "recast-to-hf", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
  assert (tmp_path / "b" / "model.safetensors").is_file()
  assert cli.main(["convert", "recast-to-hf", str(hf_path), str(tmp_path / "c")]) == 2
  err = capsys.readouterr().err
  assert "is a Hugging Face folder, not a recast checkpoint" in err and "Traceback" not in err
  assert not (tmp_path / "c").exists()
