"""recast's parameter checkpoints: what `INITIAL_CHECKPOINT_PATH` and `recast convert` use.

A parameter checkpoint is a folder:

    DST/
      recast_checkpoint.json   {"format": 1, "model": T5Config fields, "vocabulary": ...}
      params/                  orbax PyTree checkpoint of the float32 parameter tree
      spiece.model             the SentencePiece vocabulary (optional)

It is written under a temporary name and renamed into place, so a folder that exists is
complete. Training checkpoints (model, optimizer and data state, under MODEL_DIR) are the
trainer's; they point at the same `params` layout.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from recast import atomic_files, errors
from recast.trainer.network import T5Config

METADATA_FILE = "recast_checkpoint.json"
PARAMS_DIR = "params"
VOCAB_FILE = "spiece.model"
FORMAT_VERSION = 1


class CheckpointError(errors.UserError):
  """A checkpoint that cannot be read or does not fit the model; says what to do."""


def is_param_checkpoint(path: str | os.PathLike) -> bool:
  return (Path(path) / METADATA_FILE).is_file()


def save_param_checkpoint(path: str | os.PathLike, params: Any, *, config: T5Config,
                          vocabulary_file: Optional[str | os.PathLike] = None,
                          vocabulary: Optional[dict] = None) -> Path:
  """Writes `params` (a tree of arrays, boxes allowed) and metadata to a new folder `path`.

  `vocabulary` describes the vocabulary (e.g. {"type": "sentencepiece", "extra_ids": 100,
  "size": 32128}); `vocabulary_file` is copied to `spiece.model`.
  """
  params = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
  with atomic_files.staged_dir(path) as tmp:
    ocp.PyTreeCheckpointer().save(tmp / PARAMS_DIR, params)
    meta = {"format": FORMAT_VERSION, "model": config.to_dict(), "vocabulary": vocabulary}
    if vocabulary_file:
      shutil.copyfile(vocabulary_file, tmp / VOCAB_FILE)
    atomic_files.write_json(tmp / METADATA_FILE, meta)
  return Path(path)


def read_metadata(path: str | os.PathLike) -> dict:
  meta_path = Path(path) / METADATA_FILE
  if not meta_path.is_file():
    raise CheckpointError(
        f"{path} is not a recast parameter checkpoint (no {METADATA_FILE}); convert a "
        "Hugging Face model with `recast convert hf-to-recast SRC DST` or point at a "
        "folder written by recast")
  meta = json.loads(meta_path.read_text())
  if meta.get("format") != FORMAT_VERSION:
    raise CheckpointError(f"{meta_path}: format {meta.get('format')} is not supported "
                          f"(this recast reads format {FORMAT_VERSION})")
  return meta


def load_config(path: str | os.PathLike) -> T5Config:
  return T5Config(**read_metadata(path)["model"])


def vocabulary_file(path: str | os.PathLike) -> Optional[Path]:
  vocab = Path(path) / VOCAB_FILE
  return vocab if vocab.is_file() else None


def load_params(path: str | os.PathLike) -> Any:
  """Restores the parameter tree as numpy float32 arrays."""
  read_metadata(path)
  restored = ocp.PyTreeCheckpointer().restore(Path(path).resolve() / PARAMS_DIR)
  return jax.tree_util.tree_map(np.asarray, restored)


def check_params_match(params: Any, expected: Any, *, source: str) -> None:
  """Raises CheckpointError listing parameters whose names or shapes differ from `expected`.

  `expected` may hold arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).
  """
  got = {_key(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
  want = {_key(k): tuple(v.shape) for k, v in
          jax.tree_util.tree_leaves_with_path(nn.unbox(expected))}
  problems = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
  problems += [f"unexpected {k}" for k in sorted(got.keys() - want.keys())]
  problems += [f"{k}: checkpoint {got[k]} vs model {want[k]}"
               for k in sorted(want.keys() & got.keys()) if tuple(got[k]) != want[k]]
  if problems:
    shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8
                                       else "")
    raise CheckpointError(
        f"checkpoint {source} does not fit the model: {shown}. Use the model gin file the "
        "checkpoint was trained with (its recast_checkpoint.json lists the config)")


def _key(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)
