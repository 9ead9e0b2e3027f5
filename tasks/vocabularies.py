"""The one place tasks take their vocabulary from, resolved when it is used.

Tasks are registered at import time, before gin is parsed, so their output features hold
`TASK_VOCABULARY`, a proxy that asks `get_vocabulary()` on every use. In order:

  1. `use_vocabulary(vocab)` (a context manager for tests and scripts);
  2. the gin macro `VOCABULARY`: a seqio.Vocabulary (`@seqio.SentencePieceVocabulary()`),
     a SentencePiece model path, "byte", or "auto";
  3. the environment variable `RECAST_VOCABULARY` (a path, "byte" or "auto");
  4. T5's public 32k SentencePiece model (`T5_VOCABULARY_PATH`) where it can be read;
  5. seqio's byte vocabulary, with a warning (once) of what it costs.
SentencePiece and byte vocabularies both get T5's 100 extra ids (the sentinels).

"auto" is a SentencePiece model of the run's own training text: the inputs and targets of
the train split of MIXTURE_OR_TASK_NAME's tasks, `auto_vocab_size` pieces. It is built on
first use into the recast cache ($RECAST_CACHE_DIR/vocabularies, default
~/.cache/recast/vocabularies) under a key of that text and the settings, and reused by every
later run over the same text; a run records it as MODEL_DIR/spiece.model like any other.
`build_vocabulary` (also behind `recast vocab build`) trains the models.

`describe(vocab)` is what checkpoints record; `check_compatible` rejects a mismatch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import string
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import gin
import seqio
import sentencepiece as spm
import tensorflow as tf
from absl import logging

from recast import errors, gin_config

T5_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
EXTRA_IDS = 100
BYTE = "byte"
AUTO = "auto"
ENV_VAR = "RECAST_VOCABULARY"
AUTO_MAX_PIECES = 8000
AUTO_FORMAT = 1  # part of the cache key: bump when the way "auto" builds a model changes

# T5X gin files write `VOCABULARY = @seqio.SentencePieceVocabulary()`.
gin.external_configurable(seqio.SentencePieceVocabulary, module="seqio")
gin.external_configurable(seqio.ByteVocabulary, module="seqio")


class VocabularyError(errors.UserError):
  """A vocabulary that cannot be loaded, or one that differs from a checkpoint's."""


class VocabBuildError(VocabularyError):
  """Text a SentencePiece model cannot be built from (none, or too little for its size)."""


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
    if value.strip().lower() == AUTO:
      return auto_vocabulary()
    return sentencepiece_vocabulary(os.path.expanduser(value.strip()))
  raise VocabularyError(f"{where} is {value!r}; give a SentencePiece model path, 'byte', "
                        "'auto' or a seqio.Vocabulary")


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
  _warn_once(BYTE_FALLBACK_WARNING, T5_VOCABULARY_PATH)
  return byte_vocabulary()


BYTE_FALLBACK_WARNING = (
    "T5's vocabulary (%s) cannot be read and no VOCABULARY is set; using the byte "
    "vocabulary (one token per UTF-8 byte). Small models learn far slower on bytes (held-out "
    "TREC, a tiny model: 22.4%% accuracy on bytes, 37.0%% with a 1,000-piece SentencePiece "
    "model; the majority class is 27.6%%). Pass --gin.VOCABULARY=auto to build one from the "
    "run's training text (cached, reused by later runs), or build one with `recast vocab "
    "build --task TASK --vocab_size 1000 --out spiece.model` and pass "
    "--gin.VOCABULARY=spiece.model; --gin.VOCABULARY=byte keeps bytes without this warning")


# --------------------------------------------------------------------------- building models


