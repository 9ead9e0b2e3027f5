"""`recast tasks list` and `recast tasks show`: what is registered, and what a model sees.

`list` prints every task and mixture with its source and splits; `show NAME` prints
rendered examples (input and target text, token ids, lengths) and, for a mixture, each
member's mixing rate and sampling fraction (`-n 0`: the rates alone). `--json` gives the same
as stable JSON for scripts (keys sorted; one object for `list`, one for `show`).
"""

from __future__ import annotations

import argparse
import difflib
import json
from typing import Any, Optional

import seqio

from tasks import sources, specs, vocabularies
from trainer import errors, gin_config


class UnknownTaskError(errors.UserError):
  """A task or mixture name that is not registered."""


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
    return list(specs.task_spec(task.name).splits) if task.name in \
        specs.registered_specs() else []


def list_tasks() -> dict[str, Any]:
  """{"tasks": [{name, source, splits, metrics, description}], "mixtures": [...]}."""
  rows = []
  for name in sorted(seqio.TaskRegistry.names()):
    task = seqio.TaskRegistry.get(name)
    spec = specs.registered_specs().get(name)
    rows.append({"name": name, "source": _source_description(task),
                 "splits": _task_splits(task),
                 "metrics": list(spec.metric_names) if spec else
                 [getattr(f, "__name__", str(f)) for f in task.metric_fns],
                 "description": spec.description if spec else ""})
  mixtures = []
  for name in sorted(seqio.MixtureRegistry.names()):
    mixture = seqio.MixtureRegistry.get(name)
    mixtures.append({"name": name, "tasks": sorted(t.name for t in mixture.tasks)})
  return {"tasks": rows, "mixtures": mixtures}


def resolve_name(name: str) -> seqio.DatasetProviderBase:
  """The task or mixture `name`; UnknownTaskError with close matches otherwise."""
  known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  if name in known:
    return seqio.get_mixture_or_task(name)
  close = difflib.get_close_matches(name, known, n=3)
  hint = f"; did you mean {', '.join(close)}?" if close else \
      "; `recast tasks list` shows them all"
  raise UnknownTaskError(f"no task or mixture named {name!r}{hint}")


def mixture_rates(mixture: seqio.Mixture) -> dict[str, dict[str, float]]:
  """{task: {"rate": its mixing rate, "fraction": its share of the samples}}; raises
  MixingRateError (naming the task) when a rate cannot be computed."""
  from mixtures import rates
  fractions = rates.normalized_rates(mixture)
  return {t.name: {"rate": float(mixture.get_rate(t)), "fraction": fractions[t.name]}
          for t in mixture.tasks}


def show_examples(name: str, *, split: Optional[str] = None, n: int = 3) -> dict[str, Any]:
  """Rendered examples: {"name", "split", "source", "examples": [{task, inputs, targets,
  inputs_ids, targets_ids, inputs_length, targets_length}]} (lengths count EOS); for a
  mixture also "rates" (`mixture_rates`). Tasks are read in order until `n` examples."""
  provider = resolve_name(name)
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
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
    for ex in ds.take(per_task).as_numpy_iterator():
      examples.append(_example_row(task.name, ex))
  shown = {"name": name, "split": split, "source": _source_description(task_list[0]),
           "vocabulary": {k: v for k, v in vocabularies.describe(
               vocabularies.TASK_VOCABULARY).items() if k != "path"},
           "examples": examples[:n]}
  if rates is not None:
    shown["rates"] = rates
  return shown


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _example_row(task_name: str, ex: dict) -> dict[str, Any]:
  row = {"task": task_name}
  for key in ("inputs", "targets"):
    if key in ex:
      row[key] = _text(ex.get(f"{key}_pretokenized", ""))
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


def _print_show(shown: dict[str, Any]) -> None:
  print(f"{shown['name']} ({shown['split']}, {shown['source']})")
  if "rates" in shown:
    print(f"\n{'TASK':<28}  {'RATE':>12}  FRACTION")
    for task, r in shown["rates"].items():
      print(f"{task:<28}  {r['rate']:>12.6g}  {r['fraction']:.4%}")
  for i, ex in enumerate(shown["examples"]):
    print(f"\n[{i}] {ex['task']}")
    for key in ("inputs", "targets"):
      if key in ex:
        ids = ex[f"{key}_ids"]
        shown_ids = " ".join(map(str, ids[:32])) + (" ..." if len(ids) > 32 else "")
        print(f"  {key} ({ex[f'{key}_length']} tokens): {ex[key]}")
        print(f"  {key}_ids: {shown_ids}")


def main(args: argparse.Namespace) -> int:
  import tasks  # noqa: F401  (registers the built-in tasks)
  import mixtures  # noqa: F401  (registers the built-in mixtures)
  gin_config.parse_gin(args.gin_file, args.gin_bindings,
                       gin_search_paths=args.gin_search_paths, finalize=False)
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
