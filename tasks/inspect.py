"""`recast tasks list` and `recast tasks show`: what is registered, and what a model sees.

`list` prints every task and mixture with its source and splits; `show NAME` prints
rendered examples (input and target text, token ids, lengths) and, for a mixture, each
member's mixing rate, how it is computed and its sampling fraction (`-n 0`: the rates alone,
no data read; a rate whose example count is not known yet, e.g. no local files and no TFDS
metadata, is "unknown until counted", and then no fraction is shown). `--json` gives the same
as stable JSON for scripts (keys sorted; one object for `list`, one for `show`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Mapping, Optional, Sequence

import seqio

from recast import errors, gin_config
from recast.mixtures import lookup, rates
from recast.tasks import pretraining, registry, sources, vocabularies

# What `show` cuts a pretraining objective's text to when TASK_FEATURE_LENGTHS is unbound:
# T5's span-corruption lengths (512 tokens in, 114 out).
DERIVED_TASK_LENGTHS = {"inputs": 512, "targets": 114}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="tasks_command", metavar="{list,show}", required=True)
  list_parser = sub.add_parser("list", help="every task and mixture, with source and splits")
  list_parser.add_argument("--json", action="store_true", help="stable JSON output")
  show = sub.add_parser("show", help="rendered examples of a task or mixture")
  show.add_argument("name", help="task or mixture name")
  show.add_argument("--split", default=None, help="split (default: the first one)")
  show.add_argument("-n", type=int, default=3,
                    help="number of examples (default 3; 0: a mixture's rates alone)")
  show.add_argument("--json", action="store_true", help="stable JSON output")


def _source_description(task: seqio.Task) -> str:
  describe = getattr(task.source, "describe", None)
  try:
    return describe() if describe else repr(task.source)
  except errors.UserError as e:
    return f"unavailable ({e})"


def _task_splits(task: seqio.Task) -> list[str]:
  try:
    return list(task.splits)
  except errors.UserError:
    return list(registry.task_spec(task.name).splits) if task.name in \
        registry.registered_specs() else []


def list_tasks() -> dict[str, Any]:
  """{"tasks": [{name, source, splits, metrics, description}], "mixtures": [...],
  "derived_objectives": [...]} (every text task T also has T_<objective>)."""
  rows = []
  for name in sorted(seqio.TaskRegistry.names()):
    task = seqio.TaskRegistry.get(name)
    spec = registry.registered_specs().get(name)
    rows.append({"name": name, "source": _source_description(task),
                 "splits": _task_splits(task),
                 "metrics": list(spec.metric_names) if spec else
                 [getattr(f, "__name__", str(f)) for f in task.metric_fns],
                 "description": spec.description if spec else ""})
  mixtures = []
  for name in sorted(seqio.MixtureRegistry.names()):
    mixture = seqio.MixtureRegistry.get(name)
    mixtures.append({"name": name, "tasks": sorted(t.name for t in mixture.tasks)})
  return {"tasks": rows, "mixtures": mixtures, "derived_objectives": lookup.derived_objectives()}


UNKNOWN_RATE = "unknown until counted"


def mixture_rates(mixture: seqio.Mixture) -> dict[str, dict[str, Any]]:
  """{task: {"rate": its mixing rate, "fraction": its share of the samples, "rule": how the
  rate is computed}}. A rate that needs an example count nobody has yet (no local files, no
  TFDS metadata) is None with "unknown": why; then every fraction is None too."""
  shown: dict[str, dict[str, Any]] = {}
  for task in mixture.tasks:
    rule = mixture.rate_per_task_name.get(task.name)
    row: dict[str, Any] = {"rule": rates.describe_rate(rule) if rule is not None else
                           "through a sub-mixture"}
    try:
      row["rate"] = float(mixture.get_rate(task))
    except errors.UserError as e:  # MixingRateError, or no data where DATA_DIR points
      row.update(rate=None, unknown=str(e))
    shown[task.name] = row
  known = all(r["rate"] is not None for r in shown.values())
  fractions = rates.normalized_rates(mixture) if known else {}
  for name, row in shown.items():
    row["fraction"] = fractions.get(name)
  return shown


def show_examples(name: str, *, split: Optional[str] = None, n: int = 3) -> dict[str, Any]:
  """Rendered examples: {"name", "split", "source", "examples": [{task, inputs, targets,
  inputs_ids, targets_ids, inputs_length, targets_length}]} (lengths count EOS); for a
  mixture also "rates" (`mixture_rates`). Tasks are read in order until `n` examples."""
  provider = lookup.get_mixture_or_task(name)
  rates = mixture_rates(provider) if isinstance(provider, seqio.Mixture) else None
  task_list = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  splits = _task_splits(task_list[0])
  split = split or (splits[0] if splits else "train")
  examples = []
  for task in task_list:
    if len(examples) >= n:
      break
    if split not in _task_splits(task):
      raise sources.LocalDataError(
          f"task {task.name!r} has no split {split!r}; available: "
          f"{', '.join(_task_splits(task))}")
    per_task = max(1, n // len(task_list)) if len(task_list) > 1 else n
    ds = task.get_dataset(sequence_length=_sequence_length(task), split=split, shuffle=False)
    for ex in ds.take(per_task).as_numpy_iterator():
      examples.append(_example_row(task, ex))
  shown = {"name": name, "split": split, "source": _source_description(task_list[0]),
           "vocabulary": {k: v for k, v in vocabularies.describe(
               vocabularies.TASK_VOCABULARY).items() if k != "path"},
           "examples": examples[:n]}
  if rates is not None:
    shown["rates"] = rates
  return shown


def _sequence_length(task: seqio.Task) -> Optional[dict[str, int]]:
  """None (examples whole) except for pretraining objectives, which cut their text into
  chunks that fit: TASK_FEATURE_LENGTHS when bound, else T5's 512 / 114."""
  if pretraining.parse_derived_task_name(task.name) is None:
    return None
  bound = gin_config.macro_value("TASK_FEATURE_LENGTHS", None)
  return dict(bound) if isinstance(bound, Mapping) else dict(DERIVED_TASK_LENGTHS)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def render_ids(ids: Sequence[int], vocabulary: seqio.Vocabulary) -> str:
  """Token ids as text, sentinels spelt `<extra_id_N>` (T5's names; id vocab_size-1-N), so a
  span-corrupted example reads as T5's papers print it.

  >>> render_ids([72, 105, 358, 33], seqio.ByteVocabulary(extra_ids=100))  # doctest: +SKIP
  'Hi<extra_id_0>...'
  """
  first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
  pieces, run = [], []
  for i in list(ids) + [None]:
    if i is None or i >= first_sentinel:
      if run:
        pieces.append(vocabulary.decode(run))
        run = []
      if i is not None:
        pieces.append(f"<extra_id_{vocabulary.vocab_size - 1 - i}>")
    elif i > 1:  # not PAD (0) or EOS (1)
      run.append(int(i))
  return "".join(pieces)


