"""Converts checkpoints between recast and the Hugging Face T5 and T5X layouts.

Public T5 checkpoints (t5-small style: ReLU, tied embeddings; google/t5-v1_1 style:
gated-GELU, untied `lm_head`; T5X's own) become `INITIAL_CHECKPOINT_PATH`s, and models
trained here (a run's MODEL_DIR: its newest checkpoint; one `checkpoint_N`; a parameter
checkpoint) load in `transformers` and T5X:

    recast convert hf-to-recast ~/hf/t5-v1_1-small /ckpt/t5_1_1_small
    recast convert recast-to-hf runs/mrpc ~/hf/my-model
    recast convert t5x-to-recast ~/t5x/t5_1_1_small/checkpoint_1000000 /ckpt/t5x_small
    recast convert recast-to-t5x runs/mrpc ~/t5x/my-model [--t5x_layout orbax]

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

recast-to-hf also writes generation_config.json and the tokenizer. T5X side: see the T5X
section below (recast's names plus `/kernel`; attention kernels flattened). Every mapping
is a transpose and/or reshape, so converting back is bit-identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
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
  extra_ids = _DEFAULT_EXTRA_IDS
  tokenizer_config = src / "tokenizer_config.json"
  if tokenizer_config.is_file():
    extra_ids = int(json.loads(tokenizer_config.read_text()).get("extra_ids", extra_ids))
  return _sentencepiece_info(spiece, extra_ids)


def _sentencepiece_info(spiece: Path, extra_ids: int) -> dict[str, Any]:
  import sentencepiece
  try:
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()
  except Exception as e:
    raise ConversionError(f"{spiece} is not a SentencePiece model: {e}") from e
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
  _check_vocabulary_fits(vocabulary, config, source=src)
  return checkpoints.save_param_checkpoint(
      dst, params, config=config, vocabulary=vocabulary,
      vocabulary_file=src / checkpoints.VOCAB_FILE if vocabulary else None)


def _check_vocabulary_fits(vocabulary: Optional[dict], config: network.T5Config, *,
                           source: Path) -> None:
  if vocabulary and vocabulary["size"] > config.vocab_size:
    raise ConversionError(
        f"{source}: {checkpoints.VOCAB_FILE} has {vocabulary['pieces']} pieces + "
        f"{vocabulary['extra_ids']} extra ids, more than the model's vocab_size "
        f"{config.vocab_size}; the vocabulary does not belong to these weights (remove it or "
        "fix extra_ids in tokenizer_config.json)")


# --- Reading recast checkpoints ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecastModel:
  """A recast checkpoint's weights and what travels with them."""
  config: network.T5Config
  params: dict[tuple[str, ...], np.ndarray]  # parameter path -> float32 array
  step: int
  vocabulary: dict[str, Any]  # its metadata's description ({} if none is recorded)
  vocabulary_file: Optional[Path]  # the SentencePiece model it carries


