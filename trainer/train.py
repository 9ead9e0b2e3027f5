"""`recast train`: the training loop, from gin run files to checkpoints and metrics.

One call of `train` (gin-configured by gin/runs/pretrain.gin or finetune.gin) reads the
task's packed batches through seqio, restores the newest checkpoint in MODEL_DIR (else
INITIAL_CHECKPOINT_PATH, else random init), runs the jitted train step, logs, evaluates
every EVAL_PERIOD and checkpoints every CHECKPOINT_PERIOD. A killed run started again with
the same flags continues where its last checkpoint left off, data stream included.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import jax
import numpy as np

from recast import errors, gin_config, metrics_writer, run_lock
from recast.mixtures import lookup
from recast.tasks import vocabularies
from recast.trainer import (checkpoints, evaluation, input_pipeline, network, optimizers,
                            partitioning, run_values, train_state as train_state_lib)
from recast.trainer.network import T5Config

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")


class TrainingError(errors.UserError):
  """The run cannot go on (e.g. a non-finite loss); the message says what to change."""


# ------------------------------------------------------------------------------------------
# Progress


class ProgressLog:
  """A line every `period` steps (step, loss, learning rate, examples/s, tokens/s, ETA);
  a tqdm bar as well when stderr is a terminal. Only process 0 prints."""

  def __init__(self, *, start_step: int, train_steps: int, period: int, enabled: bool,
               log: Optional["RunLog"] = None):
    self.train_steps, self.period, self.enabled = train_steps, max(1, period), enabled
    self._log = log
    self._bar = None
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=train_steps, initial=start_step, unit="step", dynamic_ncols=True)
      if log is not None:
        log.write_console = self._bar.write
    self._reset(start_step)

  def _reset(self, step: int) -> None:
    self._step0, self._time0 = step, time.perf_counter()
    self._examples = self._tokens = 0

  def update(self, step: int, examples: int, tokens: int) -> None:
    self._examples += examples
    self._tokens += tokens
    if self._bar is not None:
      self._bar.update(1)

  def line(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
    """Prints the period's line; returns its throughput numbers (for metrics.jsonl)."""
    elapsed = max(time.perf_counter() - self._time0, 1e-9)
    steps = max(step - self._step0, 1)
    rates = {"examples_per_second": self._examples / elapsed,
             "tokens_per_second": self._tokens / elapsed,
             "steps_per_second": steps / elapsed}
    eta = (self.train_steps - step) * elapsed / steps
    if self.enabled:
      lr = metrics.get("learning_rate")
      text = (f"step {step}/{self.train_steps} loss {metrics.get('loss', float('nan')):.4f}"
              + (f" lr {lr:.3g}" if lr is not None else "")
              + f" examples/s {rates['examples_per_second']:.1f}"
              f" tokens/s {rates['tokens_per_second']:.0f} ETA {_clock(eta)}")
      if self._log is not None:
        self._log(text)
      elif self._bar is not None:
        self._bar.write(text)
      else:
        print(text, flush=True)
    self._reset(step)
    return rates

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      if self._log is not None:
        self._log.write_console = lambda text: print(text, flush=True)


