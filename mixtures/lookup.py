"""The one lookup of tasks and mixtures by name, beside both registries.

It sits in mixtures/ because it answers for both registries and mixtures are the floor above
tasks: importing it registers every built-in task and mixture. A name of the form
`<task>_<objective>` (`glue_rte_span_corruption`, `glue_rte_prefix_lm`, ...) registers
that derived pretraining task on first use, so `recast tasks show`, train, eval, infer,
sweeps and studies all see the same names.

>>> get_mixture_or_task("glue_rte_span_corruption").name
'glue_rte_span_corruption'
>>> get_mixture_or_task("glue_rte_spam_corruption")
Traceback (most recent call last):
UnknownTaskError: no task or mixture named 'glue_rte_spam_corruption'; did you mean ...
"""

from __future__ import annotations

import difflib

import seqio

from recast import errors
from recast.tasks import objectives, pretraining


class UnknownTaskError(errors.UserError):
  """A task or mixture name that is not registered and not a derived task."""


def get_mixture_or_task(name: str) -> seqio.DatasetProviderBase:
  """The registered seqio Task or Mixture `name`, registering `<task>_<objective>` on first
  use; UnknownTaskError with close matches otherwise."""
  pretraining.ensure_pretraining_task(name)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    pass
  known = registered_names()
  close = difflib.get_close_matches(name, known + _derived_candidates(name), n=5, cutoff=0.6)
  hint = (f"did you mean {', '.join(close)}?" if close else
          f"{len(known)} are registered; list them with `recast tasks list`")
  raise UnknownTaskError(
      f"no task or mixture named {name!r}; {hint} (a task file passed with --tasks_file "
      "registers more; every task T also has T_<objective> pretraining tasks)")


def registered_names() -> list[str]:
  """Every registered task and mixture name, sorted (derived tasks once they were asked for)."""
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def _derived_candidates(name: str) -> list[str]:
  """`<task>_<objective>` names near `name` (derived tasks exist before they are asked for)."""
  bases = [t for t in seqio.TaskRegistry.names() if name.startswith(t + "_")]
  return [f"{base}_{objective}" for base in bases for objective in
          difflib.get_close_matches(name[len(base) + 1:], objectives.OBJECTIVES, n=2)]


def derived_objectives() -> list[str]:
  """The `<objective>` suffixes that make a derived pretraining task of any text task
  (`random_spans_d<pct>_l<mean>` stands for every density and mean span length)."""
  return sorted(objectives.OBJECTIVES) + ["random_spans_d<pct>_l<mean>"]


def output_vocabulary(mixture_or_task: seqio.DatasetProviderBase) -> seqio.Vocabulary:
  """The vocabulary of a task's (or mixture's) `targets`; UserError for a task without one."""
  features = mixture_or_task.output_features
  if "targets" not in features:
    raise errors.UserError(f"{mixture_or_task.name} has no 'targets' feature; an "
                           "encoder-decoder task needs inputs and targets")
  return features["targets"].vocabulary
