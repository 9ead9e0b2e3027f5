"""Converts checkpoints between the Hugging Face T5 layout and recast's parameter checkpoints.

Public T5 checkpoints (t5-small style: ReLU, tied embeddings; google/t5-v1_1 style:
gated-GELU, untied `lm_head`) become `INITIAL_CHECKPOINT_PATH`s, and models trained here
load in `transformers`:

    recast convert hf-to-recast ~/hf/t5-v1_1-small /ckpt/t5_1_1_small
    recast convert recast-to-hf /ckpt/t5_1_1_small ~/hf/my-model

Hugging Face side: `config.json` + `model.safetensors` (or sharded safetensors; a
`pytorch_model.bin` is read with weights-only loading) + optional `spiece.model`.
Tensor names and shapes (torch `Linear` weights are [out, in]) map onto recast's T5X tree:

    shared.weight [V, d]                  -> token_embedder/embedding [V, d]
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
                                          -> encoder/relpos_bias/rel_embedding [heads, buckets]
    encoder.block.i.layer.0.SelfAttention.q.weight [h*k, d]
                                          -> encoder/layers_i/attention/query [d, h, k]
    encoder.block.i.layer.0.SelfAttention.o.weight [d, h*k]
                                          -> encoder/layers_i/attention/out [h, k, d]
    encoder.block.i.layer.1.DenseReluDense.wi_0.weight [f, d]
                                          -> encoder/layers_i/mlp/wi_0 [d, f]
    decoder.block.i.layer.{0,1,2}         -> self_attention, encoder_decoder_attention, mlp
    lm_head.weight [V, d]                 -> decoder/logits_dense [d, V] (untied only)

Every mapping is a transpose and/or reshape, so converting back is bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from recast import atomic_files, errors
from recast.trainer import checkpoints, network

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
SUPPORTED_ARCHITECTURES = ("T5ForConditionalGeneration", "T5WithLMHeadModel")
# Tensors HF checkpoints may hold that recast does not keep: copies of `shared.weight`, and
# a cross-attention bias table `transformers` itself ignores.
_IGNORED_HF_TENSORS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                       "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
_DEFAULT_EXTRA_IDS = 100  # T5's sentinel ids <extra_id_0..99> when the HF folder says nothing.


class ConversionError(errors.UserError):
  """A checkpoint that cannot be converted; the message names the file or tensor and the fix."""


# --- Name and shape mapping -------------------------------------------------------------

# Layout changes by kind: recast array -> HF array, and HF array (+ recast shape) -> recast.
_TO_HF: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda w: w,
    "transpose": lambda w: w.T,  # [in, out] <-> torch [out, in]; relpos [heads, buckets].
    "attn_in": lambda w: w.reshape(w.shape[0], -1).T,  # [d, h, k] -> [h*k, d]
    "attn_out": lambda w: w.reshape(-1, w.shape[-1]).T,  # [h, k, d] -> [d, h*k]
}
_TO_RECAST: dict[str, Callable[[np.ndarray, tuple], np.ndarray]] = {
    "copy": lambda w, shape: w,
    "transpose": lambda w, shape: w.T,
    "attn_in": lambda w, shape: w.T.reshape(shape),
    "attn_out": lambda w, shape: w.T.reshape(shape),
}
_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}
_ENCODER_SUBLAYERS = {"pre_attention_layer_norm": "layer.0.layer_norm",
                      "attention": "layer.0.SelfAttention",
                      "pre_mlp_layer_norm": "layer.1.layer_norm", "mlp": "layer.1.DenseReluDense"}
_DECODER_SUBLAYERS = {"pre_self_attention_layer_norm": "layer.0.layer_norm",
                      "self_attention": "layer.0.SelfAttention",
                      "pre_cross_attention_layer_norm": "layer.1.layer_norm",
                      "encoder_decoder_attention": "layer.1.EncDecAttention",
                      "pre_mlp_layer_norm": "layer.2.layer_norm",
                      "mlp": "layer.2.DenseReluDense"}


def hf_name(path: tuple[str, ...]) -> tuple[str, str]:
  """The HF tensor name of a recast parameter and the kind of its layout change.

  >>> hf_name(("encoder", "layers_3", "attention", "query"))
  ('encoder.block.3.layer.0.SelfAttention.q.weight', 'attn_in')
  """
  if path == ("token_embedder", "embedding"):
    return "shared.weight", "copy"
  if path == ("decoder", "logits_dense"):
    return "lm_head.weight", "transpose"
  stack = path[0]
  if path[1:] == ("relpos_bias", "rel_embedding"):
    return f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "transpose"
  if path[1:] == (f"{stack}_norm", "scale"):
    return f"{stack}.final_layer_norm.weight", "copy"
  layer, sublayer, leaf = path[1], path[2], path[3]
  index = int(layer.removeprefix("layers_"))
  prefix = f"{stack}.block.{index}." + (_ENCODER_SUBLAYERS if stack == "encoder"
                                        else _DECODER_SUBLAYERS)[sublayer]
  if leaf == "scale":
    return f"{prefix}.weight", "copy"
  if sublayer == "mlp":
    return f"{prefix}.{leaf}.weight", "transpose"
  return f"{prefix}.{_ATTENTION[leaf]}.weight", "attn_out" if leaf == "out" else "attn_in"


def _recast_shapes(config: network.T5Config) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Parameter path -> shape of the recast model, from shapes only (nothing allocated)."""
  tree = jax.eval_shape(lambda r: nn.unbox(network.init_params(config, r)),
                        jax.random.PRNGKey(0))
  return {tuple(str(p.key) for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF shape of a recast parameter of `shape` (as `_TO_HF[kind]` would give)."""
  if kind == "copy":
    return shape
  if kind == "transpose":
    return shape[::-1]
  if kind == "attn_in":  # [d, h, k] -> [h*k, d]
    return (shape[1] * shape[2], shape[0])
  return (shape[2], shape[0] * shape[1])  # attn_out: [h, k, d] -> [d, h*k]


def _nest(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


# --- Configs ----------------------------------------------------------------------------

def config_from_hf(hf_config: dict[str, Any], *, source: str = "config.json") -> network.T5Config:
  """recast's T5Config for a HF T5 `config.json` (raises ConversionError if unsupported)."""
  model_type = hf_config.get("model_type")
  architectures = hf_config.get("architectures") or ["T5ForConditionalGeneration"]
  unsupported = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
  if model_type != "t5" or unsupported:
    found = f"model_type {model_type!r}, architectures {', '.join(architectures)}"
    raise ConversionError(
        f"{source}: {found} is not supported; recast converts T5 encoder-decoders "
        f"(model_type 't5', {' or '.join(SUPPORTED_ARCHITECTURES)}) in the t5-small "
        "(feed_forward_proj 'relu') and google/t5-v1_1 ('gated-gelu') variants")
  feed_forward = hf_config.get("feed_forward_proj", "relu")
  if feed_forward not in network.FEED_FORWARDS:
    raise ConversionError(
        f"{source}: feed_forward_proj {feed_forward!r} is not supported; use one of "
        f"{', '.join(network.FEED_FORWARDS)}")
  for key in ("pad_token_id", "decoder_start_token_id"):
    if hf_config.get(key) not in (0, None):
      raise ConversionError(f"{source}: {key}={hf_config[key]}, but recast's T5 uses id 0 for "
                            "padding and as the decoder's start token")
  try:
    num_layers = int(hf_config["num_layers"])
    return network.T5Config(
        vocab_size=int(hf_config["vocab_size"]), d_model=int(hf_config["d_model"]),
        num_heads=int(hf_config["num_heads"]), d_kv=int(hf_config["d_kv"]),
        d_ff=int(hf_config["d_ff"]), num_encoder_layers=num_layers,
        num_decoder_layers=int(hf_config.get("num_decoder_layers") or num_layers),
        feed_forward=feed_forward, tie_word_embeddings=_scales_decoder_outputs(hf_config),
        relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(
            hf_config.get("relative_attention_max_distance", 128)),
        dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
        layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)))
  except KeyError as e:
    raise ConversionError(f"{source} has no {e.args[0]!r}; is it a T5 config.json?") from e


