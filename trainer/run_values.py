"""The checks a training run's settings pass before any data is read or anything written.

`recast train` and `recast distill` call them first, so a bad macro costs no data pass and
leaves no half-made MODEL_DIR; each error names the macro and a value that works.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

import gin

from recast import errors

FEATURES = ("inputs", "targets")


class RunValueError(errors.UserError):
  """A run setting that cannot train; the message names the macro and the fix."""


def check_run_values(*, batch_size: Any, train_steps: Any, task_feature_lengths: Any,
                     eval_period: Any, checkpoint_period: Any) -> None:
  """Raises RunValueError for the first setting that cannot train.

  Args:
    batch_size: BATCH_SIZE, a positive int (examples per step, all devices together).
    train_steps: TRAIN_STEPS, a positive int (the step to stop at).
    task_feature_lengths: TASK_FEATURE_LENGTHS, a mapping with 'inputs' and 'targets',
      each a positive int (tokens).
    eval_period: EVAL_PERIOD, an int >= 0 (0: never evaluate).
    checkpoint_period: CHECKPOINT_PERIOD, a positive int (steps between checkpoints).

  >>> check_run_values(batch_size=0, train_steps=10,  # doctest: +SKIP
  ...                  task_feature_lengths={"inputs": 8, "targets": 4},
  ...                  eval_period=0, checkpoint_period=1000)
  RunValueError: BATCH_SIZE=0: use a positive number of examples per step, e.g. --gin.BATCH_SIZE=32
  """
  _check_count("BATCH_SIZE", batch_size, minimum=1, unit="examples per step", example="32")
  _check_count("TRAIN_STEPS", train_steps, minimum=1, unit="steps to train to",
               example="1000")
  _check_count("EVAL_PERIOD", eval_period, minimum=0,
               unit="steps between evaluations (0: never)", example="1000")
  _check_count("CHECKPOINT_PERIOD", checkpoint_period, minimum=1,
               unit="steps between checkpoints", example="1000")
  _check_feature_lengths(task_feature_lengths)


def check_writable(model_dir: str | os.PathLike, *, what: str = "MODEL_DIR") -> None:
  """Raises RunValueError unless `model_dir` is a writable folder or can be made one.

  Creates nothing: checks the folder itself when it exists, else its nearest existing
  ancestor, which must be a folder this process may write into.
  """
  path = Path(os.path.expanduser(str(model_dir))).absolute()
  existing = path
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  fix = f"choose another folder, e.g. --gin.{what}=/tmp/run"
  if not existing.is_dir():
    raise RunValueError(f"{what}={str(model_dir)!r} cannot be created: {existing} is a file, "
                        f"not a folder; {fix}")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = "is not writable" if existing == path else f"cannot be created: {existing} is " \
        "not writable"
    raise RunValueError(f"{what}={str(model_dir)!r} {where} by this user; {fix}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_count(name: str, value: Any, *, minimum: int, unit: str, example: str) -> None:
  if _is_int(value) and value >= minimum:
    return
  kind = "a positive" if minimum > 0 else "a non-negative"
  why = "" if _is_int(value) else f" (got {type(value).__name__}, not a whole number)"
  raise RunValueError(f"{name}={value!r}{why}: use {kind} number of {unit}, e.g. "
                      f"--gin.{name}={example}")


def _check_feature_lengths(lengths: Any) -> None:
  example = "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 128}\""
  if not isinstance(lengths, Mapping):
    raise RunValueError(f"TASK_FEATURE_LENGTHS={lengths!r}: use a dict of token lengths per "
                        f"feature, e.g. {example}")
  missing = [f for f in FEATURES if f not in lengths]
  if missing:
    raise RunValueError(f"TASK_FEATURE_LENGTHS={dict(lengths)!r} has no "
                        f"{' or '.join(repr(f) for f in missing)}; give both, e.g. {example}")
  bad = {k: v for k, v in lengths.items() if not (_is_int(v) and v > 0)}
  if bad:
    raise RunValueError(f"TASK_FEATURE_LENGTHS={dict(lengths)!r}: "
                        f"{', '.join(repr(k) for k in bad)} must be a positive number of "
                        f"tokens, e.g. {example}")


@gin.configurable
def fraction_of_steps(steps: int = gin.REQUIRED, fraction: float = gin.REQUIRED) -> int:
  """round(steps * fraction), at least 1: a warmup that scales with the run's length.

  gin: `WARMUP_STEPS = @fraction_of_steps()`, `fraction_of_steps.steps = %PRETRAIN_STEPS`,
  `fraction_of_steps.fraction = 0.05` (experiments/self_pretraining.gin).

  >>> fraction_of_steps(20000, 0.05), fraction_of_steps(300, 0.05)
  (1000, 15)
  """
  _check_count("fraction_of_steps.steps", steps, minimum=1, unit="steps", example="20000")
  if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
    raise RunValueError(f"fraction_of_steps.fraction={fraction!r}: use a fraction of the run "
                        "in (0, 1], e.g. --gin.WARMUP_FRACTION=0.05")
  return max(1, int(round(steps * fraction)))


def resolve_gin_value(value: Any) -> Any:
  """A gin value as the configurable receives it (macros and @refs() followed)."""
  for _ in range(16):
    if not isinstance(value, gin.config.ConfigurableReference):
      return value
    value = value.scoped_configurable_fn() if value.evaluate else value
    if isinstance(value, gin.config.ConfigurableReference) and not value.evaluate:
      return value
  return value


# T5's pretraining rate: 1/sqrt(10000) for the first 10,000 steps (rsqrt, WARMUP_STEPS=10000).
T5_PRETRAINING_RATE = 0.01


def check_schedule(*, train_steps: Any, warmup_steps: Any = None,
                   base_learning_rate: Any = None, out: Any = None) -> Optional[str]:
  """Warns (on stderr; returns the message) when the rsqrt schedule's flat start rate is
  above T5's 0.01.

  T5X's rsqrt schedule is LEARNING_RATE / sqrt(max(step, WARMUP_STEPS)): flat at
  LEARNING_RATE / sqrt(WARMUP_STEPS) until WARMUP_STEPS, then decaying. T5 pretrains at
  1/sqrt(10000) = 0.01; a warmup shortened with the run raises that rate (1000 steps:
  0.0316, 100: 0.1), and in the self-pretraining smoke study (docs/studies.md) a model
  pretrained at 0.0316 fine-tuned 8 points worse than one pretrained at 0.01. A run
  shorter than its warmup is fine: it is T5's schedule cut short. `warmup_steps`,
  `base_learning_rate`: default the values bound to `rsqrt_schedule` (None when the run's
  gin does not use it, e.g. a constant fine-tuning rate: nothing to check).

  >>> check_schedule(train_steps=1200, warmup_steps=1000, out=io.StringIO())  # doctest: +SKIP
  'the rsqrt learning rate starts flat at LEARNING_RATE/sqrt(WARMUP_STEPS) = 0.0316 ...'
  """
  try:
    if warmup_steps is None:
      warmup_steps = gin.query_parameter("rsqrt_schedule.warmup_steps")
    if base_learning_rate is None:
      try:
        base_learning_rate = gin.query_parameter("rsqrt_schedule.base_learning_rate")
      except ValueError:  # bound nowhere: rsqrt_schedule's default
        base_learning_rate = 1.0
  except (ValueError, KeyError):
    return None
  warmup_steps, train_steps = resolve_gin_value(warmup_steps), resolve_gin_value(train_steps)
  base_learning_rate = resolve_gin_value(base_learning_rate)
  if not (_is_int(warmup_steps) and warmup_steps > 0
          and isinstance(base_learning_rate, (int, float))):
    return None
  rate = float(base_learning_rate) / math.sqrt(warmup_steps)
  if rate <= T5_PRETRAINING_RATE * 1.001:
    return None
  span = (f"for the whole run (WARMUP_STEPS={warmup_steps} >= TRAIN_STEPS={train_steps})"
          if _is_int(train_steps) and warmup_steps >= train_steps
          else f"until step {warmup_steps}")
  message = (f"the rsqrt learning rate starts flat at LEARNING_RATE/sqrt(WARMUP_STEPS) = "
             f"{rate:.3g} {span}, {rate / T5_PRETRAINING_RATE:.1f}x T5's "
             f"{T5_PRETRAINING_RATE} (WARMUP_STEPS=10000); pretraining at 0.0316 left "
             "fine-tuning 8 points under 0.01 in the self-pretraining smoke study "
             "(docs/studies.md). For T5's rate: --gin.WARMUP_STEPS=10000")
  print(f"warning: {message}", file=out or sys.stderr, flush=True)
  return message