def read_recast(src: str | os.PathLike) -> RecastModel:
  """The newest checkpoint of a run's MODEL_DIR, one `checkpoint_N` folder, or a parameter
  checkpoint (anything `checkpoints.resolve` takes), as float32 numpy arrays.

  Raises ConversionError naming the fix for a folder that holds none of these (a Hugging
  Face or T5X folder is named as such), or a damaged checkpoint."""
  src = Path(src)
  t5x_error = lambda folder: ConversionError(
      f"{folder} is a T5X checkpoint, not a recast one; convert it with `recast convert "
      "t5x-to-recast SRC DST` first")
  try:
    ref = checkpoints.resolve(src, what="SRC")[-1]
  except checkpoints.CheckpointError as e:
    if (src / CONFIG_FILE).is_file():
      raise ConversionError(f"{src} is a Hugging Face folder, not a recast checkpoint; it "
                            "loads in transformers as it is (`recast convert hf-to-recast` "
                            "brings it into recast)") from e
    if _t5x_kind(src) is not None:
      raise t5x_error(src) from e
    raise
  if not ref.is_param_checkpoint and not checkpoints.is_step_dir(ref.folder) and _t5x_kind(
      ref.folder) is not None:  # a T5X model dir: checkpoint_N folders of T5X's
    raise t5x_error(src)
  if not ref.is_param_checkpoint:
    missing = checkpoints.missing_files(ref.folder)
    if missing:
      raise ConversionError(f"{ref.folder} is damaged (missing {', '.join(missing)}); "
                            "convert another of the run's checkpoint_N folders")
  meta = ref.meta
  if "model" not in meta:
    raise ConversionError(f"{ref.folder} records no model config; convert a checkpoint "
                          "written by recast")
  config = network.T5Config(**meta["model"])
  shapes = _recast_shapes(config)
  expected = _nest({p: jax.ShapeDtypeStruct(s, np.float32) for p, s in shapes.items()})
  tree = checkpoints.load_initial_params(ref.folder, expected_params=expected, vocabulary=None)
  flat = {_path(path): np.asarray(leaf, np.float32)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  vocabulary = meta.get("vocabulary") or {}
  return RecastModel(config, flat, ref.step, vocabulary,
                     ref.vocabulary_file or _recorded_vocabulary_file(vocabulary))


def _recorded_vocabulary_file(vocabulary: dict[str, Any]) -> Optional[Path]:
  """The SentencePiece file a checkpoint's metadata names, if it is still there unchanged
  (runs from before MODEL_DIR/spiece.model travelled with the run)."""
  path = vocabulary.get("path")
  if vocabulary.get("type") != "sentencepiece" or not path or not os.path.isfile(path):
    return None
  digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
  return Path(path) if vocabulary.get("sha256") in (None, digest) else None


def _path(keys) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in keys)


# --- recast -> Hugging Face --------------------------------------------------------------

GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def generation_config() -> dict[str, Any]:
  """What transformers writes for a T5: decoding starts at pad (0) and stops at EOS (1)."""
  return {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}


