"""Mixing-rate strategies for `seqio.Mixture`s, as the T5 paper defines them.

A strategy is a callable `rate(task) -> float` that seqio evaluates lazily (when a mixture
is sampled), so example counts are read after the data directory is configured. Counts
come from the task's source (`task.num_input_examples(split)`: TFDS metadata, or local
files counted once and cached by `tasks.sources`); a task without a count is an error,
never a silent fallback to rate 1.

T5 (Raffel et al. 2020, section 3.5.2), with e_n the number of training examples of task n:
  examples-proportional:  r_n = min(e_n, K)
  temperature-scaled:     r_n = min(e_n, K) ** (1 / T)
  equal:                  r_n = 1
seqio normalises rates to sampling probabilities r_n / sum_m r_m.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import seqio

from recast.errors import UserError


class MixingRateError(UserError):
  """A mixing rate that cannot be computed (no example count, unknown task, bad weight)."""


def num_examples(task: seqio.Task, split: str = "train") -> int:
  """The number of examples in `split` of `task`; raises MixingRateError when unknown."""
  if split not in task.splits:
    raise MixingRateError(
        f"task {task.name!r} has no split {split!r} to count for its mixing rate; available: "
        f"{', '.join(task.splits)}")
  count = task.num_input_examples(split)
  if count is None:
    raise MixingRateError(
        f"task {task.name!r} has no example count for split {split!r}: point DATA_DIR at "
        "local files (counted once and cached) or prepare its TFDS dataset, or give the "
        "mixture explicit rates")
  return int(count)


@dataclasses.dataclass(frozen=True)
class ExamplesProportional:
  """r = min(examples, maximum) ** (1 / temperature): T5's K and T (defaults: no cap, T=1)."""

  maximum: Optional[int] = None
  temperature: float = 1.0
  split: str = "train"

  def __post_init__(self):
    if self.temperature <= 0:
      raise MixingRateError(f"temperature must be positive, got {self.temperature}")
    if self.maximum is not None and self.maximum <= 0:
      raise MixingRateError(f"maximum (K) must be positive, got {self.maximum}")

  def __call__(self, task: seqio.Task) -> float:
    count = num_examples(task, self.split)
    if self.maximum is not None:
      count = min(count, self.maximum)
    return float(count) ** (1.0 / self.temperature)


def examples_proportional(maximum: Optional[int] = None, *,
                          split: str = "train") -> ExamplesProportional:
  """T5's examples-proportional mixing with artificial dataset size limit K = `maximum`."""
  return ExamplesProportional(maximum=maximum, split=split)


def temperature_scaled(temperature: float, *, maximum: Optional[int] = None,
                       split: str = "train") -> ExamplesProportional:
  """T5's temperature-scaled mixing: proportional rates (capped at K) raised to 1/T."""
  return ExamplesProportional(maximum=maximum, temperature=temperature, split=split)


def equal(task: seqio.Task) -> float:
  """Every task sampled equally often."""
  del task
  return 1.0


@dataclasses.dataclass(frozen=True)
class Explicit:
  """Rates given by name; a task not listed is an error unless `default` is set."""

  weights: Mapping[str, float]
  default: Optional[float] = None

  def __post_init__(self):
    bad = {k: v for k, v in self.weights.items() if not v >= 0}
    if bad:
      raise MixingRateError(f"mixing weights must be non-negative numbers, got {bad}")

  def __call__(self, task: seqio.Task) -> float:
    if task.name in self.weights:
      return float(self.weights[task.name])
    if self.default is None:
      raise MixingRateError(
          f"no explicit mixing weight for task {task.name!r}; weights are given for "
          f"{', '.join(sorted(self.weights))}")
    return float(self.default)


def explicit(weights: Mapping[str, float], *, default: Optional[float] = None) -> Explicit:
  return Explicit(dict(weights), default)


def describe_rate(rate) -> str:
  """How a rate is computed, for `recast tasks show`: "min(e, 65536)", "equal", "2.0"."""
  if isinstance(rate, ExamplesProportional):
    shown = f"min(e, {rate.maximum})" if rate.maximum is not None else "e"
    if rate.temperature != 1.0:
      shown = f"{shown} ** (1/{rate.temperature:g})"
    return f"examples-proportional {shown}" if rate.temperature == 1.0 else \
        f"temperature {shown}"
  if rate is equal:
    return "equal"
  if isinstance(rate, Explicit):
    return "explicit"
  if isinstance(rate, (int, float)):
    return f"explicit {float(rate):g}"
  return getattr(rate, "__name__", type(rate).__name__)


def normalized_rates(mixture: seqio.Mixture) -> dict[str, float]:
  """Sampling probability of each leaf task of `mixture` (sub-mixtures flattened)."""
  rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
  total = sum(rates.values())
  if total <= 0:
    raise MixingRateError(f"mixture {mixture.name!r} has no positive mixing rate")
  return {name: rate / total for name, rate in rates.items()}
