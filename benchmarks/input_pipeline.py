"""Can the input pipeline keep the trainer fed? Examples/s of `recast.trainer.input_pipeline.train_dataset`
(seqio tokenize -> objective -> pack -> batch) against the examples/s the train step
consumes at the benchmark model size, and the fraction of a real loop's time spent waiting
for the next batch."""

from __future__ import annotations

import time
from typing import Any, Mapping

from benchmarks import measure
from benchmarks.train_step import RecastTrainer
from recast.trainer import input_pipeline
from recast.trainer.network import T5Config


def pipeline_throughput(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                        batch_size: int, num_batches: int, seed: int = 0) -> dict[str, Any]:
  """Examples/s of the packed training stream, read as fast as it goes (no model).

  The first batch (file listing, tf.data start-up, shuffle buffer fill) is timed apart as
  `startup_s`; `examples_per_s` counts original examples (several per packed row) over
  the next `num_batches` batches.
  """
  start = time.perf_counter()
  batches = input_pipeline.train_dataset(
      mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
      batch_size=batch_size, seed=seed).as_numpy_iterator()
  next(batches)
  startup = time.perf_counter() - start
  start = time.perf_counter()
  examples = tokens = 0
  for _ in range(num_batches):
    e, t = input_pipeline.batch_counts(next(batches))
    examples, tokens = examples + e, tokens + t
  seconds = time.perf_counter() - start
  return {"startup_s": startup, "batches": num_batches, "seconds": seconds,
          "examples_per_s": examples / seconds, "rows_per_s": num_batches * batch_size / seconds,
          "tokens_per_s": tokens / seconds, "examples_per_row": examples / num_batches / batch_size}


def train_loop_input_wait(*, config: T5Config, mixture_or_task_name: str,
                          task_feature_lengths: Mapping[str, int], batch_size: int,
                          num_steps: int, seed: int = 0, log=print) -> dict[str, Any]:
  """The trainer's consumption and its wait for input, in `recast train`'s own loop shape.

  1. Consumption: `num_steps` steps on batches read beforehand (the step alone), as
     examples/s = steps/s x examples per batch.
  2. A real loop over a fresh stream: next(batches) -> shard -> dispatch the step ->
     fetch the previous step's loss (as trainer.train does, so reading overlaps the
     step); `input_wait_fraction` = time blocked in next() / loop time.
  """
  trainer = RecastTrainer(config, seed=seed)
  stream = input_pipeline.train_dataset(
      mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
      batch_size=batch_size, seed=seed).as_numpy_iterator()
  ready = [next(stream) for _ in range(num_steps)]
  device_batches = [trainer.device_batch(b) for b in ready]
  trainer.step(device_batches[0])  # compile
  examples = sum(input_pipeline.batch_counts(b)[0] for b in ready)
  seconds = measure.interleaved_seconds(
      {"step": lambda c=iter(range(10**9)): trainer.step(device_batches[next(c) % num_steps])},
      repetitions=num_steps, warmup=0)["step"]
  step_s = float(sum(seconds)) / num_steps
  consumption = examples / num_steps / step_s
  log(f"  step alone: {step_s:.3f}s/step = {consumption:.1f} examples/s")

  fresh = input_pipeline.train_dataset(
      mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
      batch_size=batch_size, seed=seed + 1).as_numpy_iterator()
  next(fresh)  # start-up is not steady-state waiting
  wait = 0.0
  pending = None
  start = time.perf_counter()
  for _ in range(num_steps):
    t0 = time.perf_counter()
    local = next(fresh)
    wait += time.perf_counter() - t0
    trainer.state, metrics = trainer.train_step(trainer.state, trainer.device_batch(local),
                                                trainer.rng)
    if pending is not None:
      float(pending["loss"])
    pending = metrics
  float(pending["loss"])
  loop_s = time.perf_counter() - start
  return {"step_s": step_s, "step_seconds": measure.summarize(seconds),
          "consumption_examples_per_s": consumption,
          "examples_per_batch": examples / num_steps, "loop_s": loop_s,
          "loop_step_s": loop_s / num_steps, "input_wait_s": wait,
          "input_wait_fraction": wait / loop_s}


def input_pipeline_report(*, config: T5Config, mixture_or_task_name: str,
                          task_feature_lengths: Mapping[str, int], batch_size: int,
                          num_batches: int, num_steps: int, log=print) -> dict[str, Any]:
  """Pipeline examples/s, trainer consumption, their ratio and the loop's input wait."""
  pipeline = pipeline_throughput(mixture_or_task_name=mixture_or_task_name,
                                 task_feature_lengths=task_feature_lengths,
                                 batch_size=batch_size, num_batches=num_batches)
  log(f"  pipeline: {pipeline['examples_per_s']:.1f} examples/s")
  loop = train_loop_input_wait(config=config, mixture_or_task_name=mixture_or_task_name,
                               task_feature_lengths=task_feature_lengths,
                               batch_size=batch_size, num_steps=num_steps, log=log)
  return {"mixture_or_task_name": mixture_or_task_name,
          "task_feature_lengths": dict(task_feature_lengths), "batch_size": batch_size,
          "model": config.to_dict(), "pipeline": pipeline, "train_loop": loop,
          "pipeline_over_consumption": measure.ratio(pipeline["examples_per_s"],
                                                     loop["consumption_examples_per_s"])}
