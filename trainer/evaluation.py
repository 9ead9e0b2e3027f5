"""Evaluation of a model on every task of a mixture, and `recast eval` over checkpoints.

Per task: teacher-forced `loss` (nats per target token) and `token_accuracy` (0-1), then
inference evaluation through `seqio.Evaluator` (decode with `trainer.decoding`, seqio
postprocesses and runs the task's metric functions). A mixture also gets averages, under
the mixture's name: mean loss and token accuracy, and `average` = the mean over tasks of
each task's mean inference metric, and `glue_score` / `super_glue_score` (T5's
definition, trainer/benchmark_scores.py) when every task of the benchmark was evaluated.

    results = Evaluator(mixture_or_task_name="glue_rte", config=config,
                        task_feature_lengths={"inputs": 256, "targets": 8}).evaluate(
                            params, step=1000)
    # {"glue_rte": {"accuracy": 61.4, "loss": 0.72, "token_accuracy": 0.81}}

Predictions go to MODEL_DIR/inference_eval/<task>-<step>.jsonl, one row per example.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import string
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from recast import atomic_files, errors, gin_config, metrics_writer
from recast.mixtures import lookup
from recast.tasks import registry, vocabularies
from recast.trainer import (benchmark_scores, checkpoints, decoding, network, partitioning,
                            train_state)
from recast.trainer.network import T5Config

PREDICTIONS_DIR = "inference_eval"
REQUIRED_MACROS = ("CHECKPOINT_PATH", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


class EvaluationError(errors.UserError):
  """Evaluation cannot run as configured; the message says what to change."""


class PredictionsLogger(seqio.Logger):
  """A seqio logger writing `<output_dir>/<task>-<step>.jsonl` atomically.

  Each row: {"inputs", "target", "prediction", "postprocessed_prediction",
  "postprocessed_target"} (and "score" for score metrics).
  """

  def __call__(self, task_name: str, step: Optional[int], metrics: Mapping[str, Any],
               dataset: Optional[tf.data.Dataset], inferences: Optional[Mapping[str, Any]],
               targets: Optional[Sequence[Any]]) -> None:
    if dataset is None or not inferences:
      return
    features = seqio.get_mixture_or_task(task_name).output_features
    rows = []
    for i, example in enumerate(dataset.as_numpy_iterator()):
      row = {"inputs": example_text(example, "inputs", features),
             "target": example_text(example, "targets", features)}
      if "output" in inferences:
        row["prediction"] = to_json_value(inferences["output"][i])
      if "prediction" in inferences:
        row["postprocessed_prediction"] = to_json_value(inferences["prediction"][i])
      if "score" in inferences:
        row["score"] = to_json_value(inferences["score"][i])
      if targets is not None:
        row["postprocessed_target"] = to_json_value(targets[i])
      rows.append(row)
    step_name = "final" if step is None else str(int(step))
    atomic_files.write_jsonl(Path(self.output_dir) / f"{task_name}-{step_name}.jsonl", rows)


def example_text(example: Mapping[str, Any], feature: str, features: Mapping[str, Any]) -> str:
  """The text of `feature` ("inputs"/"targets"): pretokenized if kept, else decoded."""
  if f"{feature}_pretokenized" in example:
    value = example[f"{feature}_pretokenized"]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
  if feature in example and feature in features:
    return features[feature].vocabulary.decode([int(t) for t in example[feature]])
  return ""


def to_json_value(value: Any) -> Any:
  """Metric inputs/outputs (bytes, numpy values, nested lists) as JSON values."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple)):
    return [to_json_value(v) for v in value]
  if isinstance(value, dict):
    return {str(k): to_json_value(v) for k, v in value.items()}
  return value


MAJORITY_MAX_LABELS = 20
RANK_PREFIX = "rank_"  # rank-classification metrics: rank_accuracy, rank_f1, ...


