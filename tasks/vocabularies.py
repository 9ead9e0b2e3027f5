"""The one place tasks take their vocabulary from, resolved when it is used.

Tasks are registered at import time, before gin is parsed, so their output features hold
`TASK_VOCABULARY`, a proxy that asks `get_vocabulary()` on every use. In order:

  1. `use_vocabulary(vocab)` (a context manager for tests and scripts);
  2. the gin macro `VOCABULARY`: a seqio.Vocabulary (`@seqio.SentencePieceVocabulary()`),
     a SentencePiece model path, or "byte";
  3. the environment variable `RECAST_VOCABULARY` (a path, or "byte");
  4. T5's public 32k SentencePiece model (`T5_VOCABULARY_PATH`) where it can be read;
  5. seqio's byte vocabulary.
SentencePiece and byte vocabularies both get T5's 100 extra ids (the sentinels).

`describe(vocab)` is what checkpoints record; `check_compatible` rejects a mismatch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from typing import Any, Iterator, Mapping, Optional

import gin
import seqio
import tensorflow as tf
from absl import logging

from recast import errors

T5_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
EXTRA_IDS = 100
BYTE = "byte"
ENV_VAR = "RECAST_VOCABULARY"

# T5X gin files write `VOCABULARY = @seqio.SentencePieceVocabulary()`.
gin.external_configurable(seqio.SentencePieceVocabulary, module="seqio")
gin.external_configurable(seqio.ByteVocabulary, module="seqio")


class VocabularyError(errors.UserError):
  """A vocabulary that cannot be loaded, or one that differs from a checkpoint's."""


_override: list[seqio.Vocabulary] = []


@contextlib.contextmanager
def use_vocabulary(vocabulary: seqio.Vocabulary) -> Iterator[seqio.Vocabulary]:
  """Within the block, every task uses `vocabulary` (wins over gin and environment)."""
  _override.append(vocabulary)
  try:
    yield vocabulary
  finally:
    _override.pop()


@functools.lru_cache(maxsize=None)
def sentencepiece_vocabulary(path: str, extra_ids: int = EXTRA_IDS) -> seqio.Vocabulary:
  """A SentencePiece vocabulary with T5's sentinels; VocabularyError when unreadable."""
  if not tf.io.gfile.exists(path):
    raise VocabularyError(f"SentencePiece model {path!r} not found; build one with "
                          "`recast vocab build` or set VOCABULARY=byte")
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


@functools.lru_cache(maxsize=None)
def byte_vocabulary(extra_ids: int = EXTRA_IDS) -> seqio.Vocabulary:
  return seqio.ByteVocabulary(extra_ids=extra_ids)


_warned: set[str] = set()


def _warn_once(message: str, *args: Any) -> None:
  """An absl warning given once per process (the vocabulary is resolved on every use)."""
  text = message % args
  if text not in _warned:
    _warned.add(text)
    logging.warning(message, *args)


@functools.lru_cache(maxsize=1)
def _t5_vocabulary_readable() -> bool:
  try:
    return tf.io.gfile.exists(T5_VOCABULARY_PATH)
  except Exception:  # no network, no credentials: fall back quietly
    return False


def _from_setting(value: Any, where: str) -> seqio.Vocabulary:
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  if isinstance(value, seqio.Vocabulary):
    return value
  if isinstance(value, str) and value.strip():
    if value.strip().lower() == BYTE:
      return byte_vocabulary()
    return sentencepiece_vocabulary(os.path.expanduser(value.strip()))
  raise VocabularyError(f"{where} is {value!r}; give a SentencePiece model path, 'byte', "
                        "or a seqio.Vocabulary")


def _gin_vocabulary_setting() -> Any:
  try:
    return gin.query_parameter("VOCABULARY/macro.value")
  except ValueError:
    return None


def user_setting() -> Optional[str]:
  """Where the user chose a vocabulary ("gin macro VOCABULARY", the environment variable),
  or None when tasks fall back to T5's or the byte vocabulary."""
  if _gin_vocabulary_setting() is not None:
    return "gin macro VOCABULARY"
  if os.environ.get(ENV_VAR):
    return f"environment variable {ENV_VAR}"
  return None


def get_vocabulary() -> seqio.Vocabulary:
  """The vocabulary every task uses now (see the module docstring for the order)."""
  if _override:
    return _override[-1]
  setting = _gin_vocabulary_setting()
  if setting is not None:
    return _from_setting(setting, "gin macro VOCABULARY")
  if os.environ.get(ENV_VAR):
    return _from_setting(os.environ[ENV_VAR], f"environment variable {ENV_VAR}")
  if _t5_vocabulary_readable():
    return sentencepiece_vocabulary(T5_VOCABULARY_PATH)
  _warn_once("T5's vocabulary (%s) cannot be read and no VOCABULARY is set; using the "
             "byte vocabulary. Tiny models learn much slower on bytes; build one with "
             "`recast vocab build --task TASK --vocab_size 8000 --out spiece.model` and pass "
             "--gin.VOCABULARY=spiece.model", T5_VOCABULARY_PATH)
  return byte_vocabulary()