def _scales_decoder_outputs(hf_config: dict[str, Any]) -> bool:
  """HF T5 multiplies decoder outputs by d_model**-0.5 exactly when embeddings are tied
  (transformers >= 5 records that as `scale_decoder_outputs`)."""
  if "scale_decoder_outputs" in hf_config:
    return bool(hf_config["scale_decoder_outputs"])
  return bool(hf_config.get("tie_word_embeddings", True))


def config_to_hf(config: network.T5Config) -> dict[str, Any]:
  """The HF `config.json` of a recast T5Config (all fields, HF names)."""
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": config.vocab_size, "d_model": config.d_model, "d_kv": config.d_kv,
      "d_ff": config.d_ff, "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0, "feed_forward_proj": config.feed_forward,
      "tie_word_embeddings": config.tie_word_embeddings, "is_encoder_decoder": True,
      "use_cache": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
      "dtype": "float32",
  }


# --- Reading and writing HF folders ----------------------------------------------------

def _weight_files(src: Path) -> list[Path]:
  """The weight files of a HF folder, safetensors first, shards in index order."""
  for single, index in ((SAFETENSORS_FILE, f"{SAFETENSORS_FILE}.index.json"),
                        (PYTORCH_FILE, f"{PYTORCH_FILE}.index.json")):
    if (src / single).is_file():
      return [src / single]
    if (src / index).is_file():
      shards = json.loads((src / index).read_text()).get("weight_map", {}).values()
      return [src / name for name in dict.fromkeys(shards)]
  raise ConversionError(
      f"{src} holds no {SAFETENSORS_FILE} or {PYTORCH_FILE}; point at a Hugging Face T5 "
      "folder (as written by save_pretrained)")


