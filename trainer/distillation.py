"""`recast distill`: knowledge distillation of a teacher checkpoint into a student.

Pre-trained distillation ("Well-read students learn better", Turc et al. 2019): a student
(often a pretrained compact model, gin/models/compact) learns from a larger fine-tuned
teacher. Per target token, with student logits s and teacher logits t:

    loss = alpha * CE(gold, s) + (1 - alpha) * T**2 * KL(softmax(t / T) || softmax(s / T))

(plus the student's z-loss), normalised like every training loss (`trainer.losses`). The
teacher's forward pass runs inside the same jitted train step, its parameters frozen (the
step's `frozen` argument, never donated) and sharded by the same partitioner rules. The
loop is `recast.trainer.train.train`'s: gin/runs/distill.gin hands it this module's train step
(`@distillation_step_factory()`) and training task (`@distillation_task()`), so a
distillation run is `recast distill`, or `recast train` / `recast sweep` with that file.

On unlabeled transfer data (`TRANSFER_DATA`: any task's or mixture's inputs, a text corpus,
or text files) the teacher first labels every input by greedy decoding, once per MODEL_DIR:

    MODEL_DIR/teacher_labels.jsonl   {"inputs": [ids], "targets": [teacher's ids], ...}
    MODEL_DIR/teacher_labels.json    what made them (teacher, source, lengths, count)

and the student trains on those sequences (the "gold" of CE) and the teacher's
distributions over them. Teacher and student may differ in size; they must share one
vocabulary (checked against the teacher checkpoint's metadata before anything is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils

from recast import atomic_files, errors, gin_config
from recast.mixtures import lookup
from recast.tasks import pretraining, vocabularies
from recast.trainer import (checkpoints, decoding, evaluation, losses, network, partitioning,
                            train as train_lib, train_state as train_state_lib)
from recast.trainer.network import T5Config

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
                   "TEACHER_CHECKPOINT_PATH")
LABELS_FILE = "teacher_labels.jsonl"
LABELS_META_FILE = "teacher_labels.json"
LABELS_FORMAT = 1
EOS_ID = decoding.EOS_ID

Array = jax.Array


class DistillationError(errors.UserError):
  """A teacher, student or transfer set that cannot be used; the message says the fix."""


# ------------------------------------------------------------------------------------------
# The loss


def token_kl_divergence(teacher_logits: Array, student_logits: Array, *,
                        temperature: float = 1.0) -> Array:
  """KL(p_teacher || p_student) of every token at `temperature`, in float32.

  Args:
    teacher_logits, student_logits: [batch, length, vocab].
  Returns:
    [batch, length]: sum_v p_t(v) (log p_t(v) - log p_s(v)), both softmaxes of logits / T.
  """
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


def distillation_loss(student_logits: Array, teacher_logits: Array,
                      batch: Mapping[str, Array], *, alpha: float, temperature: float,
                      z_loss: float = 1e-4, label_smoothing: float = 0.0,
                      loss_normalizing_factor: losses.LossNormalizingFactor = (
                          losses.SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS),
                      ) -> tuple[Array, dict[str, Array]]:
  """alpha * (gold cross entropy + z-loss) + (1 - alpha) * (T^2 KL + z-loss), normalised.

  Each part carries the student's z-loss, so alpha = 1 is exactly `losses.compute_loss`
  (ordinary fine-tuning) and alpha = 0 pure distillation. Token weights and the normalising
  factor are compute_loss's (precomputed ones in `batch` win, as in the train step).

  Args:
    student_logits, teacher_logits: float [batch, length, vocab], the same vocab.
    batch: decoder_target_tokens [batch, length] (the gold, or the teacher's own labels),
      optional decoder_loss_weights, decoder_segment_ids, loss_normalizing_factor.
  Returns:
    (loss, metrics): compute_loss's metrics (summable; `loss` is the mixed loss,
    cross_ent_loss = loss - z_loss) and distill_gold_loss (gold cross entropy),
    distill_kl (KL at temperature T, unscaled), distill_agreement_tokens (tokens whose
    student argmax is the teacher's; divide by num_tokens).
  """
  if "loss_normalizing_factor" in batch:
    factor = batch["loss_normalizing_factor"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
  else:
    factor, weights = losses.get_loss_normalizing_factor_and_weights(
        loss_normalizing_factor, batch)
    factor = 1.0 if factor is None else factor
  gold_loss, gold_metrics = losses.compute_loss(
      student_logits, dict(batch, decoder_loss_weights=weights, loss_normalizing_factor=factor),
      z_loss=z_loss, label_smoothing=label_smoothing)
  kl = jnp.sum(token_kl_divergence(teacher_logits, student_logits, temperature=temperature)
               * weights) / factor
  z = gold_metrics["z_loss"]
  loss = alpha * gold_loss + (1.0 - alpha) * (temperature ** 2 * kl + z)
  real = (weights > 0).astype(jnp.float32)
  agree = jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)
  metrics = dict(gold_metrics, loss=loss, cross_ent_loss=loss - z,
                 distill_gold_loss=gold_metrics["cross_ent_loss"], distill_kl=kl,
                 distill_agreement_tokens=jnp.sum(agree.astype(jnp.float32) * real))
  return loss, metrics


# ------------------------------------------------------------------------------------------
# The teacher


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher: where it came from, its model config and numpy parameters."""

  path: str
  config: T5Config
  params: Any


def load_teacher(path: str | os.PathLike, *, vocabulary: Any,
                 student_config: T5Config) -> Teacher:
  """The teacher checkpoint at `path`, checked against the student's task vocabulary.

  Args:
    path: a parameter checkpoint, a `checkpoint_N` folder or a run's MODEL_DIR (newest).
    vocabulary: the seqio vocabulary of the student's tasks.
    student_config: the student, vocab_size filled in.
  Raises DistillationError (before anything is written) when the teacher's recorded
  vocabulary or vocab_size differs from the student's, or the path does not exist;
  checkpoints.CheckpointError when it holds no checkpoint.
  """
  if not Path(path).exists():
    raise DistillationError(f"TEACHER_CHECKPOINT_PATH {path} does not exist; point it at a "
                            "fine-tuned run's MODEL_DIR or a parameter checkpoint")
  ref = checkpoints.resolve(path, what="TEACHER_CHECKPOINT_PATH")[-1]
  meta, folder = ref.meta, ref.folder
  if "model" not in meta:
    raise DistillationError(f"teacher checkpoint {folder} records no model config; use a "
                            "checkpoint written by recast (or `recast convert`)")
  task_vocabulary = vocabularies.describe(vocabulary)
  shared = ("teacher and student must share one vocabulary: distil into a student whose "
            "tasks use the teacher's vocabulary (--gin.VOCABULARY=<the teacher's "
            "spiece.model>)")
  if meta.get("vocabulary"):
    try:
      vocabularies.check_compatible(meta["vocabulary"], task_vocabulary,
                                    what=f"teacher checkpoint {folder}")
    except vocabularies.VocabularyError as e:
      raise DistillationError(f"{e}; {shared}") from None
  else:
    print(f"warning: teacher checkpoint {folder} records no vocabulary; only its vocab_size "
          "is checked", file=sys.stderr, flush=True)
  teacher_config = T5Config(**meta["model"])
  if teacher_config.vocab_size != student_config.vocab_size:
    raise DistillationError(
        f"teacher checkpoint {folder} has vocab_size {teacher_config.vocab_size}, the "
        f"student {student_config.vocab_size} (from its tasks' {task_vocabulary['type']} "
        f"vocabulary of {task_vocabulary['size']} ids); {shared}")
  _, params = evaluation.load_checkpoint(ref, vocabulary=vocabulary)
  # The teacher computes in the run's activation dtype, never with dropout.
  config = teacher_config.replace(dtype=student_config.dtype, dropout_rate=0.0)
  return Teacher(path=str(folder), config=config, params=params)


# ------------------------------------------------------------------------------------------
# The train step


def make_distill_train_step(model: network.Transformer, optimizer: Any,
                            partitioner: partitioning.Partitioner, *, teacher: Teacher,
                            alpha: float, temperature: float, num_microbatches: int = 1,
                            z_loss: float = 1e-4, label_smoothing: float = 0.0,
                            loss_normalizing_factor: losses.LossNormalizingFactor = (
                                losses.SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS),
                            ) -> train_state_lib.TrainStep:
  """`train_step(state, batch, rng) -> (state, metrics)` with the teacher inside the step.

  The signature of `train_state.make_train_step` (what `train(train_step_factory=...)`
  calls), plus the teacher and the mix. The teacher's parameters are placed once in the
  partitioner's shardings and passed to the jitted step as its frozen argument.
  Metrics: make_train_step's plus distill_gold_loss, distill_kl, distill_agreement_tokens.
  """
  if not 0.0 <= alpha <= 1.0 or temperature <= 0:
    raise DistillationError(f"distillation needs 0 <= DISTILL_ALPHA <= 1 and "
                            f"DISTILL_TEMPERATURE > 0; got {alpha} and {temperature}")
  config = model.config
  teacher_model = network.Transformer(teacher.config)
  teacher_params = evaluation.shard_params(teacher.params, teacher.config, partitioner)
  teacher_shardings = jax.tree_util.tree_map(lambda x: x.sharding, teacher_params)
  inputs = train_state_lib.model_inputs

  def loss_fn(params, batch, dropout_rng, frozen_teacher):
    teacher_logits = jax.lax.stop_gradient(teacher_model.apply(
        {"params": frozen_teacher}, **inputs(batch), enable_dropout=False))
    student_logits = model.apply({"params": params}, **inputs(batch),
                                 enable_dropout=config.dropout_rate > 0,
                                 rngs={"dropout": dropout_rng})
    return distillation_loss(student_logits, teacher_logits, batch, alpha=alpha,
                             temperature=temperature, z_loss=z_loss,
                             label_smoothing=label_smoothing)

  step = train_state_lib.make_train_step(
      model, optimizer, partitioner, num_microbatches=num_microbatches, z_loss=z_loss,
      label_smoothing=label_smoothing, loss_normalizing_factor=loss_normalizing_factor,
      loss_fn=loss_fn, frozen_shardings=teacher_shardings)

  def train_step(state, batch, rng):
    return step(state, batch, rng, teacher_params)
  return train_step


# ------------------------------------------------------------------------------------------
# Teacher labels for unlabeled transfer data


def greedy_labels(config: T5Config, params: Any, inputs: Sequence[Sequence[int]], *,
                  target_length: int, input_length: int, batch_size: int,
                  partitioner: partitioning.Partitioner) -> list[list[int]]:
  """Each input's greedy decoding by the model `config`/`params`, EOS and padding removed.

  Args:
    inputs: token ids per example (EOS optional; cut to input_length with EOS last).
    target_length: decode at most this many tokens (EOS included).
    batch_size: rows per decoding call (rounded up to the data-parallel size).
  """
  model = network.Transformer(config)
  params = evaluation.shard_params(params, config, partitioner)
  predict = evaluation.partitioned(decoding.make_predict_fn(model, decoding.DecodingOptions(
      method="greedy", max_decode_length=target_length)), partitioner)
  batch_size = -(-batch_size // partitioner.num_data_shards) * partitioner.num_data_shards
  labels = []
  for start in range(0, len(inputs), batch_size):
    chunk = [_with_eos(ids, input_length) for ids in inputs[start:start + batch_size]]
    rows, batch = evaluation.pad_batch({
        "encoder_input_tokens": np.stack(chunk),
        "decoder_input_tokens": np.zeros((len(chunk), target_length), np.int32)}, batch_size)
    tokens, _ = predict(params, batch)
    labels.extend(_strip_eos(t) for t in tokens[:rows])
  return labels


def _with_eos(ids: Sequence[int], length: int) -> np.ndarray:
  ids = _strip_eos(ids)[:length - 1] + [EOS_ID]
  return np.array(ids + [0] * (length - len(ids)), np.int32)


def _strip_eos(ids: Sequence[int]) -> list[int]:
  """Token ids up to the first EOS or padding."""
  out = []
  for t in ids:
    if int(t) in (0, EOS_ID):
      break
    out.append(int(t))
  return out


def transfer_inputs(transfer_data: str, *, split: str, vocabulary: Any,
                    task_feature_lengths: Mapping[str, int], inputs_prefix: str = "",
                    max_examples: Optional[int] = None) -> list[list[int]]:
  """Input token ids (no EOS) of the transfer set, in order.

  `transfer_data` is a registered task or mixture (its `inputs`), a text corpus from
  `tasks.pretraining.register_text_corpus`, or a glob of text files (one input per line,
  `inputs_prefix` + the line; e.g. "sst2 sentence: " to match the teacher's task).
  """
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if transfer_data in known:
    task = seqio.get_mixture_or_task(transfer_data)
    vocabularies.check_compatible(
        vocabularies.describe(lookup.output_vocabulary(task)),
        vocabularies.describe(vocabulary), what=f"transfer data {transfer_data}")
    if split not in task.splits:
      raise DistillationError(f"transfer data {transfer_data!r} has no split {split!r}; "
                              f"available: {', '.join(task.splits)}")
    ds = task.get_dataset(dict(task_feature_lengths), split=split, shuffle=False,
                          num_epochs=1)
    if max_examples:
      ds = ds.take(max_examples)
    return [_strip_eos(ex["inputs"]) for ex in ds.as_numpy_iterator()]
  corpora = pretraining.registered_corpora()
  files = (corpora[transfer_data].paths(split) if transfer_data in corpora else
           sorted(glob.glob(os.path.expanduser(transfer_data))))
  if not files:
    raise DistillationError(
        f"TRANSFER_DATA {transfer_data!r} is not a registered task, mixture or corpus and "
        "matches no files; give a task name (`recast tasks list`) or a glob of text files")
  out = []
  for line in _lines(files):
    out.append(vocabulary.encode(inputs_prefix + line)[:task_feature_lengths["inputs"] - 1])
    if max_examples and len(out) >= max_examples:
      break
  return out


def _lines(files: Sequence[str]) -> Iterator[str]:
  for path in files:
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          yield line.rstrip("\n")


def label_transfer_data(*, model_dir: str | os.PathLike, teacher: Teacher, transfer_data: str,
                        split: str, vocabulary: Any, task_feature_lengths: Mapping[str, int],
                        batch_size: int, inputs_prefix: str = "",
                        max_examples: Optional[int] = None,
                        partitioner: Optional[partitioning.Partitioner] = None) -> Path:
  """Writes (once) MODEL_DIR/teacher_labels.jsonl: the transfer inputs and the teacher's
  greedy outputs as token ids (and text); returns its path.

  A run started again finds the labels of its first start and reuses them; labels made by
  another teacher or from other data are a DistillationError (use a new MODEL_DIR).
  """
  model_dir = Path(model_dir)
  path, meta_path = model_dir / LABELS_FILE, model_dir / LABELS_META_FILE
  meta = {"format": LABELS_FORMAT, "teacher": str(Path(teacher.path).resolve()),
          "transfer_data": transfer_data, "split": split, "inputs_prefix": inputs_prefix,
          "max_examples": max_examples, "task_feature_lengths": dict(task_feature_lengths),
          "decoding": "greedy"}
  if meta_path.exists() and path.exists():
    saved = json.loads(meta_path.read_text())
    differs = [k for k in meta if saved.get(k) != meta[k]]
    if differs:
      raise DistillationError(
          f"{model_dir} holds teacher labels made with other settings ({', '.join(differs)}: "
          f"{[saved.get(k) for k in differs]} vs {[meta[k] for k in differs]}); use a new "
          "MODEL_DIR for another teacher or transfer set")
    return path
  partitioner = partitioner or partitioning.Partitioner()
  inputs = transfer_inputs(transfer_data, split=split, vocabulary=vocabulary,
                           task_feature_lengths=task_feature_lengths,
                           inputs_prefix=inputs_prefix, max_examples=max_examples)
  if not inputs:
    raise DistillationError(f"transfer data {transfer_data!r} ({split}) has no inputs")
  targets = greedy_labels(teacher.config, teacher.params, inputs,
                          input_length=task_feature_lengths["inputs"],
                          target_length=task_feature_lengths["targets"],
                          batch_size=batch_size, partitioner=partitioner)
  if jax.process_index() == 0:
    atomic_files.write_jsonl(path, ({
        "inputs": i, "targets": t, "inputs_pretokenized": vocabulary.decode(i),
        "targets_pretokenized": vocabulary.decode(t)} for i, t in zip(inputs, targets)))
    atomic_files.write_json(meta_path, dict(meta, num_examples=len(inputs)))
    print(f"teacher labelled {len(inputs)} inputs of {transfer_data} -> {path}", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("teacher_labels")
  return path


def register_labelled_task(labels_path: str | os.PathLike, *, vocabulary: Any) -> str:
  """Registers (or replaces) a seqio task over teacher labels; returns its name.

  The task's train split is the labels file's rows: "inputs" and "targets" token ids with
  EOS appended, output features in `vocabulary`.
  """
  labels_path = Path(labels_path).resolve()
  rows = atomic_files.read_jsonl(labels_path)
  name = "teacher_labels_" + hashlib.sha1(str(labels_path).encode()).hexdigest()[:10]

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_generator(
        lambda: ({"inputs": r["inputs"], "targets": r["targets"]} for r in rows),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=("train",),
                                            num_input_examples={"train": len(rows)}),
      output_features={k: seqio.Feature(vocabulary, add_eos=True)
                       for k in ("inputs", "targets")},
      preprocessors=[seqio.preprocessors.append_eos_after_trim],
      shuffle_buffer_size=min(len(rows), 10000))
  return name


# ------------------------------------------------------------------------------------------
# The run: what runs/distill.gin hands to `recast.trainer.train.train`


_TEACHERS: dict[tuple, tuple[Teacher, Any]] = {}


def run_teacher(teacher_checkpoint_path: str | Mapping[str, str],
                mixture_or_task_name: str) -> tuple[Teacher, Any]:
  """(the teacher, the tasks' vocabulary) of a run, loaded and checked once per process.

  `teacher_checkpoint_path` is a path, or {task: path} (one teacher per task, for grids
  over MIXTURE_OR_TASK_NAME). The student is `T5Config()` as gin binds it, its vocab_size
  from the tasks' vocabulary (as `train` makes it).
  """
  if isinstance(teacher_checkpoint_path, Mapping):
    if mixture_or_task_name not in teacher_checkpoint_path:
      raise DistillationError(
          f"TEACHER_CHECKPOINT_PATH names no teacher for {mixture_or_task_name}; it has "
          f"{', '.join(sorted(teacher_checkpoint_path))}")
    teacher_checkpoint_path = teacher_checkpoint_path[mixture_or_task_name]
  vocabulary = lookup.output_vocabulary(lookup.get_mixture_or_task(mixture_or_task_name))
  student = T5Config().with_vocab_size(vocabulary.vocab_size)
  key = (str(Path(teacher_checkpoint_path).resolve()), student.vocab_size, student.dtype,
         json.dumps(vocabularies.describe(vocabulary), sort_keys=True))
  if key not in _TEACHERS:
    _TEACHERS.clear()  # one teacher at a time in memory
    _TEACHERS[key] = (load_teacher(teacher_checkpoint_path, vocabulary=vocabulary,
                                   student_config=student), vocabulary)
  return _TEACHERS[key]


@gin.configurable
def distillation_step_factory(*, teacher_checkpoint_path: Any = gin.REQUIRED,
                              mixture_or_task_name: str = gin.REQUIRED, alpha: float = 0.0,
                              temperature: float = 1.0) -> Callable[..., Any]:
  """`train.train_step_factory = @distillation_step_factory()`: make_distill_train_step
  with the run's teacher (checked against the student's vocabulary) and mix.

  Args:
    teacher_checkpoint_path: TEACHER_CHECKPOINT_PATH, a fine-tuned teacher (a run's
      MODEL_DIR, a checkpoint_N folder or a parameter checkpoint), or {task: that}.
    mixture_or_task_name: the task whose vocabulary the student uses.
    alpha: weight of the gold cross entropy; 1 - alpha goes to T^2 * KL to the teacher.
    temperature: T of both softmaxes in the KL.
  """
  teacher, _ = run_teacher(teacher_checkpoint_path, mixture_or_task_name)
  return functools.partial(make_distill_train_step, teacher=teacher, alpha=alpha,
                           temperature=temperature)


@gin.configurable
def distillation_task(*, mixture_or_task_name: str = gin.REQUIRED,
                      teacher_checkpoint_path: Any = gin.REQUIRED,
                      model_dir: str = gin.REQUIRED,
                      task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                      batch_size: int = gin.REQUIRED, transfer_data: Optional[str] = None,
                      transfer_split: str = "train", transfer_inputs_prefix: str = "",
                      max_transfer_examples: Optional[int] = None) -> str:
  """`train.mixture_or_task_name = @distillation_task()`: what the student trains on.

  Without transfer_data, mixture_or_task_name itself (its gold targets); with it, a task
  over the teacher's greedy labels of the transfer inputs (made once per MODEL_DIR, see
  `label_transfer_data`).

  Args:
    transfer_data: a task, mixture, text corpus or glob of text files (`transfer_inputs`).
    transfer_split, transfer_inputs_prefix, max_transfer_examples: which split, a prefix
      for text-file lines, and at most how many transfer inputs.
    batch_size: the teacher's labelling batch.
  """
  teacher, vocabulary = run_teacher(teacher_checkpoint_path, mixture_or_task_name)
  if not transfer_data:
    return mixture_or_task_name
  labels = label_transfer_data(
      model_dir=model_dir, teacher=teacher, transfer_data=transfer_data, split=transfer_split,
      vocabulary=vocabulary, task_feature_lengths=task_feature_lengths, batch_size=batch_size,
      inputs_prefix=transfer_inputs_prefix, max_examples=max_transfer_examples)
  return register_labelled_task(labels, vocabulary=vocabulary)


# ------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  train_lib.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
  """`recast distill --gin_file=models/compact/L4_H256.gin --gin_file=runs/distill.gin
  --gin.TEACHER_CHECKPOINT_PATH=... --gin.MODEL_DIR=...`: `recast train` that insists on
  runs/distill.gin (which `recast train` and `recast sweep` can use as well)."""
  run_files = ", ".join(args.gin_file) or "no gin files"
  gin_config.parse_run_flags(args, command="distill", finalize=False)
  if gin_config.macro_value("TEACHER_CHECKPOINT_PATH", None) is None:
    raise gin_config.GinConfigError(
        f"recast distill needs the run file runs/distill.gin (got {run_files}), after the "
        "student's model file: --gin_file=models/compact/L4_H256.gin "
        "--gin_file=runs/distill.gin")
  gin_config.require_macros(REQUIRED_MACROS, run_file=run_files)
  gin.finalize()
  if not partitioning.initialize_distributed() and args.multiprocess:
    jax.distributed.initialize()
  train_lib.train()
  return 0
