"""Demo tasks the project generates itself: no download, deterministic for a seed.

Four small text-to-text problems in the shape of real benchmarks, for `recast demo` and
for tests that need a learnable task: templated sentiment (SST-2-like), topic
classification (AG-News-like), entailment (RTE-like) and arithmetic (a generation task).
`write_demo_data(dir)` writes them as `<dir>/demo/<name>/<split>.jsonl`, the same layout
as any local dataset, and `register_demo_tasks(dir)` registers `demo_<name>` tasks on it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable

from recast.tasks import registry, specs
from recast import atomic_files

SPLIT_SIZES = {"train": 2000, "validation": 200}

_SUBJECTS = ["the film", "this movie", "the show", "the book", "the album", "the play",
             "the restaurant", "this game", "the novel", "the concert"]
_POSITIVE = ["wonderful", "great", "delightful", "brilliant", "moving", "superb", "charming",
             "excellent", "fun", "beautiful"]
_NEGATIVE = ["terrible", "boring", "awful", "dull", "clumsy", "bland", "tedious",
             "disappointing", "weak", "messy"]
_INTENSIFIERS = ["", "really ", "truly ", "rather ", "quite ", "very "]
_CONNECTIVES = ["and", "but also", "and frankly", "and overall"]

_TOPICS = {
    "sports": ["the team won the final", "a striker scored twice", "the coach praised the "
               "defence", "the league title race tightened", "the runner broke the record",
               "fans filled the stadium"],
    "science": ["researchers measured the particle", "the telescope found a new planet",
                "a study of cells showed growth", "the experiment confirmed the theory",
                "chemists built a new molecule", "the lab sequenced the genome"],
    "business": ["shares rose after the report", "the company cut its forecast",
                 "investors bought the bonds", "the bank raised interest rates",
                 "profits fell in the quarter", "the merger was approved"],
    "politics": ["the senate passed the bill", "voters went to the polls",
                 "the minister resigned", "parliament debated the budget",
                 "the president signed the treaty", "the election campaign began"],
}
_PLACES = ["on monday", "in london", "this week", "after a long delay", "in the morning",
           "late on friday", "in berlin", "again"]

_PEOPLE = ["a man", "a woman", "a child", "an old man", "a girl", "a boy", "a teacher",
           "a doctor"]
_ACTIVITIES = ["playing guitar", "reading a book", "riding a bike", "cooking pasta",
               "swimming in a lake", "painting a wall", "running on a track",
               "singing a song", "eating an apple", "writing a letter"]
_SETTINGS = ["in the park", "at home", "near the river", "in a small room", "outside",
             "on a sunny day"]

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine"]


def _sentiment(rng: random.Random) -> dict:
  label = rng.randrange(2)
  words = _POSITIVE if label == 1 else _NEGATIVE
  first, second = rng.sample(words, 2)
  sentence = (f"{rng.choice(_SUBJECTS)} was {rng.choice(_INTENSIFIERS)}{first} "
              f"{rng.choice(_CONNECTIVES)} {second}")
  return {"sentence": sentence, "label": label}


def _topic(rng: random.Random) -> dict:
  label = rng.randrange(len(_TOPICS))
  text = f"{rng.choice(list(_TOPICS.values())[label])} {rng.choice(_PLACES)}"
  return {"text": text, "label": label}


def _entailment(rng: random.Random) -> dict:
  """Entailed: the hypothesis restates who does what; not: the person or activity differs."""
  person = rng.choice(_PEOPLE)
  activity = rng.choice(_ACTIVITIES)
  premise = f"{person} is {activity} {rng.choice(_SETTINGS)}."
  label = rng.randrange(2)  # 0 entailment, 1 not_entailment (GLUE RTE's encoding)
  who, what = person, activity
  if label == 1:
    if rng.random() < 0.5:
      who = rng.choice([p for p in _PEOPLE if p != person])
    else:
      what = rng.choice([a for a in _ACTIVITIES if a != activity])
  hypothesis = f"{who} is {what}."
  return {"premise": premise, "hypothesis": hypothesis, "label": label}


def _arithmetic(rng: random.Random) -> dict:
  a, b = rng.randrange(10), rng.randrange(10)
  question = f"what is {_NUMBER_WORDS[a]} plus {_NUMBER_WORDS[b]}?"
  return {"question": question, "answer": str(a + b)}


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "sentiment": _sentiment,
    "topic": _topic,
    "entailment": _entailment,
    "arithmetic": _arithmetic,
}

LABEL_NAMES = {
    "sentiment": ["negative", "positive"],
    "topic": list(_TOPICS),
    "entailment": ["entailment", "not_entailment"],
}


def generate(name: str, split: str, *, seed: int = 0, num_examples: int | None = None
             ) -> list[dict]:
  """Examples of demo task `name`; the same seed and split always give the same list."""
  rng = random.Random(f"{name}/{split}/{seed}")
  n = SPLIT_SIZES[split] if num_examples is None else num_examples
  return [dict(GENERATORS[name](rng), idx=i) for i in range(n)]


def write_demo_data(data_dir: str | Path, *, seed: int = 0) -> Path:
  """Writes every demo task's splits as `<data_dir>/demo/<name>/<split>.jsonl`."""
  root = Path(data_dir) / "demo"
  for name in GENERATORS:
    for split in SPLIT_SIZES:
      atomic_files.write_jsonl(root / name / f"{split}.jsonl", generate(name, split, seed=seed))
  return root