def byt5_tokenizer_config(extra_ids: int) -> dict[str, Any]:
  """tokenizer_config.json of a ByT5Tokenizer with seqio.ByteVocabulary's ids.

  Both give byte b the id b + 3 after <pad> 0, </s> 1, <unk> 2, but ByT5Tokenizer numbers
  its sentinels upwards from 259 while seqio counts <extra_id_0> down from the top
  (vocab_size - 1), as T5 does; the table pins seqio's ids."""
  size = 259 + extra_ids
  token = lambda text, special: {"content": text, "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False, "special": special}
  table = {str(i): token(t, True) for i, t in enumerate(("<pad>", "</s>", "<unk>"))}
  for i in range(extra_ids):
    table[str(size - 1 - i)] = token(f"<extra_id_{i}>", True)
  return {"tokenizer_class": "ByT5Tokenizer", "extra_ids": 0, "added_tokens_decoder": table,
          "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
          "extra_special_tokens": [f"<extra_id_{i}>" for i in range(extra_ids)]}


def recast_to_hf(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
  """Writes a recast checkpoint (a run's MODEL_DIR: its newest; a `checkpoint_N`; a
  parameter checkpoint) as a new HF T5 folder `dst`: config.json, model.safetensors,
  generation_config.json and the tokenizer (spiece.model + tokenizer_config.json for a
  SentencePiece vocabulary, a ByT5Tokenizer config for recast's byte vocabulary)."""
  from safetensors.numpy import save_file
  src, dst = Path(src), Path(dst)
  _check_destination(dst)
  model = read_recast(src)
  tensors = {}
  for path in _recast_shapes(model.config):
    name, kind = hf_name(path)
    tensors[name] = np.ascontiguousarray(_TO_HF[kind](model.params[path]))
  kind = model.vocabulary.get("type")
  extra_ids = int(model.vocabulary.get("extra_ids", _DEFAULT_EXTRA_IDS))
  with atomic_files.staged_dir(dst) as tmp:
    save_file(tensors, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
    atomic_files.write_json(tmp / CONFIG_FILE, config_to_hf(model.config))
    atomic_files.write_json(tmp / GENERATION_CONFIG_FILE, generation_config())
    if model.vocabulary_file:
      shutil.copyfile(model.vocabulary_file, tmp / checkpoints.VOCAB_FILE)
      atomic_files.write_json(tmp / TOKENIZER_CONFIG_FILE,
                              {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids})
    elif kind == "byte":
      atomic_files.write_json(tmp / TOKENIZER_CONFIG_FILE, byt5_tokenizer_config(extra_ids))
  if not model.vocabulary_file and kind != "byte":
    print(f"note: {src} carries no vocabulary file, so {dst} has no tokenizer; add the "
          "spiece.model it was trained with", file=sys.stderr)
  return dst


def _check_destination(dst: Path) -> None:
  if dst.exists():
    raise ConversionError(f"{dst} already exists; choose a new destination or remove it first")


# --- T5X -----------------------------------------------------------------------------------
#
# T5X's trees (t5x/examples/t5/network.py) have recast's names; dense kernels end in
# `/kernel`, and DenseGeneral stores attention kernels flattened: query/key/value
# [d_model, heads*d_kv], out [heads*d_kv, d_model] (heads major). A T5X checkpoint_N is
#   msgpack (t5x.checkpoints.Checkpointer): `checkpoint` = flax msgpack of
#     {"version": 3, "optimizer": {"target": params, "state": {"step", "param_states"}}},
#     each partitioned array replaced by the JSON of a tensorstore zarr spec whose path is
#     relative to the folder ("target.encoder.layers_0.attention.query.kernel/");
#   orbax (t5x.checkpoints.OrbaxCheckpointManagerInterface): `state/` is an orbax PyTree
#     (OCDBT) of {"target", "state"}, beside `_CHECKPOINT_METADATA`.

T5X_CHECKPOINT_FILE = "checkpoint"
T5X_LAYOUTS = ("msgpack", "orbax")
T5X_VERSION = 3
_T5X_CHUNK_BYTES = 64 * 1024 * 1024  # T5X's desired zarr chunk size
_ORBAX_METADATA = "_METADATA"
_DENSE_LEAVES = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo", "logits_dense")


def _t5x_kind(folder: Path) -> Optional[tuple[str, Path]]:
  """("msgpack", the `checkpoint` file) or ("orbax", the PyTree folder) of one T5X
  checkpoint folder; None if it is not one."""
  if (folder / "state" / _ORBAX_METADATA).is_file():
    return "orbax", folder / "state"
  for base in (folder, folder / "state"):  # `state/checkpoint`: T5X's first orbax layout
    if (base / T5X_CHECKPOINT_FILE).is_file():
      return "msgpack", base / T5X_CHECKPOINT_FILE
  return None


def _t5x_checkpoint(src: Path) -> tuple[str, Path, int]:
  """(layout, file or folder, step) of the T5X checkpoint `src` names: a `checkpoint_N`
  folder, its `checkpoint` file, or a model dir (its newest checkpoint)."""
  steps = checkpoints.checkpoint_steps(src)
  if checkpoints.is_param_checkpoint(src) or checkpoints.is_step_dir(src) or (
      steps and checkpoints.is_step_dir(src / f"{checkpoints.STEP_PREFIX}_{steps[-1]}")):
    raise ConversionError(f"{src} is a recast checkpoint, not a T5X one; recast reads it as "
                          "it is (`recast convert recast-to-t5x` writes T5X's layout)")
  step_of = lambda folder: int(m.group(1)) if (m := re.search(r"_(\d+)$", folder.name)) else 0
  if src.is_file() and src.name == T5X_CHECKPOINT_FILE:
    base = src.parent.parent if src.parent.name == "state" else src.parent
    return "msgpack", src, step_of(base)
  kind = _t5x_kind(src)
  if kind:
    return (*kind, step_of(src))
  found = sorted((int(m.group(1)), p) for p in (src.iterdir() if src.is_dir() else [])
                 if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and _t5x_kind(p))
  if not found:
    raise ConversionError(
        f"{src} is not a T5X checkpoint: it has no `{T5X_CHECKPOINT_FILE}` msgpack file, no "
        "orbax state/ folder and no checkpoint_N folders holding one; point at a T5X "
        "checkpoint_N folder or its model dir")
  step, folder = found[-1]
  return (*_t5x_kind(folder), step)


def _is_ts_spec(value: Any) -> bool:
  return isinstance(value, dict) and {"driver", "kvstore", "metadata"} <= value.keys()


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  """{path: leaf} of nested dicts; tensorstore spec dicts are leaves."""
  if isinstance(tree, dict) and not _is_ts_spec(tree):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, prefix + (str(key),)))
    return flat
  return {prefix: tree}


def _read_ts_spec(spec: dict, base: Path, name: str) -> np.ndarray:
  """The array a T5X msgpack's tensorstore spec names (its path relative to `base`)."""
  import tensorstore as ts
  spec = json.loads(json.dumps(spec))  # a copy
  kvstore = spec.get("kvstore") or {}
  relative = kvstore.get("path", spec.pop("path", None))  # tensorstore<0.1.14 had it on top
  if relative is None or kvstore.get("driver") not in ("file", "gfile", "gcs"):
    raise ConversionError(f"{base}: {name} is stored with an unsupported tensorstore spec "
                          f"{spec}; recast reads T5X's file, gfile and gcs zarr specs")
  spec["kvstore"] = {"driver": "file", "path": str(base.resolve() / relative)}
  metadata = spec.get("metadata", {})
  for key in ("chunks", "compressor"):  # as T5X: open however the array was chunked
    metadata.pop(key, None)
  if spec.get("dtype") == "uint16" or metadata.get("dtype") == "<u2":
    raise ConversionError(f"{base}: {name} is stored as uint16 (T5X checkpoint version < 3); "
                          "re-save it with a current T5X")
  try:
    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())
  except Exception as e:  # tensorstore raises ValueError for missing or damaged arrays
    raise ConversionError(f"{base}: cannot read {name} ({e})") from e


