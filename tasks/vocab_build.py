"""`recast vocab build`: a SentencePiece model with T5's conventions, from task text or files.

T5's conventions: pad 0, eos 1, unk 2, no bos; the 100 extra ids (sentinels) are added on
top by `seqio.SentencePieceVocabulary(extra_ids=100)`, not trained into the model. The text
is the train split of the chosen tasks (their natural-text fields, see
`TextTaskSpec.natural_text_fields`) and/or plain text files, one sentence or document
per line. The model file is written atomically (`vocabularies.build_vocabulary` trains it;
`--gin.VOCABULARY=auto` is the same without this step, from a run's own training text).

  recast vocab build --task glue_rte --task glue_mrpc --vocab_size 8000 --out rte.model \
      --gin.DATA_DIR=../shared/data
"""

from __future__ import annotations

import argparse
import os
from typing import Iterator, Sequence

from recast import gin_config
from recast.tasks import registry, sources, vocabularies


VocabBuildError = vocabularies.VocabBuildError
build_vocabulary = vocabularies.build_vocabulary  # the trainer, shared with VOCABULARY=auto


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