def label_candidates(task: seqio.Task) -> Optional[list[str]]:
  """The target strings of a task whose targets come from a label set (a registered text
  task with label names whose target template is the label alone, with any fixed text
  around it: GLUE, SuperGLUE's label tasks, DSPT, recycling, task files with `labels:`);
  None for other tasks (free text, regression, per-example choices)."""
  try:
    spec = registry.task_spec(task.name)
  except errors.UserError:
    return None
  if not spec.is_classification or spec.postprocessor_name != "class_label":
    return None
  parsed = list(string.Formatter().parse(spec.targets_template))
  fields = [field for _, field, _, _ in parsed if field]
  if fields != [spec.label_field]:
    return None
  return ["".join(literal + (name if field else "") for literal, field, _, _ in parsed)
          for name in spec.label_names]


def _scoring_batch(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                   lengths: Mapping[str, int], batch_size: int) -> dict[str, np.ndarray]:
  """Unpacked EncDecFeatureConverter features of (inputs, targets) pairs, zero-padded to
  `lengths` and to `batch_size` rows."""
  encoder = np.zeros((batch_size, lengths["inputs"]), np.int32)
  decoder_targets = np.zeros((batch_size, lengths["targets"]), np.int32)
  for row, (x, y) in enumerate(zip(inputs, targets)):
    x, y = x[:lengths["inputs"]], y[:lengths["targets"]]
    encoder[row, :len(x)] = x
    decoder_targets[row, :len(y)] = y
  decoder_inputs = np.zeros_like(decoder_targets)
  decoder_inputs[:, 1:] = decoder_targets[:, :-1]
  return {"encoder_input_tokens": encoder, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": decoder_targets,
          "decoder_loss_weights": (decoder_targets > 0).astype(np.int32)}


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _scalar(value: Any) -> Optional[float]:
  """A metric value as a float; None for non-scalar values (texts, histograms)."""
  value = getattr(value, "value", value)
  try:
    return float(np.asarray(value).item())
  except (TypeError, ValueError):
    return None


def padded_batches(dataset: tf.data.Dataset, batch_size: int
                   ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Batches of `batch_size` rows from unbatched feature dicts; the last one is padded with
  all-zero rows. Yields (number of real rows, batch)."""
  for batch in dataset.batch(batch_size).as_numpy_iterator():
    yield pad_batch(batch, batch_size)


def pad_batch(batch: Mapping[str, np.ndarray], batch_size: int
              ) -> tuple[int, dict[str, np.ndarray]]:
  """(real rows, batch padded with all-zero rows to `batch_size`)."""
  rows = len(next(iter(batch.values())))
  return rows, {k: np.concatenate([v, np.zeros((batch_size - rows,) + v.shape[1:], v.dtype)])
                for k, v in batch.items()}


def shard_params(params: Any, config: T5Config, partitioner: partitioning.Partitioner) -> Any:
  """Places an unboxed parameter tree in the partitioner's parameter shardings."""
  boxed = jax.eval_shape(lambda r: network.init_params(config, r), jax.random.PRNGKey(0))
  return jax.device_put(params, partitioner.param_shardings(boxed))


def partitioned(fn, partitioner: partitioning.Partitioner):
  """Wraps a decoding function (`trainer.decoding.make_predict_fn` / `make_score_fn`) to
  take numpy batches and return numpy outputs: fn(params, batch, *args) on the mesh."""
  fn = jax.jit(fn, out_shardings=partitioner.replicated)

  def run(params, batch, *args):
    with partitioner.activation_context():
      out = fn(params, partitioner.shard_batch(batch, batch_is_global=True), *args)
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), out)
  return run