def _read_t5x_msgpack(path: Path) -> dict:
  """{"target": params, "step": step} of a T5X msgpack checkpoint (optimizer state unread)."""
  from flax import serialization
  try:
    contents = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:
    raise ConversionError(f"{path} is not a T5X msgpack checkpoint ({e})") from e
  if not isinstance(contents, dict):
    raise ConversionError(f"{path} is not a T5X msgpack checkpoint (no state dict)")
  version = contents.get("version", 0)
  if version and version < 2:
    raise ConversionError(f"{path}: T5X checkpoint version {version}; T5X (and recast) read "
                          "versions 2 and later")
  state = contents["optimizer"] if version else contents  # version 0: a plain flax state dict
  if not isinstance(state, dict) or not isinstance(state.get("target"), dict):
    raise ConversionError(f"{path} holds no `target` parameters; is it a T5X checkpoint?")
  values = {}
  for key, leaf in _flatten(state["target"]).items():
    name = "/".join(("target",) + key)
    if _is_ts_spec(leaf):
      values[key] = _read_ts_spec(leaf, path.parent, name)
    elif isinstance(leaf, str) and leaf.startswith("PLACEHOLDER://"):  # T5X's early orbax
      values[key] = _read_ts_spec(
          {"driver": "zarr", "kvstore": {"driver": "file",
                                         "path": leaf.removeprefix("PLACEHOLDER://")},
           "metadata": {}}, path.parent, name)
    else:
      values[key] = leaf
  step = (state.get("state") or {}).get("step")
  return {"target": _nest(values), "step": None if _is_ts_spec(step) else step}


def _read_t5x_orbax(folder: Path) -> dict:
  """{"target": params, "step": step} of T5X's orbax layout (`checkpoint_N/state`)."""
  import orbax.checkpoint as ocp
  folder = folder.resolve()
  try:
    tree = ocp.PyTreeCheckpointHandler().metadata(folder).tree
    if not isinstance(tree, dict) or not isinstance(tree.get("target"), dict):
      raise ConversionError(f"{folder} holds no `target` parameters; is it a T5X checkpoint?")
    item = {"target": tree["target"]}
    if isinstance(tree.get("state"), dict) and "step" in tree["state"]:
      item["state"] = {"step": tree["state"]["step"]}
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      restored = checkpointer.restore(folder, args=ocp.args.PyTreeRestore(
          item=item, restore_args=as_numpy, partial_restore=True))
  except ConversionError:
    raise
  except Exception as e:  # orbax and tensorstore raise many types for damaged files
    raise ConversionError(f"{folder} is not a readable orbax checkpoint "
                          f"({checkpoints.damage_reason(e)})") from e
  return {"target": restored["target"], "step": (restored.get("state") or {}).get("step")}