class RunLog:
  """The run's console: each line printed and, once the run holds MODEL_DIR, appended to
  MODEL_DIR/train.log with a timestamp (lines from before are written then). Process 0 only.
  """

  FILE = "train.log"

  def __init__(self, model_dir: Path, *, enabled: bool):
    self.path = model_dir / self.FILE
    self.enabled = enabled
    self._pending: list[str] = []
    self._file = None
    self.write_console: Callable[[str], None] = lambda text: print(text, flush=True)

  def __call__(self, text: str, *, console: bool = True) -> None:
    if not self.enabled:
      return
    if console:
      self.write_console(text)
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n"
    if self._file is None:
      self._pending.append(line)
    else:
      self._file.write(line)
      self._file.flush()

  def open(self) -> None:
    """Starts writing train.log (call with the MODEL_DIR lock held)."""
    if self.enabled and self._file is None:
      self._file = open(self.path, "a", encoding="utf-8")
      self._file.write("".join(self._pending))
      self._file.flush()
      self._pending = []

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def seconds_since_start() -> float:
  """Seconds since this process started (Linux: /proc; elsewhere since recast was imported)."""
  try:
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return max(0.0, time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK")))
  except (OSError, ValueError, IndexError, StopIteration):
    return time.time() - _IMPORTED_AT


_IMPORTED_AT = time.time()


class BestMetric:
  """The run's headline validation metric and its best value so far: a mixture's
  `glue_score`/`super_glue_score`/`average`, else the task's first inference metric,
  else the teacher-forced loss (lower is better)."""

  PREFERRED = ("glue_score", "super_glue_score", "average")

  def __init__(self, name: str):
    self.name = name  # the evaluated mixture or task
    self.key: Optional[tuple[str, str]] = None
    self.best: Optional[tuple[float, int]] = None

  def _pick(self, results: Mapping[str, Mapping[str, float]]) -> Optional[tuple[str, str]]:
    own = results.get(self.name, {})
    for metric in self.PREFERRED:
      if metric in own:
        return self.name, metric
    for task, values in results.items():
      for metric in values:
        if metric not in ("loss", "token_accuracy"):
          return task, metric
    return (self.name, "loss") if "loss" in own else next(
        ((t, "loss") for t, v in results.items() if "loss" in v), None)

  def update(self, step: int, results: Mapping[str, Mapping[str, float]]) -> None:
    self.key = self.key or self._pick(results)
    if self.key is None or self.key[1] not in results.get(self.key[0], {}):
      return
    value = float(results[self.key[0]][self.key[1]])
    lower = self.key[1] == "loss"
    # Ties go to the later step (more training; and the one a final checkpoint holds).
    if self.best is None or (value <= self.best[0] if lower else value >= self.best[0]):
      self.best = (value, step)

  def describe(self, kept_steps: Sequence[int]) -> Optional[str]:
    if self.best is None:
      return None
    value, step = self.best
    where = (f"{checkpoints.STEP_PREFIX}_{step}" if step in kept_steps
             else "no checkpoint kept of that step")
    return f"best {self.key[0]}/{self.key[1]} {value:.4g} at step {step} ({where})"


def _param_total(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def format_eval(step: int, results: Mapping[str, Mapping[str, float]], *, mixture: str
                ) -> list[str]:
  """Console lines of one evaluation: one per task, the mixture's averages last."""
  order = sorted(results, key=lambda task: (task == mixture and len(results) > 1, task))
  lines = []
  for task in order:
    values = results[task]
    shown = " ".join(f"{metric} {value:.4g}" for metric, value in values.items()
                     if isinstance(value, (int, float)))
    label = f"{task} (mixture)" if task == mixture and len(results) > 1 else task
    lines.append(f"eval step {step} {label}: {shown}")
  return lines


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------------------
# The loop


@gin.configurable(denylist=["config"])
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None, checkpoint_period: int = 1000,
          keep_checkpoints: Optional[int] = None, eval_period: int = 0,
          stats_period: int = 100, seed: int = 0, shuffle: bool = True, pack: bool = True,
          packer: str = "first_fit", use_cached: bool = False, split: str = "train",
          num_microbatches: int = 1,
          z_loss: float = 1e-4, label_smoothing: float = 0.0,
          loss_normalizing_factor: Any = "NUM_REAL_TARGET_TOKENS",
          max_truncated_fraction: float = 0.1, config: Optional[T5Config] = None,
          eval_mixture_or_task_name: Optional[str] = None,
          train_step_factory: Optional[Callable[..., Any]] = None) -> dict:
  """Trains until step `train_steps`; returns the last stats period's train metrics.

  Args:
    model_dir: MODEL_DIR; holds checkpoints, metrics.jsonl, config.gin, TensorBoard files.
      A checkpoint there is resumed (model, optimizer and data position).
    mixture_or_task_name: a registered seqio task or mixture.
    task_feature_lengths: e.g. {"inputs": 512, "targets": 128}.
    train_steps: the step to stop at, counted across restarts.
    batch_size: the global batch, over all processes and data-parallel devices.
    initial_checkpoint_path: parameters to start from when model_dir has no checkpoint: a
      parameter checkpoint (`recast convert`) or another run; the optimizer starts fresh.
    checkpoint_period, keep_checkpoints: save every N steps (and at the end); keep newest.
    eval_period: evaluate every N steps (0: never).
    stats_period: a log line and train metrics every N steps.
    seed: data order, parameter initialisation and dropout.
    shuffle, pack, use_cached, split: how seqio reads the training examples.
    packer: "first_fit" (recast's: 8 open rows, less padding) or "seqio" (T5X's).
    num_microbatches, z_loss, label_smoothing, loss_normalizing_factor: the train step's
      (see trainer.train_state.make_train_step).
    max_truncated_fraction: more examples than this cut by task_feature_lengths is an
      error (checked on the first 1000 examples).
    config: the model; default T5Config() as bound by the model gin file.
    eval_mixture_or_task_name: evaluate on this instead of mixture_or_task_name (e.g. a
      distillation run trains on teacher-labelled transfer data, evaluates on the task).
    train_step_factory: replaces `train_state.make_train_step` (same arguments and
      returned step), e.g. `trainer.distillation.make_distill_train_step` with its teacher.
  """
  run_values.check_run_values(batch_size=batch_size, train_steps=train_steps,
                              task_feature_lengths=task_feature_lengths,
                              eval_period=eval_period, checkpoint_period=checkpoint_period)
  run_values.check_writable(model_dir)
  if jax.process_index() == 0:
    run_values.check_schedule(train_steps=train_steps)  # a start rate above T5's
  task = lookup.get_mixture_or_task(mixture_or_task_name)
  vocabulary = lookup.output_vocabulary(task)
  vocab_description = vocabularies.describe(vocabulary)
  config = (config or T5Config()).with_vocab_size(vocabulary.vocab_size)
  model_dir = Path(model_dir)
  is_chief = jax.process_index() == 0
  log = RunLog(model_dir, enabled=is_chief)
  partitioner = partitioning.Partitioner()
  layout = partitioner.get_data_layout(batch_size)
  optimizer = optimizers.create_optimizer()
  abstract_state = train_state_lib.abstract_train_state(config, optimizer, partitioner)

  # Everything that can reject the run happens before anything is written; a second writer
  # is turned away first, before the slow checks.
  if is_chief:
    run_lock.check_free(model_dir)
  resume_step, resume_meta, damaged = checkpoints.find_resumable(
      model_dir, expected_params=abstract_state.params, vocabulary=vocab_description)
  initial_params = None
  if resume_step is None and initial_checkpoint_path:
    initial_params = checkpoints.load_initial_params(
        initial_checkpoint_path, expected_params=abstract_state.params,
        vocabulary=vocab_description)
  meta = {"model": config.to_dict(), "vocabulary": vocab_description,
          "mixture_or_task_name": mixture_or_task_name,
          "task_feature_lengths": dict(task_feature_lengths), "batch_size": batch_size,
          "seed": seed}
  if resume_meta is None or any(resume_meta.get(k) != meta[k] for k in (
      "mixture_or_task_name", "task_feature_lengths")):  # (checked when the run started)
    warning = input_pipeline.check_truncation(
        input_pipeline.truncation_report(mixture_or_task_name=mixture_or_task_name,
                          task_feature_lengths=task_feature_lengths, split=split,
                          use_cached=use_cached),
        task_feature_lengths=task_feature_lengths, max_fraction=max_truncated_fraction,
        name=mixture_or_task_name)
    if warning and is_chief:
      print(f"warning: {warning}", file=sys.stderr, flush=True)
      log(f"warning: {warning}", console=False)

  with run_lock.hold(model_dir, enabled=is_chief), contextlib.closing(log):
    log.open()
    log(f"recast train: {model_dir} ({mixture_or_task_name}; "
        f"{_param_total(abstract_state.params):,} parameters, {vocab_description.get('type', 'vocabulary')} vocabulary of "
        f"{config.vocab_size:,}; batch {batch_size}, steps to {train_steps}; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s))")
    if is_chief:
      for step, reason in damaged:
        checkpoints.set_aside(model_dir, step, reason)
      gin_config.write_config_files(model_dir, operative=False)
      checkpoints.store_run_vocabulary(model_dir, vocab_description)  # travels with the run
    if resume_step is not None and resume_step >= train_steps:
      log(f"{model_dir} is at step {resume_step} >= TRAIN_STEPS={train_steps}; nothing to do")
      return {}
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
    dropout_rng = jax.device_put(dropout_rng, partitioner.replicated)

    def open_batches(data_position: int):
      """(this process's batch, the global batch on the mesh) from `data_position` on."""
      local_batches = input_pipeline.train_dataset(
          mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
          batch_size=layout.batch_size, split=split, shuffle=shuffle, seed=seed,
          use_cached=use_cached, pack=pack, shard_index=layout.shard_id,
          num_shards=layout.num_shards, start_batch=data_position,
          packer=packer).as_numpy_iterator()
      return ((local, partitioner.shard_batch(local)) for local in local_batches)

    # The first batch, then the train step's compilation in the background while the state
    # is initialised or restored and the evaluator is built (time to the first step).
    data_position = int(resume_meta["data_position"]) if resume_step is not None else 0
    model = network.Transformer(config)
    train_step = (train_step_factory or train_state_lib.make_train_step)(
        model, optimizer, partitioner, num_microbatches=num_microbatches, z_loss=z_loss,
        label_smoothing=label_smoothing, loss_normalizing_factor=loss_normalizing_factor)
    batches = open_batches(data_position)
    first = next(batches)  # sharded once, then chained back
    batches = itertools.chain([first], batches)
    if hasattr(train_step, "lower"):  # a jitted step (factories may return other callables)
      train_step = train_state_lib.BackgroundCompiledStep(train_step, abstract_state, first[1],
                                                          dropout_rng)
    state = None
    while resume_step is not None and state is None:
      try:
        state = checkpoints.restore_train_state(model_dir, resume_step, abstract_state)
      except Exception as e:  # array data damaged after its metadata read fine
        if not is_chief:
          raise
        checkpoints.set_aside(model_dir, resume_step, checkpoints.damage_reason(e))
        resume_step, resume_meta, damaged = checkpoints.find_resumable(
            model_dir, expected_params=abstract_state.params, vocabulary=vocab_description)
        for step, reason in damaged:
          checkpoints.set_aside(model_dir, step, reason)
        data_position = int(resume_meta["data_position"]) if resume_step is not None else 0
        batches = open_batches(data_position)
    if is_chief:  # rows past the restored step (all rows, from scratch) are written again
      metrics_writer.drop_rows_after(model_dir, -1 if resume_step is None else resume_step)
    if resume_step is not None:
      log(f"resuming from {model_dir}/{checkpoints.STEP_PREFIX}_{resume_step}")
      trained_dtype = (resume_meta.get("model") or {}).get("dtype")
      if trained_dtype and trained_dtype != config.dtype:  # e.g. 'auto' on another machine
        log(f"note: steps up to {resume_step} ran with {trained_dtype} activations, these "
            f"run with {config.dtype} (ACTIVATION_DTYPE); --gin.ACTIVATION_DTYPE="
            f"\"'{trained_dtype}'\" keeps {trained_dtype}")
    else:
      state = train_state_lib.create_train_state(config, optimizer, init_rng, partitioner,
                                                 params=initial_params)
      log(f"initialised from {initial_checkpoint_path}" if initial_params is not None
          else f"initialised at random (seed {seed})")
    manager = checkpoints.RunCheckpoints(model_dir, keep=keep_checkpoints)
    start_step = int(state.step)
    evaluator = _make_evaluator(model_dir=model_dir, config=config, partitioner=partitioner,
                                mixture_or_task_name=(eval_mixture_or_task_name
                                                      or mixture_or_task_name),
                                task_feature_lengths=task_feature_lengths,
                                eval_period=eval_period, use_cached=use_cached)
    if evaluator is not None and resume_step is not None:  # written before the restart?
      evaluator.baseline_written = any(
          r.get("split") == metrics_writer.BASELINE_SPLIT
          for r in metrics_writer.read_metrics(model_dir))
    writer = metrics_writer.MetricsWriter(model_dir, enabled=is_chief, purge_step=start_step + 1)
    progress = ProgressLog(start_step=start_step, train_steps=train_steps, period=stats_period,
                           enabled=is_chief, log=log)
    best = BestMetric(eval_mixture_or_task_name or mixture_or_task_name)
    state_ready = seconds_since_start()
    loop_start = time.perf_counter()
    examples_seen = 0
    window: list[dict[str, float]] = []
    summary: dict[str, float] = {}
    pending = None  # The last step's metrics, fetched after the next step is dispatched.
    try:
      for step in range(start_step + 1, train_steps + 1):
        local, batch = next(batches)
        state, metrics = train_step(state, batch, dropout_rng)
        if pending is not None:
          window.append(_fetch_finite(*pending, manager=manager))
        pending = (step, metrics)
        examples, tokens = input_pipeline.batch_counts(local)
        examples_seen += examples * layout.num_shards
        progress.update(step, examples * layout.num_shards, tokens * layout.num_shards)
        if step == start_step + 1:
          jax.block_until_ready(metrics)
          compiled = getattr(train_step, "compile_seconds", None)
          log(f"first step done {seconds_since_start():.1f} s after start (state ready at "
              f"{state_ready:.1f} s" + (f"; the train step's compilation, overlapping "
                                        f"that, took {compiled:.1f} s"
                                        if compiled is not None else "") + ")")
          if is_chief:
            gin_config.write_config_files(model_dir, operative=True)
        stats_due = step % stats_period == 0 or step == train_steps
        checkpoint_due = step % checkpoint_period == 0 or step == train_steps
        eval_due = bool(eval_period) and (step % eval_period == 0 or step == train_steps)
        if not (stats_due or checkpoint_due or eval_due):
          continue
        window.append(_fetch_finite(*pending, manager=manager))
        pending = None
        if stats_due:
          summary = _summarize(window)
          summary.update(progress.line(step, summary))
          writer.write(step, "train", "", summary)
          window = []
        if eval_due:  # before the checkpoint: a run killed while evaluating redoes the step
          results = _evaluate(evaluator, state.params, step=step, writer=writer, log=log)
          for line in format_eval(step, results, mixture=best.name):
            log(line)
          best.update(step, results)
        if checkpoint_due:
          manager.save(step, state, meta=dict(
              meta, data_position=data_position + step - start_step))
          log(f"saved {model_dir}/{checkpoints.STEP_PREFIX}_{step}")
      manager.wait()
      wall = time.perf_counter() - loop_start
      steps_run = train_steps - start_step
      done = (f"done: steps {start_step} -> {train_steps} in {_clock(wall)} "
              f"({_clock(seconds_since_start())} since start; "
              f"{steps_run / max(wall, 1e-9):.2f} steps/s, "
              f"{examples_seen / max(wall, 1e-9):.1f} examples/s)")
      described = best.describe(manager.all_steps())
      log(done + (f"; {described}" if described else "") + f"; log {log.path}")
    finally:
      progress.close()
      if evaluator is not None:
        evaluator.close()
      manager.wait()
      manager.close()
      writer.close()
    return summary


def _fetch_finite(step: int, metrics: Mapping[str, Any], *,
                  manager: checkpoints.RunCheckpoints) -> dict[str, float]:
  """Host values of one step's metrics; TrainingError when its loss or the norm of the
  parameters it produced is not finite (that state is never saved)."""
  values = {name: float(value) for name, value in metrics.items()}
  bad = [f"{name} is {values[name]}" for name in ("loss", "param_norm")
         if name in values and not math.isfinite(values[name])]
  if bad:
    manager.wait()
    last = manager.latest_step()
    kept = (f"the last good checkpoint, {checkpoints.STEP_PREFIX}_{last}, is intact"
            if last is not None else "no checkpoint was saved")
    raise TrainingError(
        f"{' and '.join(bad)} at step {step}; stopped, and {kept}. Lower LEARNING_RATE, "
        "clip gradients (--gin.create_optimizer.max_grad_norm=1.0) or check the data, then "
        "run again (it resumes from the last checkpoint)")
  return values


def _summarize(window: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """A stats period's train metrics: means of per-step losses, token-weighted accuracy,
  the last learning rate."""
  mean = lambda name: float(np.mean([m[name] for m in window]))
  out = {name: mean(name) for name in ("loss", "cross_ent_loss", "z_loss", "grad_norm",
                                       "distill_gold_loss", "distill_kl")
         if name in window[-1]}
  if "correct_tokens" in window[-1]:
    total = sum(m["num_tokens"] for m in window)
    out["accuracy"] = sum(m["correct_tokens"] for m in window) / max(total, 1.0)
  if "learning_rate" in window[-1]:
    out["learning_rate"] = window[-1]["learning_rate"]
  return out


def _make_evaluator(*, model_dir: Path, config: T5Config, partitioner: Any,
                    mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                    eval_period: int, use_cached: bool):
  """The evaluation run every EVAL_PERIOD (split, batch size, decoding: gin-bind
  `Evaluator.*`); None when EVAL_PERIOD is 0."""
  if not eval_period:
    return None
  return evaluation.Evaluator(
      mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
      config=config, partitioner=partitioner, model_dir=model_dir, use_cached=use_cached)


def _evaluate(evaluator, params: Any, *, step: int, writer: metrics_writer.MetricsWriter,
              log: Optional[Callable[[str], None]] = None) -> dict[str, dict[str, float]]:
  if evaluator is None:
    return {}
  if not evaluator.baseline_written:  # once per process: rows at step 0 are kept on resume
    for task_name, values in evaluator.majority_baseline().items():
      writer.write(0, metrics_writer.BASELINE_SPLIT, task_name, values)
      if log is not None:
        log(f"majority-class baseline {task_name}: " + " ".join(
            f"{k} {v:.4g}" for k, v in values.items() if not k.startswith("rank_")))
    evaluator.baseline_written = True
  results = evaluator.evaluate(params, step=step)
  for task_name, values in results.items():
    writer.write(step, "validation", task_name, values)
  return results


# ------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--multiprocess", action="store_true",
      help="join a multi-process run (jax.distributed) before training; automatic when "
      "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set; without "
      "them jax detects the cluster (SLURM, TPU pods)")


def main(args: argparse.Namespace) -> int:
  """`recast train --gin_file=models/... --gin_file=runs/finetune.gin --gin.NAME=VALUE`."""
  gin_config.parse_run_flags(
      args, command="train", required_macros=REQUIRED_MACROS,
      example="--gin_file=models/t5_1_1/small.gin --gin_file=runs/finetune.gin")
  if not partitioning.initialize_distributed() and args.multiprocess:
    jax.distributed.initialize()
  train()
  return 0