@gin.configurable
class Evaluator:
  """Evaluates parameters on the `split` of every task of a mixture (or one task).

  Args:
    mixture_or_task_name: a registered seqio task or mixture.
    task_feature_lengths: e.g. {"inputs": 512, "targets": 128}; longer examples are cut.
      Decoding produces up to the targets length unless decoding_options says otherwise.
    config: the model (its vocab_size is filled from the task vocabulary when unset).
    split: the evaluation split.
    batch_size: rows per evaluation batch (rounded up to a multiple of the data-parallel
      size); the last batch is padded.
    num_examples: evaluate only the first N examples of each task (None: all).
    model_dir: where predictions are written (inference_eval/); None: not written.
    decoding_options: greedy by default; beam search or sampling (trainer.decoding).
    partitioner: the mesh; default: data parallel over all devices.
    use_cached: read seqio's offline cache.
    rank_classification: for tasks whose targets come from a label set (`label_candidates`),
      also score every label string and take the most likely one, as T5X/T0/FLAN do;
      the task's metrics on those predictions are reported as `rank_<metric>`.
    rank_length_normalize: compare labels by log-likelihood per target token (else the sum).
  """

  def __init__(self, *, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               config: T5Config, split: str = "validation", batch_size: int = 32,
               num_examples: Optional[int] = None,
               model_dir: Optional[str | os.PathLike] = None,
               decoding_options: Optional[decoding.DecodingOptions] = None,
               partitioner: Optional[partitioning.Partitioner] = None,
               use_cached: bool = False, rank_classification: bool = True,
               rank_length_normalize: bool = False):
    mixture = lookup.get_mixture_or_task(mixture_or_task_name)
    vocabulary = lookup.output_vocabulary(mixture)
    self.name = mixture.name
    self.split = split
    self.step_names: list[str] = []
    self.config = config.with_vocab_size(vocabulary.vocab_size)
    self.model = network.Transformer(self.config)
    self.partitioner = partitioner or partitioning.Partitioner()
    shards = self.partitioner.num_data_shards
    self.batch_size = -(-batch_size // shards) * shards
    self.decoding_options = decoding_options or decoding.DecodingOptions()
    self.model_dir = Path(model_dir) if model_dir is not None else None
    lengths = dict(task_feature_lengths)

    subtasks = seqio.get_subtasks(mixture)
    self.tasks = [t for t in subtasks if split in t.splits]
    if not self.tasks:
      available = sorted({s for t in subtasks for s in t.splits})
      raise EvaluationError(f"{self.name} has no split {split!r}; available: "
                            f"{', '.join(available) or 'none'}")
    writes = self.model_dir is not None and jax.process_index() == 0
    self._seqio = seqio.Evaluator(
        mixture_or_task_name=self.name,
        feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split=split,
        use_cached=use_cached, sequence_length=lengths, num_examples=num_examples,
        logger_cls=(PredictionsLogger,) if writes else (),
        log_dir=str(self.model_dir / PREDICTIONS_DIR) if writes else None,
        async_compute_metrics=False)
    self._datasets = {}  # task name -> unbatched model features (teacher-forced loss)
    for task in self.tasks:
      if task.name in self._seqio.cached_model_datasets:
        ds = self._seqio.cached_model_datasets[task.name].map(lambda _, ex: ex)
      else:  # no metric functions: seqio skips it, the loss is still reported
        ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1,
                              use_cached=use_cached)
        ds = ds.take(num_examples) if num_examples else ds
        ds = seqio.EncDecFeatureConverter(pack=False)(ds, lengths).cache()
      self._datasets[task.name] = ds
    self._eval_step = train_state.make_eval_step(self.model, self.partitioner)
    self._predict = partitioned(decoding.make_predict_fn(self.model, self.decoding_options),
                                self.partitioner)
    self._score = partitioned(decoding.make_score_fn(self.model), self.partitioner)
    self.baseline_written = False  # set by a caller that wrote majority_baseline()
    self.lengths = lengths
    self.rank_length_normalize = rank_length_normalize
    self.rank_labels = {t.name: label_candidates(t) for t in self.tasks} \
        if rank_classification else {}
    self.rank_labels = {k: v for k, v in self.rank_labels.items() if v}

  def teacher_forced_metrics(self, params: Any, task_name: str) -> dict[str, float]:
    """{"loss": nats per target token, "token_accuracy": 0-1} over the task's split."""
    totals = {"loss": 0.0, "weight_sum": 0.0, "correct_tokens": 0.0}
    for _, batch in padded_batches(self._datasets[task_name], self.batch_size):
      metrics = self._eval_step(params, self.partitioner.shard_batch(batch, batch_is_global=True))
      for name in totals:
        totals[name] += float(metrics[name])
    tokens = max(totals["weight_sum"], 1.0)
    return {"loss": totals["loss"] / tokens, "token_accuracy": totals["correct_tokens"] / tokens}

  def predict(self, params: Any, dataset: tf.data.Dataset, *, rng: Optional[jax.Array] = None
              ) -> list[tuple[int, np.ndarray]]:
    """seqio's predict_fn: (index, output tokens [max_decode_length]) per example of an
    enumerated dataset of model features."""
    rng = jax.random.PRNGKey(self.decoding_options.seed) if rng is None else rng
    outputs = []
    for i, (rows, batch) in enumerate(padded_batches(dataset.map(_with_index),
                                                      self.batch_size)):
      index = batch.pop("index")
      tokens, _ = self._predict(params, batch, jax.random.fold_in(rng, i))
      outputs += [(int(index[r]), tokens[r]) for r in range(rows)]
    return outputs

  def score(self, params: Any, dataset: tf.data.Dataset) -> list[tuple[int, float]]:
    """seqio's score_fn: (index, log-likelihood of the targets) per example."""
    outputs = []
    for rows, batch in padded_batches(dataset.map(_with_index), self.batch_size):
      index = batch.pop("index")
      scores = self._score(params, batch)
      outputs += [(int(index[r]), float(scores[r])) for r in range(rows)]
    return outputs

  def label_scores(self, params: Any, task_name: str) -> np.ndarray:
    """[examples, labels]: each label string's log-likelihood for each example of the
    task's split (per target token with rank_length_normalize); K labels cost K
    teacher-forced passes, batched."""
    task = next(t for t in self.tasks if t.name == task_name)
    labels = self.rank_labels[task_name]
    feature = task.output_features["targets"]
    label_ids = []
    for text in labels:
      ids = list(feature.vocabulary.encode(text))
      if feature.add_eos:
        ids.append(1)
      label_ids.append(np.array(ids[:self.lengths["targets"]], np.int32))
    inputs = [ex["inputs"] for ex in self._seqio.cached_task_datasets[task_name]
              .as_numpy_iterator()]
    rows = [(i, k) for i in range(len(inputs)) for k in range(len(labels))]
    scores = np.zeros(len(rows), np.float32)
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      batch = _scoring_batch([inputs[i] for i, _ in chunk], [label_ids[k] for _, k in chunk],
                             self.lengths, self.batch_size)
      scores[start:start + len(chunk)] = self._score(params, batch)[:len(chunk)]
    scores = scores.reshape(len(inputs), len(labels))
    if self.rank_length_normalize:
      scores = scores / np.array([len(ids) for ids in label_ids], np.float32)
    return scores

  def rank_classification_metrics(self, params: Any, task_name: str) -> dict[str, float]:
    """The task's metrics, as `rank_<metric>`, on the most likely label of each example."""
    task = next(t for t in self.tasks if t.name == task_name)
    labels = self.rank_labels[task_name]
    examples = list(self._seqio.cached_task_datasets[task_name].as_numpy_iterator())
    chosen = self.label_scores(params, task_name).argmax(axis=1)
    targets = [task.postprocess_fn(_text(ex["targets_pretokenized"]), example=ex,
                                   is_target=True) for ex in examples]
    predictions = [task.postprocess_fn(labels[k], example=ex, is_target=False)
                   for k, ex in zip(chosen, examples)]
    out = {}
    for metric_fn in task.predict_metric_fns:
      for name, value in metric_fn(targets, predictions).items():
        value = _scalar(value)
        if value is not None:
          out[f"{RANK_PREFIX}{name}"] = value
    return out

  def evaluate(self, params: Any, *, step: int) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for every task, plus averages under the mixture's name.

    `params`: the unboxed parameter tree (numpy or jax arrays, any sharding).
    """
    params = shard_params(params, self.config, self.partitioner)
    results = {task.name: self.teacher_forced_metrics(params, task.name)
               for task in self.tasks}
    metrics_future, _ = self._seqio.evaluate(
        compute_metrics=True, step=step,
        predict_fn=lambda ds, *_: self.predict(params, ds),
        score_fn=lambda ds, *_: self.score(params, ds))
    inference: dict[str, dict[str, float]] = {}
    for task_name, values in (metrics_future.result() or {}).items():
      scalars = {k: _scalar(v) for k, v in values.items()}
      inference[task_name] = {k: v for k, v in scalars.items() if v is not None}
      results[task_name].update(inference[task_name])
    for task_name in self.rank_labels:
      results[task_name].update(self.rank_classification_metrics(params, task_name))
    if len(self.tasks) > 1:
      results[self.name] = self._averages(results, inference)
    return results

  def _averages(self, results, inference) -> dict[str, float]:
    averages = {name: float(np.mean([results[t.name][name] for t in self.tasks]))
                for name in ("loss", "token_accuracy")}
    task_means = [np.mean(list(v.values())) for v in inference.values() if v]
    if task_means:
      averages["average"] = float(np.mean(task_means))
    ranked = [np.mean([v for k, v in results[t.name].items() if k.startswith(RANK_PREFIX)])
              for t in self.tasks if any(k.startswith(RANK_PREFIX) for k in results[t.name])]
    if ranked:
      averages[f"{RANK_PREFIX}average"] = float(np.mean(ranked))
    averages.update(benchmark_scores.benchmark_scores(inference))  # GLUE/SuperGLUE score
    return averages

  def majority_baseline(self, *, max_labels: int = MAJORITY_MAX_LABELS
                        ) -> dict[str, dict[str, float]]:
    """{task: {metric: value}}: the task's own metrics when every example is predicted as
    its split's most common target, for tasks whose targets come from a small label set
    (at most `max_labels` distinct values, each seen at least twice on average); others
    are left out. The majority is taken on the evaluation split itself, as "majority
    class" baselines are usually quoted."""
    out = {}
    for task in self.tasks:
      dataset = self._seqio.cached_task_datasets.get(task.name)
      if dataset is None or not task.predict_metric_fns:
        continue
      targets = []
      for ex in dataset.as_numpy_iterator():
        text = ex.get("targets_pretokenized")
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        if text is None:
          break
        targets.append(task.postprocess_fn(text, example=ex, is_target=True))
      try:
        counts = collections.Counter(targets)
      except TypeError:  # unhashable targets (dicts, lists): not a label set
        continue
      if not counts or len(counts) > max_labels or len(counts) * 2 > len(targets):
        continue
      majority = counts.most_common(1)[0][0]
      values = {}
      for metric_fn in task.predict_metric_fns:
        try:
          result = metric_fn(targets, [majority] * len(targets))
        except Exception:  # noqa: BLE001  (a metric that needs more than labels)
          continue
        values.update({k: v for k, v in ((k, _scalar(v)) for k, v in result.items())
                       if v is not None})
      if task.name in self.rank_labels:  # the same baseline, beside the rank metrics
        values.update({f"{RANK_PREFIX}{k}": v for k, v in list(values.items())})
      if values:
        out[task.name] = values
    return out

  def close(self) -> None:
    self._seqio.close()