def _config_from_t5x(flat: dict[tuple[str, ...], np.ndarray], *,
                     source: str) -> network.T5Config:
  """A T5 config from a T5X target's shapes (names without `kernel`). What shapes cannot
  say keeps T5X's defaults: relative_attention_max_distance 128, layer_norm_epsilon 1e-6;
  two input projections mean gated-GELU (T5.1.1), one ReLU (T5.1.0)."""
  def get(*path):
    if path not in flat:
      raise ConversionError(f"{source}: its target has no {'/'.join(path)}; recast converts "
                            "T5X's T5 encoder-decoders (t5x/examples/t5/network.py)")
    return flat[path]
  vocab_size, d_model = get("token_embedder", "embedding").shape
  num_heads, num_buckets = get("encoder", "relpos_bias", "rel_embedding").shape
  joined_kv = int(np.prod(get("encoder", "layers_0", "attention", "query").shape[1:]))
  mlp = {p[3] for p in flat if p[:3] == ("encoder", "layers_0", "mlp")}
  count = lambda stack: len({p[1] for p in flat if p[0] == stack and p[1].startswith("layers_")})
  return network.T5Config(
      vocab_size=int(vocab_size), d_model=int(d_model), num_heads=int(num_heads),
      d_kv=joined_kv // int(num_heads), d_ff=int(get("encoder", "layers_0", "mlp", "wo").shape[0]),
      num_encoder_layers=count("encoder"), num_decoder_layers=count("decoder"),
      feed_forward="gated-gelu" if "wi_0" in mlp else "relu",
      tie_word_embeddings=("decoder", "logits_dense") not in flat,
      relative_attention_num_buckets=int(num_buckets))


_GIN_ACTIVATIONS = re.compile(r"mlp_activations\s*=\s*[(\[]([^)\]]*)[)\]]")


def _check_t5x_activations(config: network.T5Config, gin_files: list[Path]) -> None:
  """Raises ConversionError when the T5X model dir's config.gin names MLP activations
  other than the ones the shapes were read as (gelu+linear gated, or relu)."""
  gin_file = next((f for f in gin_files if f.is_file()), None)
  match = gin_file and _GIN_ACTIVATIONS.search(gin_file.read_text(errors="replace"))
  if not match:
    return
  names = tuple(re.findall(r"[\w-]+", match.group(1)))
  expected = ("gelu", "linear") if config.feed_forward == "gated-gelu" else ("relu",)
  if names != expected:
    raise ConversionError(
        f"{gin_file}: mlp_activations = {names}, but recast's T5 has "
        f"{' or '.join(map(str, [('gelu', 'linear'), ('relu',)]))} feed-forwards only")


def params_from_t5x(target: dict, *, source: str) -> tuple[network.T5Config, dict]:
  """(config, recast parameter tree) of a T5X `target` tree (arrays)."""
  flat = {}
  for path, value in _flatten(target).items():
    flat[path[:-1] if path[-1] == "kernel" else path] = np.asarray(value)
  config = _config_from_t5x(flat, source=source)
  params = {}
  for path, shape in _recast_shapes(config).items():
    value = flat.pop(path, None)
    if value is None:
      raise ConversionError(f"{source}: its target has no {'/'.join(path)} (expected from "
                            f"the other shapes: {shape})")
    if value.shape != shape and path[-1] in _ATTENTION and value.size == np.prod(shape):
      value = value.reshape(shape)  # DenseGeneral's flattened [d, h*k] / [h*k, d]
    if value.shape != shape:
      raise ConversionError(f"{source}: {'/'.join(path)} has shape {value.shape}, but the "
                            f"other shapes imply {shape}; is it a T5X T5 checkpoint?")
    params[path] = np.asarray(value, np.float32) if value.dtype != np.float32 else value
  if flat:
    extra = sorted("/".join(p) for p in flat)
    raise ConversionError(f"{source}: parameters {', '.join(extra[:5])}"
                          f"{' ...' if len(extra) > 5 else ''} are not part of a T5 "
                          "recast knows; recast converts t5x/examples/t5 networks")
  return config, _nest(params)