def _example_row(task: seqio.Task, ex: dict) -> dict[str, Any]:
  row = {"task": task.name}
  for key in ("inputs", "targets"):
    if key in ex:
      pretokenized = ex.get(f"{key}_pretokenized")
      row[key] = (_text(pretokenized) if pretokenized is not None else
                  render_ids(ex[key], task.output_features[key].vocabulary))
      row[f"{key}_ids"] = [int(i) for i in ex[key]]
      row[f"{key}_length"] = len(ex[key])
  return row


def _print_list(listing: dict[str, Any]) -> None:
  width = max([len(t["name"]) for t in listing["tasks"]] + [4])
  print(f"{'TASK':<{width}}  SOURCE / SPLITS")
  for t in listing["tasks"]:
    print(f"{t['name']:<{width}}  {t['source']}  [{', '.join(t['splits'])}]")
  if listing["mixtures"]:
    print(f"\n{'MIXTURE':<{width}}  TASKS")
    for m in listing["mixtures"]:
      print(f"{m['name']:<{width}}  {len(m['tasks'])}: {', '.join(m['tasks'])}")
  print("\nDERIVED TASKS  every text task T above also has T_<objective> (its train-split "
        "inputs as pretraining text), objective one of: "
        f"{', '.join(listing['derived_objectives'])}")


def _print_show(shown: dict[str, Any]) -> None:
  print(f"{shown['name']} ({shown['split']}, {shown['source']})")
  if "rates" in shown:
    print(f"\n{'TASK':<28}  {'RATE':>12}  {'FRACTION':>9}  RULE")
    for task, r in shown["rates"].items():
      if r["rate"] is None:
        print(f"{task:<28}  {UNKNOWN_RATE:>12}  {'':>9}  {r['rule']}")
      else:
        fraction = f"{r['fraction']:.4%}" if r["fraction"] is not None else "?"
        print(f"{task:<28}  {r['rate']:>12.6g}  {fraction:>9}  {r['rule']}")
    unknown = [r["unknown"] for r in shown["rates"].values() if r["rate"] is None]
    if unknown:
      print(f"\n{len(unknown)} rate(s) {UNKNOWN_RATE}, so no fractions yet; e.g. {unknown[0]}")
  for i, ex in enumerate(shown["examples"]):
    print(f"\n[{i}] {ex['task']}")
    for key in ("inputs", "targets"):
      if key in ex:
        ids = ex[f"{key}_ids"]
        shown_ids = " ".join(map(str, ids[:32])) + (" ..." if len(ids) > 32 else "")
        print(f"  {key} ({ex[f'{key}_length']} tokens): {ex[key]}")
        print(f"  {key}_ids: {shown_ids}")


def main(args: argparse.Namespace) -> int:
  gin_config.parse_run_flags(args, command="tasks", finalize=False)
  if args.tasks_command == "list":
    listing = list_tasks()
    print(json.dumps(listing, indent=2, sort_keys=True)) if args.json else \
        _print_list(listing)
  else:
    if args.n < 0:
      raise errors.UserError(f"-n must be at least 0, got {args.n}")
    shown = show_examples(args.name, split=args.split, n=args.n)
    print(json.dumps(shown, indent=2, sort_keys=True)) if args.json else _print_show(shown)
  return 0