def _with_index(index, example):
  return dict(example, index=index)


# ------------------------------------------------------------------------------------------
# `recast eval`


def carried_vocabulary(ref: checkpoints.CheckpointRef) -> Optional[seqio.Vocabulary]:
  """The vocabulary a checkpoint carries: its spiece.model (or its run's), else what its
  metadata records (bytes, or a SentencePiece file still where it was); None if unknown."""
  described = ref.meta.get("vocabulary") or {}
  extra_ids = int(described.get("extra_ids", vocabularies.EXTRA_IDS))
  if ref.vocabulary_file is not None:
    return vocabularies.sentencepiece_vocabulary(str(ref.vocabulary_file), extra_ids)
  if described.get("type") == "byte":
    return vocabularies.byte_vocabulary(extra_ids)
  path = described.get("path")
  if described.get("type") == "sentencepiece" and path and os.path.isfile(path):
    return vocabularies.sentencepiece_vocabulary(path, extra_ids)
  return None


@contextlib.contextmanager
def checkpoint_vocabulary(ref: checkpoints.CheckpointRef) -> Iterator[seqio.Vocabulary]:
  """Within the block every task uses the vocabulary `ref` carries (eval, infer and
  distillation read a checkpoint the same way, from any working directory). A VOCABULARY
  the user set that is another vocabulary is an error naming both; unset is fine."""
  carried = carried_vocabulary(ref)
  if carried is None:
    yield vocabularies.get_vocabulary()
    return
  where = vocabularies.user_setting()
  if where:
    chosen, theirs = vocabularies.describe(vocabularies.get_vocabulary()), \
        vocabularies.describe(carried)
    differ = [k for k in ("type", "size", "extra_ids", "sha256")
              if chosen.get(k) is not None and theirs.get(k) is not None
              and chosen[k] != theirs[k]]
    if differ:
      name = lambda d: d.get("path") or d["type"]
      raise vocabularies.VocabularyError(
          f"{where} is {name(chosen)}, but checkpoint {ref.folder} was trained with "
          f"{name(theirs)} ({', '.join(f'{k} {chosen[k]} vs {theirs[k]}' for k in differ)}); "
          "leave VOCABULARY unset to use the checkpoint's own, or set it to that model")
  with vocabularies.use_vocabulary(carried):
    yield carried