def build_vocabulary(lines: Iterable[str], *, vocab_size: int, out: str | os.PathLike,
                     max_sentences: int = 1_000_000, character_coverage: float = 0.9995,
                     required_text: Sequence[str] = (), hard_vocab_limit: bool = True) -> Path:
  """Trains a unigram SentencePiece model on `lines` and writes it to `out` atomically.

  T5's conventions: pad 0, eos 1, unk 2, no bos (the 100 extra ids are added on top by
  `seqio.SentencePieceVocabulary`). `required_text` (e.g. label names such as
  "not_entailment") is added to the training text, its characters are always kept whatever
  `character_coverage` says, and each string must encode without unknown pieces (else
  VocabBuildError). With `hard_vocab_limit=False` the model has at most `vocab_size` pieces
  (fewer when the text supports fewer); else exactly `vocab_size`. Returns the path.
  """
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
    corpus = Path(tmp) / "corpus.txt"
    count = 0
    with open(corpus, "w", encoding="utf-8") as f:
      for line in required_text:
        f.write(line + "\n")
      for line in lines:
        f.write(line.replace("\n", " ") + "\n")
        count += 1
    if count == 0:
      raise VocabBuildError("no text to train on: give --task with a train split or "
                            "--text_file with non-empty lines")
    try:
      spm.SentencePieceTrainer.train(
          input=str(corpus), model_prefix=str(Path(tmp) / "spm"), vocab_size=vocab_size,
          model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
          character_coverage=character_coverage, input_sentence_size=max_sentences,
          shuffle_input_sentence=True, hard_vocab_limit=hard_vocab_limit, minloglevel=2,
          required_chars="".join(sorted(set("".join(required_text)).difference(
              string.whitespace))))  # spaces are SentencePiece's word boundaries, not pieces
    except RuntimeError as e:
      raise VocabBuildError(f"SentencePiece could not build {vocab_size} pieces from "
                            f"{count} lines: {e}. Use a smaller --vocab_size or more text")
    _check_encodes(Path(tmp) / "spm.model", required_text)
    os.replace(Path(tmp) / "spm.model", out)
  return out


def _check_encodes(model_file: Path, texts: Sequence[str]) -> None:
  processor = spm.SentencePieceProcessor(model_file=str(model_file))
  broken = [t for t in texts if processor.unk_id() in processor.encode(t)
            or processor.decode(processor.encode(t)) != t]
  if broken:
    raise VocabBuildError(f"the vocabulary cannot spell {broken[:5]} (target strings); use "
                          "a larger --vocab_size or more text")


def auto_vocab_size(lines: Sequence[str]) -> int:
  """Pieces for "auto": 4 * sqrt(words of text), in [characters + 16, AUTO_MAX_PIECES].

  About 1,000 for TREC's 5,452 training questions (~55k words), where a 1,000-piece model
  beat bytes with a tiny model; a few thousand for GLUE-sized text, 8,000 at most. It is
  an upper bound: SentencePiece keeps fewer pieces when the text supports fewer.
  """
  words = sum(len(line.split()) for line in lines)
  characters = len(set("".join(lines)))
  return int(max(characters + 16, min(AUTO_MAX_PIECES, round(4 * math.sqrt(words)))))


def cache_dir() -> Path:
  """recast's cache folder: $RECAST_CACHE_DIR, default ~/.cache/recast."""
  return Path(os.environ.get("RECAST_CACHE_DIR") or Path.home() / ".cache" / "recast")


_TEXT_STEPS_END = (seqio.preprocessors.tokenize, seqio.preprocessors.tokenize_and_append_eos)


def training_text(provider: seqio.DatasetProviderBase, split: str = "train"
                  ) -> tuple[list[str], list[str]]:
  """(lines, labels): the `inputs` and `targets` text of `split` of every task of
  `provider` (a task or mixture; tasks without the split are skipped), as each task's
  preprocessors render it before tokenization; `labels` are the distinct targets of the
  tasks with at most 100 of them (classification), which the model must spell."""
  lines, labels = [], []
  for task in seqio.get_subtasks(provider):
    if split not in task.splits:
      continue
    ds = task.source.get_dataset(split=split, shuffle=False)
    for step in task.preprocessors:
      if step in _TEXT_STEPS_END or isinstance(step, seqio.CacheDatasetPlaceholder):
        break
      ds = seqio.utils.add_kwargs_to_transform(step, sequence_length=None,
                                               output_features=task.output_features)(ds)
    targets = set()
    for ex in ds.as_numpy_iterator():
      for key in ("inputs", "targets"):
        value = ex.get(key)
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        if isinstance(text, str) and text.strip():
          lines.append(" ".join(text.split()))
          if key == "targets":
            targets.add(text)
    if len(targets) <= 100:
      labels.extend(sorted(targets - set(labels)))
  return lines, labels


