"""The benchmarks' vocabulary: T5's public 32k SentencePiece model is not readable offline and
bytes would make every sequence ~4x too long, so a 32,000-piece model with T5's conventions
is trained once on the shared Wikipedia text (`tasks.vocab_build`) and cached."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Iterator

import seqio

from recast.tasks import vocab_build, vocabularies

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WIKIPEDIA_FILES = "text/wikipedia_en/part-*.txt"
VOCAB_SIZE = 32000  # T5's piece count; with the 100 sentinels the model's vocab is 32128
MAX_SENTENCES = 400_000


def wikipedia_sentences(data_dir: str | os.PathLike, *,
                        max_sentences: int = MAX_SENTENCES) -> Iterator[str]:
  """Sentences of the shared Wikipedia articles (an article is too long for one
  SentencePiece training line), in file order."""
  count = 0
  for path in sorted(glob.glob(os.path.join(data_dir, WIKIPEDIA_FILES))):
    with open(path, encoding="utf-8") as f:
      for article in f:
        for sentence in re.split(r"(?<=[.!?])\s+", article.strip()):
          if sentence:
            yield sentence
            count += 1
            if count >= max_sentences:
              return


def benchmark_vocabulary(name: str, *, data_dir: str | os.PathLike,
                         cache_dir: str | os.PathLike = RESULTS_DIR) -> seqio.Vocabulary:
  """"wikipedia32k" (built on first use, ~2 minutes on 2 cores, then cached in
  `cache_dir`), "byte", or the path of a SentencePiece model."""
  if name == vocabularies.BYTE:
    return vocabularies.byte_vocabulary()
  if name != "wikipedia32k":
    return vocabularies.sentencepiece_vocabulary(os.path.expanduser(name))
  path = Path(cache_dir) / "wikipedia_en_32k.model"
  if not path.exists():
    if not glob.glob(os.path.join(data_dir, WIKIPEDIA_FILES)):
      raise FileNotFoundError(f"no Wikipedia text under {data_dir}/{WIKIPEDIA_FILES} to "
                              "train the benchmark vocabulary on; pass --vocabulary=byte or "
                              "a SentencePiece model path")
    print(f"training the benchmark vocabulary ({VOCAB_SIZE} pieces) into {path} ...",
          flush=True)
    vocab_build.build_vocabulary(wikipedia_sentences(data_dir), vocab_size=VOCAB_SIZE,
                                 out=path, max_sentences=MAX_SENTENCES)
  return vocabularies.sentencepiece_vocabulary(str(path))