def read_hf_tensors(src: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a HF folder as float32 numpy arrays, by HF name."""
  try:
    import torch
    from safetensors.torch import load_file
  except ImportError as e:
    raise ConversionError("reading Hugging Face weights needs torch: pip install "
                          "'recast[hf]'") from e
  tensors: dict[str, np.ndarray] = {}
  for path in _weight_files(Path(src)):
    if not path.is_file():
      raise ConversionError(f"{path} is listed in the shard index but missing")
    try:
      if path.name.endswith(".safetensors"):
        loaded = load_file(path)
      else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many types
      raise ConversionError(f"cannot read {path}: {e}") from e
    for name, value in loaded.items():
      tensors[name] = value.detach().to(torch.float32).numpy()
  return tensors


def _read_hf_config(src: Path) -> dict[str, Any]:
  if not src.is_dir():
    raise ConversionError(f"{src} is not a folder; give the Hugging Face model folder")
  path = src / CONFIG_FILE
  if not path.is_file():
    raise ConversionError(f"{src} is not a Hugging Face T5 checkpoint: it has no {CONFIG_FILE}")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path} is not valid JSON: {e}") from e


def _vocabulary_info(src: Path) -> Optional[dict[str, Any]]:
  """{"type": "sentencepiece", "size": pieces + extra_ids, ...} when src has spiece.model."""
  spiece = src / checkpoints.VOCAB_FILE
  if not spiece.is_file():
    return None
  import sentencepiece
  try:
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()
  except Exception as e:
    raise ConversionError(f"{spiece} is not a SentencePiece model: {e}") from e
  extra_ids = _DEFAULT_EXTRA_IDS
  tokenizer_config = src / "tokenizer_config.json"
  if tokenizer_config.is_file():
    extra_ids = int(json.loads(tokenizer_config.read_text()).get("extra_ids", extra_ids))
  return {"type": "sentencepiece", "file": checkpoints.VOCAB_FILE, "pieces": pieces,
          "extra_ids": extra_ids, "size": pieces + extra_ids}


def _params_from_hf(tensors: dict[str, np.ndarray], config: network.T5Config,
                    *, source: str) -> dict:
  """Maps HF tensors onto recast's tree; raises ConversionError naming a mismatched tensor."""
  tensors = dict(tensors)
  if "lm_head.weight" in tensors and config.tie_word_embeddings:
    if not np.array_equal(tensors["lm_head.weight"], tensors.get("shared.weight")):
      raise ConversionError(
          f"{source}: config.json ties the output layer to the embedding, but lm_head.weight "
          "differs from shared.weight; set tie_word_embeddings to false in config.json if "
          "the model has its own output layer")
    del tensors["lm_head.weight"]
  if (not config.tie_word_embeddings and "lm_head.weight" not in tensors
      and "shared.weight" in tensors):
    tensors["lm_head.weight"] = tensors["shared.weight"]  # transformers >= 5 ties these.
  flat = {}
  for path, shape in _recast_shapes(config).items():
    name, kind = hf_name(path)
    value = tensors.pop(name, None)
    expected = _hf_shape(kind, shape)
    if value is None:
      raise ConversionError(f"{source} has no tensor {name} (expected shape {expected} from "
                            "config.json); is config.json the one for these weights?")
    if value.shape != expected:
      raise ConversionError(
          f"{source}: tensor {name} has shape {value.shape} but config.json implies "
          f"{expected}; the config does not match the weights")
    flat[path] = np.ascontiguousarray(_TO_RECAST[kind](value, shape))
  unexpected = sorted(n for n in tensors if n not in _IGNORED_HF_TENSORS)
  if unexpected:
    raise ConversionError(
        f"{source}: tensors {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''} "
        "are not part of the T5 model config.json describes (check num_layers, "
        "num_decoder_layers, feed_forward_proj)")
  return _nest(flat)


def hf_to_recast(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
  """Converts the HF T5 folder `src` into a new recast parameter checkpoint `dst`.

  Raises ConversionError (nothing is written) for a folder that is not a HF T5
  checkpoint, an unsupported architecture, a config that does not match the weights, or
  an existing `dst`.
  """
  src, dst = Path(src), Path(dst)
  _check_destination(dst)
  hf_config = _read_hf_config(src)
  _weight_files(src)  # A folder without weights is no checkpoint, whatever its config says.
  config = config_from_hf(hf_config, source=str(src / CONFIG_FILE))
  params = _params_from_hf(read_hf_tensors(src), config, source=str(src))
  vocabulary = _vocabulary_info(src)
  if vocabulary and vocabulary["size"] > config.vocab_size:
    raise ConversionError(
        f"{src}: {checkpoints.VOCAB_FILE} has {vocabulary['pieces']} pieces + "
        f"{vocabulary['extra_ids']} extra ids, more than the model's vocab_size "
        f"{config.vocab_size}; the vocabulary does not belong to these weights (remove it or "
        "fix extra_ids in tokenizer_config.json)")
  return checkpoints.save_param_checkpoint(
      dst, params, config=config, vocabulary=vocabulary,
      vocabulary_file=src / checkpoints.VOCAB_FILE if vocabulary else None)


def recast_to_hf(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
  """Writes the recast parameter checkpoint `src` as a new HF T5 folder `dst`:
  config.json + model.safetensors (+ spiece.model and tokenizer_config.json)."""
  from safetensors.numpy import save_file
  src, dst = Path(src), Path(dst)
  _check_destination(dst)
  config = checkpoints.load_config(src)
  params = checkpoints.load_params(src)
  shapes = _recast_shapes(config)
  checkpoints.check_params_match(params, _nest(
      {p: jax.ShapeDtypeStruct(s, np.float32) for p, s in shapes.items()}), source=str(src))
  flat = {tuple(str(p.key) for p in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  tensors = {}
  for path in shapes:
    name, kind = hf_name(path)
    tensors[name] = np.ascontiguousarray(_TO_HF[kind](np.asarray(flat[path], np.float32)))
  vocab_file = checkpoints.vocabulary_file(src)
  vocabulary = checkpoints.read_metadata(src).get("vocabulary") or {}
  with atomic_files.staged_dir(dst) as tmp:
    save_file(tensors, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
    atomic_files.write_json(tmp / CONFIG_FILE, config_to_hf(config))
    if vocab_file:
      shutil.copyfile(vocab_file, tmp / checkpoints.VOCAB_FILE)
      atomic_files.write_json(tmp / "tokenizer_config.json", {
          "tokenizer_class": "T5Tokenizer",
          "extra_ids": vocabulary.get("extra_ids", _DEFAULT_EXTRA_IDS)})
  return dst


def _check_destination(dst: Path) -> None:
  if dst.exists():
    raise ConversionError(f"{dst} already exists; choose a new destination or remove it first")


# --- Command line ----------------------------------------------------------------------

DIRECTIONS = {"hf-to-recast": hf_to_recast, "recast-to-hf": recast_to_hf}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("direction", choices=sorted(DIRECTIONS),
                      help="hf-to-recast: Hugging Face T5 folder -> recast checkpoint "
                      "(usable as INITIAL_CHECKPOINT_PATH); recast-to-hf: the reverse")
  parser.add_argument("src", help="folder to convert")
  parser.add_argument("dst", help="folder to create (must not exist)")


def main(args: argparse.Namespace) -> int:
  dst = DIRECTIONS[args.direction](args.src, args.dst)
  print(f"wrote {dst}")
  return 0
