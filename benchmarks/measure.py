"""Timing for the benchmarks: interleaved repetitions of competing callables, so that noise
from other work on a shared machine falls on every side alike; medians, not means."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Sequence


def interleaved_seconds(contenders: Mapping[str, Callable[[], object]], *, repetitions: int,
                        warmup: int = 1) -> dict[str, list[float]]:
  """Wall seconds of each call of each contender, alternating A, B, A, B, ...

  Args:
    contenders: name -> a callable that does one unit of work and returns only when it is
      finished (block on device results inside).
    repetitions: timed calls per contender.
    warmup: untimed calls per contender first (compilation, allocator warm-up).
  Returns:
    name -> `repetitions` durations in seconds, in call order.
  """
  for _ in range(warmup):
    for fn in contenders.values():
      fn()
  seconds: dict[str, list[float]] = {name: [] for name in contenders}
  for _ in range(repetitions):
    for name, fn in contenders.items():
      start = time.perf_counter()
      fn()
      seconds[name].append(time.perf_counter() - start)
  return seconds


def summarize(seconds: Sequence[float]) -> dict[str, float]:
  """{"median_s", "min_s", "max_s", "n"} of a list of durations."""
  return {"median_s": statistics.median(seconds), "min_s": min(seconds),
          "max_s": max(seconds), "n": len(seconds)}


def ratio(numerator: float, denominator: float) -> float:
  """numerator / denominator, or nan when the denominator is not positive."""
  return numerator / denominator if denominator > 0 else float("nan")