# (task or mixture name, split, data dirs, cache dir) -> (the task or mixture and its subtasks
# as they were registered, the vocabulary). An entry serves only the same provider objects: a
# task registered again (new text) is a new object and gets its own model. (Keyed by id(), a
# new object could be handed a freed one's id and its model.)
_auto_models: dict[tuple, tuple[tuple, seqio.Vocabulary]] = {}
_building: list[str] = []


def auto_vocabulary(split: str = "train") -> seqio.Vocabulary:
  """VOCABULARY=auto: the SentencePiece model of MIXTURE_OR_TASK_NAME's training text,
  built once into the cache (`cache_dir()/vocabularies`) and reused while the text is the
  same. VocabularyError when no task is named or its text is empty."""
  name = gin_config.macro_value("MIXTURE_OR_TASK_NAME", None)
  if not isinstance(name, str):
    raise VocabularyError("VOCABULARY=auto builds a vocabulary from the run's training text, "
                          "so it needs MIXTURE_OR_TASK_NAME set; or build one with `recast "
                          "vocab build --task TASK --vocab_size 1000 --out spiece.model`")
  if _building:
    raise VocabularyError(f"VOCABULARY=auto: reading the training text of {name!r} needed the "
                          "vocabulary itself; build one with `recast vocab build` instead")
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    raise VocabularyError(f"VOCABULARY=auto: no task or mixture {name!r} to read training "
                          "text from; `recast tasks list` shows them") from None
  providers = (provider, *seqio.get_subtasks(provider))
  memo = (name, split, repr(gin_config.macro_value("DATA_DIR", None)),
          repr(gin_config.macro_value("TASK_DATA_DIRS", None)), str(cache_dir()))
  held = _auto_models.get(memo)
  if held is None or len(held[0]) != len(providers) or \
      any(a is not b for a, b in zip(held[0], providers)):
    _building.append(name)
    try:
      _auto_models[memo] = (providers,
                            sentencepiece_vocabulary(str(_auto_model_file(provider, split))))
    finally:
      _building.pop()
  return _auto_models[memo][1]


def _auto_model_file(provider: seqio.DatasetProviderBase, split: str) -> Path:
  lines, labels = training_text(provider, split)
  if not lines:
    raise VocabularyError(f"VOCABULARY=auto: {provider.name!r} has no {split} text to build a "
                          "vocabulary from; set VOCABULARY to a model file or 'byte'")
  size = auto_vocab_size(lines + labels)
  settings = {"format": AUTO_FORMAT, "vocab_size": size, "character_coverage": 0.9995,
              "required_text": labels}
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for line in lines:
    digest.update(line.encode("utf-8") + b"\n")
  target = cache_dir() / "vocabularies" / f"auto_{digest.hexdigest()[:20]}.model"
  if target.is_file():
    print(f"VOCABULARY=auto: reusing {target} (built from the same {split} text of "
          f"{provider.name})", file=sys.stderr, flush=True)
    return target
  staged = build_vocabulary(lines, vocab_size=size, required_text=labels,
                            hard_vocab_limit=False,
                            out=target.with_name(f".{target.name}.{os.getpid()}"))
  try:
    os.link(staged, target)  # the first of concurrent builders wins; a model never changes
  except FileExistsError:
    pass
  finally:
    staged.unlink()
  pieces = spm.SentencePieceProcessor(model_file=str(target)).get_piece_size()
  print(f"VOCABULARY=auto: built a {pieces}-piece SentencePiece model from {len(lines):,} "
        f"lines of {provider.name}'s {split} text: {target} (reused by later runs over the "
        "same text)", file=sys.stderr, flush=True)
  return target


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
