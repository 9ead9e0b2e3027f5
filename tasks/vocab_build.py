"""`recast vocab build`: a SentencePiece model with T5's conventions, from task text or files.

T5's conventions: pad 0, eos 1, unk 2, no bos; the 100 extra ids (sentinels) are added on
top by `seqio.SentencePieceVocabulary(extra_ids=100)`, not trained into the model. The text
is the train split of the chosen tasks (their natural-text fields, see
`TextTaskSpec.natural_text_fields`) and/or plain text files, one sentence or document
per line. The model file is written atomically.

  recast vocab build --task glue_rte --task glue_mrpc --vocab_size 8000 --out rte.model \
      --gin.DATA_DIR=../shared/data
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from recast import errors, gin_config
from recast.tasks import registry, sources, vocabularies


class VocabBuildError(errors.UserError):
  """Bad input to `recast vocab build`."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="vocab_command", metavar="{build}", required=True)
  build = sub.add_parser("build", help="train a SentencePiece model (T5 conventions)")
  build.add_argument("--task", action="append", default=[],
                     help="task whose train-split text to use (repeatable)")
  build.add_argument("--text_file", action="append", default=[],
                     help="plain text file, one sentence or document a line (repeatable)")
  build.add_argument("--vocab_size", type=int, required=True,
                     help="pieces in the model, without the 100 extra ids")
  build.add_argument("--out", required=True, help="path of the .model file to write")
  build.add_argument("--split", default="train", help="task split to read (default train)")
  build.add_argument("--max_sentences", type=int, default=1_000_000,
                     help="sample at most this many lines (default 1,000,000)")
  build.add_argument("--character_coverage", type=float, default=0.9995)


def task_text(task_names: Sequence[str], *, split: str = "train") -> Iterator[str]:
  """Lines of natural text from the source examples of `split` of each task."""
  for name in task_names:
    spec = registry.task_spec(name)
    source = sources.TaskDataSource(spec)
    ds = source.get_dataset(split=split, shuffle=False)
    for prepare in spec.prepare:
      ds = prepare(ds)
    for ex in ds.as_numpy_iterator():
      for field in spec.natural_text_fields:
        value = ex.get(field)
        for text in (value if hasattr(value, "__len__") and not isinstance(value, bytes)
                     else [value]):
          if isinstance(text, bytes):
            text = text.decode("utf-8")
          if isinstance(text, str) and text.strip():
            yield " ".join(text.split())


def file_text(paths: Sequence[str]) -> Iterator[str]:
  for path in paths:
    if not os.path.isfile(path):
      raise VocabBuildError(f"text file {path} not found")
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          yield line.rstrip("\n")


def label_names(task_names: Sequence[str]) -> list[str]:
  """The target strings of the classification tasks among `task_names`."""
  return [name for task in task_names for name in (registry.task_spec(task).label_names or ())]


def build_vocabulary(lines: Iterable[str], *, vocab_size: int, out: str | os.PathLike,
                     max_sentences: int = 1_000_000, character_coverage: float = 0.9995,
                     required_text: Sequence[str] = ()) -> Path:
  """Trains a unigram SentencePiece model on `lines` and writes it to `out` atomically.

  `required_text` (e.g. label names such as "not_entailment") is added to the training
  text, its characters are always kept whatever `character_coverage` says, and each string
  must encode without unknown pieces (else VocabBuildError).
  Returns the path; the model has `vocab_size` pieces with pad 0, eos 1, unk 2, no bos.
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
          shuffle_input_sentence=True, hard_vocab_limit=True, minloglevel=2,
          required_chars="".join(sorted(set("".join(required_text)))))
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


def main(args: argparse.Namespace) -> int:
  gin_config.parse_run_flags(args, command="vocab", finalize=False)
  if not args.task and not args.text_file:
    raise VocabBuildError("give at least one --task or --text_file")
  if args.vocab_size < 8:
    raise VocabBuildError(f"--vocab_size {args.vocab_size} is too small")

  def lines() -> Iterator[str]:
    yield from task_text(args.task, split=args.split)
    yield from file_text(args.text_file)

  path = build_vocabulary(lines(), vocab_size=args.vocab_size, out=args.out,
                          max_sentences=args.max_sentences,
                          character_coverage=args.character_coverage,
                          required_text=label_names(args.task))
  described = vocabularies.describe(vocabularies.sentencepiece_vocabulary(str(path)))
  print(f"wrote {path}: {args.vocab_size} pieces + {vocabularies.EXTRA_IDS} extra ids = "
        f"{described['size']}; use it with --gin.VOCABULARY={str(path)!r}")
  return 0