def vocabulary_text(data_dir: str | Path) -> list[str]:
  """The demo train splits' text (inputs and arithmetic answers), for the demo vocabulary;
  the label names come in as its required text (`vocab_build.label_names`)."""
  lines = []
  for name in GENERATORS:
    with open(Path(data_dir) / "demo" / name / "train.jsonl", encoding="utf-8") as f:
      for row in map(json.loads, f):
        lines.extend(str(v) for k, v in row.items() if k not in ("label", "idx"))
  return lines


def cache_dir() -> Path:
  """Where the demo data lives: $RECAST_CACHE_DIR/demo_data, default ~/.cache/recast/."""
  base = os.environ.get("RECAST_CACHE_DIR") or Path.home() / ".cache" / "recast"
  return Path(base) / "demo_data"


def ensure_demo_data(data_dir: str | Path | None = None) -> Path:
  """Writes the demo data under `data_dir` (default `cache_dir()`) unless already there."""
  data_dir = Path(data_dir) if data_dir else cache_dir()
  root = data_dir / "demo"
  if not all((root / n / f"{s}.jsonl").is_file() for n in GENERATORS for s in SPLIT_SIZES):
    write_demo_data(data_dir)
  return data_dir


def _specs(data_dir: Path) -> list[specs.TextTaskSpec]:
  files = lambda name: {s: str(data_dir / "demo" / name / f"{s}.jsonl") for s in SPLIT_SIZES}
  rows = lambda name: generate(name, "train", num_examples=2)
  return [
      specs.TextTaskSpec(
          name="demo_sentiment", source="", splits=tuple(SPLIT_SIZES), files=files("sentiment"),
          inputs_template=specs.t5_inputs_template("sentiment", ["sentence"]),
          label_names=tuple(LABEL_NAMES["sentiment"]), metric_names=("accuracy",),
          description="generated SST-2-like sentiment (recast demo)",
          example_rows=rows("sentiment")),
      specs.TextTaskSpec(
          name="demo_topic", source="", splits=tuple(SPLIT_SIZES), files=files("topic"),
          inputs_template=specs.t5_inputs_template("topic", ["text"]),
          label_names=tuple(LABEL_NAMES["topic"]), metric_names=("accuracy", "macro_f1"),
          description="generated AG-News-like topic classification (recast demo)",
          example_rows=rows("topic")),
      specs.TextTaskSpec(
          name="demo_entailment", source="", splits=tuple(SPLIT_SIZES),
          files=files("entailment"),
          inputs_template=specs.t5_inputs_template("entailment", ["premise", "hypothesis"]),
          label_names=tuple(LABEL_NAMES["entailment"]), metric_names=("accuracy",),
          description="generated RTE-like entailment (recast demo)",
          example_rows=rows("entailment")),
      specs.TextTaskSpec(
          name="demo_arithmetic", source="", splits=tuple(SPLIT_SIZES),
          files=files("arithmetic"), inputs_template="arithmetic question: {question}",
          targets_template="{answer}", label_field=None, metric_names=("accuracy",),
          description="generated addition questions, answered in digits (recast demo)",
          example_rows=rows("arithmetic")),
  ]


DEMO_TASKS = ("demo_sentiment", "demo_topic", "demo_entailment", "demo_arithmetic")


def register_demo_tasks(data_dir: str | Path | None = None) -> list[str]:
  """Registers the demo tasks on the data in `data_dir` (written there when missing)."""
  data_dir = ensure_demo_data(data_dir)
  for spec in _specs(data_dir):
    registry.register_text_task(spec, overwrite=True)
  return list(DEMO_TASKS)