def load_checkpoint(ref: checkpoints.CheckpointRef, *, vocabulary: seqio.Vocabulary
                    ) -> tuple[T5Config, Any]:
  """(model config, numpy parameters) of a parameter or training checkpoint, after checking
  its vocabulary against the task's."""
  meta, folder = ref.meta, ref.folder
  if "model" not in meta:
    raise EvaluationError(f"checkpoint {folder} records no model config; evaluate a "
                          "checkpoint written by recast")
  config = T5Config(**meta["model"])
  expected = jax.eval_shape(lambda r: network.init_params(config, r), jax.random.PRNGKey(0))
  params = checkpoints.load_initial_params(
      folder, expected_params=expected, vocabulary=vocabularies.describe(vocabulary))
  return config, params


@gin.configurable
def evaluate_checkpoints(*, checkpoint_path: str = gin.REQUIRED,
                         mixture_or_task_name: str = gin.REQUIRED,
                         task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                         output_dir: Optional[str] = None, mode: str = "all",
                         split: str = "validation") -> dict[int, dict]:
  """Evaluates the checkpoints CHECKPOINT_PATH names; returns {step: results}.

  Rows go to `<output_dir>/metrics.jsonl` (split = `split`) and predictions to
  `<output_dir>/inference_eval/`. output_dir defaults to the run's MODEL_DIR (the folder
  holding the checkpoints); a parameter checkpoint needs it set (EVAL_OUTPUT_DIR).
  The Evaluator's other settings (batch_size, num_examples, decoding_options) come from gin.
  """
  found = checkpoints.resolve(checkpoint_path, mode=mode, what="CHECKPOINT_PATH")
  with checkpoint_vocabulary(found[-1]):
    if output_dir is None:
      if checkpoints.is_param_checkpoint(checkpoint_path):
        raise EvaluationError(
            f"{checkpoint_path} is a parameter checkpoint; set --gin.EVAL_OUTPUT_DIR=... for "
            "the metrics and predictions")
      output_dir = found[0].folder.parent
    vocabulary = lookup.output_vocabulary(lookup.get_mixture_or_task(mixture_or_task_name))
    writer = metrics_writer.MetricsWriter(output_dir, enabled=jax.process_index() == 0)
    evaluator, all_results = None, {}
    try:
      for ref in found:
        step = ref.step
        config, params = load_checkpoint(ref, vocabulary=vocabulary)
        sized = config.with_vocab_size(vocabulary.vocab_size)
        if evaluator is None or evaluator.config != sized:
          evaluator = Evaluator(mixture_or_task_name=mixture_or_task_name,
                                task_feature_lengths=task_feature_lengths, config=config,
                                split=split, model_dir=output_dir)
        results = evaluator.evaluate(params, step=step)
        for task_name, values in results.items():
          writer.write(step, split, task_name, values)
        if jax.process_index() == 0:
          for task_name, values in sorted(results.items()):
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())
                             if v is not None and math.isfinite(v))
            print(f"step {step} {split} {task_name}: {shown}", flush=True)
        all_results[step] = results
    finally:
      writer.close()
  return all_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
  del parser  # everything is gin: --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=...


def main(args: argparse.Namespace) -> int:
  """`recast eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=... ...`."""
  gin_config.parse_run_flags(args, command="eval", required_macros=REQUIRED_MACROS,
                             default_gin_files=["runs/eval.gin"])
  evaluate_checkpoints()
  return 0