class TaskVocabulary(seqio.Vocabulary):
  """A seqio.Vocabulary that delegates everything to `get_vocabulary()` at call time."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def resolved(self) -> seqio.Vocabulary:
    return get_vocabulary()

  def __getattr__(self, name: str) -> Any:  # e.g. sentencepiece_model_file, tokenizer
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(get_vocabulary(), name)

  @property
  def bos_id(self) -> Optional[int]:
    return self.resolved.bos_id

  @property
  def eos_id(self) -> Optional[int]:
    return self.resolved.eos_id

  @property
  def pad_id(self) -> int:
    return self.resolved.pad_id

  @property
  def unk_id(self) -> Optional[int]:
    return self.resolved.unk_id

  @property
  def extra_ids(self) -> int:
    return self.resolved.extra_ids

  @property
  def vocab_size(self) -> int:
    return self.resolved.vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.resolved._base_vocab_size  # pylint: disable=protected-access

  def _encode(self, s):
    return self.resolved._encode(s)  # pylint: disable=protected-access

  def _decode(self, ids):
    return self.resolved._decode(ids)  # pylint: disable=protected-access

  def _encode_tf(self, s):
    return self.resolved._encode_tf(s)  # pylint: disable=protected-access

  def _decode_tf(self, ids):
    return self.resolved._decode_tf(ids)  # pylint: disable=protected-access

  def encode(self, s):
    return self.resolved.encode(s)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def __eq__(self, other) -> bool:
    if isinstance(other, TaskVocabulary):
      return True
    return self.resolved == other

  def __hash__(self) -> int:
    return hash(TaskVocabulary)

  def __repr__(self) -> str:
    return "TaskVocabulary(configured by VOCABULARY / RECAST_VOCABULARY)"


TASK_VOCABULARY = TaskVocabulary()


def output_features(vocabulary: seqio.Vocabulary = TASK_VOCABULARY
                    ) -> Mapping[str, seqio.Feature]:
  """T5's output features: "inputs" and "targets", both with EOS."""
  return {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
          "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}


def _resolve(vocab: seqio.Vocabulary) -> seqio.Vocabulary:
  return vocab.resolved if isinstance(vocab, TaskVocabulary) else vocab


def vocabulary_file(vocab: seqio.Vocabulary) -> Optional[str]:
  """The SentencePiece model file behind `vocab` (None for byte vocabularies)."""
  vocab = _resolve(vocab)
  return getattr(vocab, "sentencepiece_model_file", None)


def describe(vocab: seqio.Vocabulary) -> dict:
  """{"type", "size", "extra_ids", "sha256", "path"} for checkpoint metadata.

  `size` counts the extra ids; `sha256` is of the SentencePiece model file (None for
  byte vocabularies); `path` is informational and never compared.
  """
  vocab = _resolve(vocab)
  path = vocabulary_file(vocab)
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    kind = "sentencepiece"
  elif isinstance(vocab, seqio.ByteVocabulary):
    kind = "byte"
  else:
    kind = type(vocab).__name__
  sha = None
  if path:
    with tf.io.gfile.GFile(path, "rb") as f:
      sha = hashlib.sha256(f.read()).hexdigest()
  return {"type": kind, "size": int(vocab.vocab_size), "extra_ids": int(vocab.extra_ids),
          "sha256": sha, "path": path}


def check_compatible(expected: Mapping[str, Any], actual: Mapping[str, Any], *,
                     what: str = "the checkpoint") -> None:
  """Raises VocabularyError when two `describe` results name different vocabularies.

  `expected` is typically the checkpoint's record, `actual` the tasks' vocabulary.
  Keys missing from either side (older metadata) are not compared.
  """
  problems = [f"{key}: {what} has {expected[key]!r}, the tasks use {actual[key]!r}"
              for key in ("type", "size", "extra_ids", "sha256")
              if expected.get(key) is not None and actual.get(key) is not None
              and expected[key] != actual[key]]
  if problems:
    hint = f" (its model file: {expected.get('path')})" if expected.get("path") else ""
    raise VocabularyError(
        f"vocabulary mismatch with {what}{hint}: {'; '.join(problems)}. Set "
        "--gin.VOCABULARY to the vocabulary it was trained with (e.g. its spiece.model)")