def params_to_t5x(params: dict[tuple[str, ...], np.ndarray]) -> dict[tuple[str, ...], np.ndarray]:
  """T5X target paths and arrays of recast parameters (dense leaves gain `kernel`; attention
  kernels are flattened as T5X's DenseGeneral stores them)."""
  target = {}
  for path, value in params.items():
    if path[-1] in _ATTENTION:
      value = value.reshape(value.shape[0], -1) if path[-1] != "out" else value.reshape(
          -1, value.shape[-1])
    target[path + ("kernel",) if path[-1] in _DENSE_LEAVES else path] = value
  return target


def t5x_to_recast(src: str | os.PathLike, dst: str | os.PathLike, *,
                  vocabulary: Optional[str | os.PathLike] = None) -> Path:
  """Converts a T5X checkpoint (msgpack + tensorstore or orbax; a checkpoint_N folder or its
  model dir) into a new recast parameter checkpoint `dst`. Only the parameters (`target`)
  and step are read; optimizer state is left behind. `vocabulary`: the spiece.model it was
  trained with (default: a spiece.model beside the checkpoint, if any)."""
  src, dst = Path(src), Path(dst)
  _check_destination(dst)
  if vocabulary and not Path(vocabulary).is_file():
    raise ConversionError(f"--vocabulary {vocabulary} does not exist; give the spiece.model "
                          "the T5X model was trained with")
  layout, location, step = _t5x_checkpoint(src)
  state = _read_t5x_msgpack(location) if layout == "msgpack" else _read_t5x_orbax(location)
  step = step if state["step"] is None else int(np.asarray(state["step"]))
  config, params = params_from_t5x(state["target"], source=str(location))
  folder = location.parent  # checkpoint_N (or its state/)
  model_dirs = [folder.parent, folder.parent.parent]
  _check_t5x_activations(config, [f / "config.gin" for f in model_dirs])
  vocab_file = Path(vocabulary) if vocabulary else next(
      (f / checkpoints.VOCAB_FILE for f in [folder, *model_dirs]
       if (f / checkpoints.VOCAB_FILE).is_file()), None)
  info = None
  if vocab_file:
    info = _sentencepiece_info(vocab_file, _DEFAULT_EXTRA_IDS)
    _check_vocabulary_fits(info, config, source=vocab_file)
  return checkpoints.save_param_checkpoint(dst, params, config=config, vocabulary=info,
                                           vocabulary_file=vocab_file, step=step)


def recast_to_t5x(src: str | os.PathLike, dst: str | os.PathLike, *,
                  layout: str = "msgpack") -> Path:
  """Writes a recast checkpoint as a new T5X model dir `dst` holding `checkpoint_<step>` in
  T5X's msgpack + tensorstore layout or its orbax one (and the run's spiece.model). The
  parameters go in `target` and the step in `state/step`; the optimizer state is not
  converted (recast's is optax's), which T5X's InferenceState (eval, infer) does not read
  and its training restores with RestoreCheckpointConfig(fallback_to_scratch=True).
  Returns the checkpoint_<step> folder."""
  if layout not in T5X_LAYOUTS:
    raise ConversionError(f"--t5x_layout {layout!r}: use one of {', '.join(T5X_LAYOUTS)}")
  src, dst = Path(src), Path(dst)
  _check_destination(dst)
  model = read_recast(src)
  target = params_to_t5x(model.params)
  name = f"{checkpoints.STEP_PREFIX}_{model.step}"
  with atomic_files.staged_dir(dst) as tmp:
    if layout == "msgpack":
      (tmp / name).mkdir()
      _write_t5x_msgpack(tmp / name, target, model.step)
    else:
      _write_t5x_orbax(tmp, target, model.step)
    if model.vocabulary_file:
      shutil.copyfile(model.vocabulary_file, tmp / checkpoints.VOCAB_FILE)
  return dst / name


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """A zarr chunk shape under T5X's 64 MiB that divides `shape` (halving the largest even
  dimension, as T5X's _choose_chunk_shape splits evenly)."""
  chunks = list(shape)
  while int(np.prod(chunks)) * itemsize > _T5X_CHUNK_BYTES:
    even = [i for i, c in enumerate(chunks) if c % 2 == 0]
    if not even:
      break
    largest = max(even, key=lambda i: chunks[i])
    chunks[largest] //= 2
  return chunks


def _write_t5x_msgpack(folder: Path, target: dict[tuple[str, ...], np.ndarray],
                       step: int) -> None:
  import tensorstore as ts
  from flax import serialization
  specs = {}
  for path, value in target.items():
    relative = ".".join(("target",) + path)
    spec = ts.Spec({"driver": "zarr", "dtype": value.dtype.name,
                    "kvstore": {"driver": "file", "path": relative},
                    "metadata": {"compressor": {"id": "gzip"}, "shape": list(value.shape),
                                 "chunks": _chunk_shape(value.shape, value.itemsize)}}).to_json()
    absolute = json.loads(json.dumps(spec))
    absolute["kvstore"]["path"] = str(folder.resolve() / spec["kvstore"]["path"])
    ts.open(absolute, create=True, open=True).result().write(value).result()
    specs[path] = spec
  contents = {"version": T5X_VERSION,
              "optimizer": {"target": _nest(specs), "state": {"step": np.int32(step)}}}
  atomic_files.write_bytes(folder / T5X_CHECKPOINT_FILE,
                           serialization.msgpack_serialize(contents))


def _write_t5x_orbax(model_dir: Path, target: dict[tuple[str, ...], np.ndarray],
                     step: int) -> None:
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(step_prefix=checkpoints.STEP_PREFIX, create=True,
                                         enable_async_checkpointing=False)
  state = {"target": _nest(target), "state": {"step": np.int32(step)}}
  with ocp.CheckpointManager(model_dir.resolve(), options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)}) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    manager.wait_until_finished()


# --- Command line ----------------------------------------------------------------------

DIRECTIONS = {"hf-to-recast": hf_to_recast, "recast-to-hf": recast_to_hf,
              "t5x-to-recast": t5x_to_recast, "recast-to-t5x": recast_to_t5x}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "direction", choices=list(DIRECTIONS),
      help="hf-to-recast: Hugging Face T5 folder -> recast parameter checkpoint (usable as "
      "INITIAL_CHECKPOINT_PATH); recast-to-hf: a run's MODEL_DIR (its newest checkpoint), "
      "one checkpoint_N or a parameter checkpoint -> Hugging Face folder (loads with "
      "T5ForConditionalGeneration.from_pretrained); t5x-to-recast: a T5X checkpoint_N "
      "(msgpack + tensorstore, or orbax) or its model dir -> recast parameter checkpoint; "
      "recast-to-t5x: a recast checkpoint -> T5X model dir DST/checkpoint_<step>")
  parser.add_argument("src", help="folder to convert")
  parser.add_argument("dst", help="folder to create (must not exist)")
  parser.add_argument("--t5x_layout", choices=T5X_LAYOUTS, default="msgpack",
                      help="recast-to-t5x: T5X's msgpack + tensorstore Checkpointer layout "
                      "(default) or its orbax one")
  parser.add_argument("--vocabulary", metavar="SPIECE_MODEL",
                      help="t5x-to-recast: the SentencePiece model the T5X model was trained "
                      "with (default: a spiece.model beside the checkpoint)")


def main(args: argparse.Namespace) -> int:
  kwargs = {}
  if args.direction == "recast-to-t5x":
    kwargs["layout"] = args.t5x_layout
  elif args.direction == "t5x-to-recast":
    kwargs["vocabulary"] = args.vocabulary
  dst = DIRECTIONS[args.direction](args.src, args.dst, **kwargs)
  print(f"wrote {dst}")
  if args.direction == "recast-to-t5x":
    print("note: parameters and step only, no optimizer state; to train on from it in T5X "
          "set RestoreCheckpointConfig.fallback_to_scratch = True (fresh Adafactor state)",
          file=sys.stderr)
  return 0
