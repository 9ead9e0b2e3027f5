"""The input pipeline of training: a task's packed batches as seqio reads them, the check
that TASK_FEATURE_LENGTHS fits the data, and the counts the progress log reports.

Batches are seqio.EncDecFeatureConverter's features (T5X's): encoder_input_tokens,
decoder_input_tokens, decoder_target_tokens, decoder_loss_weights and, packed,
encoder/decoder_segment_ids and _positions, int32 [batch, length].
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import seqio

from recast import errors
from recast.tasks import packing, pretraining

TRUNCATION_SAMPLE = 1000


class TruncationError(errors.UserError):
  """More examples than allowed would be cut by TASK_FEATURE_LENGTHS."""


def train_dataset(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                  batch_size: int, split: str = "train", shuffle: bool = True, seed: int = 0,
                  use_cached: bool = False, pack: bool = True, shard_index: int = 0,
                  num_shards: int = 1, start_batch: int = 0, packer: str = "first_fit"):
  """This process's endless stream of training batches, as a tf.data.Dataset.

  Args:
    batch_size: this process's rows per batch (the global batch / process count).
    shard_index, num_shards: this process's shard of the examples (seqio.ShardInfo).
    start_batch: batches already consumed (a checkpoint's `data_position`); skipped, so a
      resumed run sees exactly the batches a run without interruption would.
    packer: "first_fit" (`tasks.packing`: several open rows, less padding) or "seqio"
      (`seqio.utils.trim_and_pack_dataset`, T5X's packing). Same features either way.
  Returns:
    Batches of seqio.EncDecFeatureConverter's features, int32 [batch_size, length]:
    encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights
    and, packed, encoder/decoder_segment_ids and _positions. Deterministic for a seed.
  """
  converter = packing.feature_converter(packer, pack=pack)
  ds = seqio.get_dataset(
      mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
      dataset_split=split, use_cached=use_cached, shuffle=shuffle, num_epochs=None,
      seed=seed, shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
      feature_converter=converter, verbose=False)
  ds = ds.batch(batch_size, drop_remainder=True)
  if start_batch:
    ds = ds.skip(start_batch)
  return ds.prefetch(2)


def truncation_report(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                      split: str = "train", use_cached: bool = False,
                      num_examples: int = TRUNCATION_SAMPLE) -> dict[str, dict]:
  """How many of the first `num_examples` examples (shared out over the mixture's tasks) are
  longer than the feature lengths.

  Returns {feature: {"fraction": truncated fraction, "longest": longest length seen,
  "p99": 99th-percentile length}} for each feature in `task_feature_lengths`.
  """
  # Objective tasks (span corruption, ...) cut their own examples to fit; the others are
  # read with no sequence length, so nothing trims them before they are measured.
  measured = [t for t in seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))
              if pretraining.parse_derived_task_name(t.name) is None and split in t.splits]
  lengths: dict[str, list[int]] = {name: [] for name in task_feature_lengths}
  for task in measured:
    ds = task.get_dataset(None, split=split, use_cached=use_cached, shuffle=False,
                          num_epochs=1, trim_output_features=False)
    for example in ds.take(max(1, num_examples // len(measured))).as_numpy_iterator():
      for name in lengths:
        lengths[name].append(int(np.size(example[name])))
  report = {}
  for name, seen in lengths.items():
    seen = np.asarray(seen or [0])
    report[name] = {"fraction": float(np.mean(seen > task_feature_lengths[name])),
                    "longest": int(seen.max()), "p99": int(np.ceil(np.percentile(seen, 99)))}
  return report


def check_truncation(report: Mapping[str, dict], *, task_feature_lengths: Mapping[str, int],
                     max_fraction: float, name: str) -> Optional[str]:
  """A warning when examples get truncated; TruncationError above `max_fraction`."""
  cut = {k: v for k, v in report.items() if v["fraction"] > 0}
  if not cut:
    return None
  current = {k: task_feature_lengths[k] for k in report}
  suggested = {k: max(current[k], _round_up(v["p99"], 8)) for k, v in report.items()}
  if suggested != current:
    hint = "to keep 99% whole"
  else:  # 99% fit already: what would keep every example seen whole
    hint = "99% already fit; to keep all whole"
    suggested = {k: max(current[k], _round_up(v["longest"], 8)) for k, v in report.items()}
  detail = "; ".join(f"{k}: {v['fraction']:.1%} longer than {task_feature_lengths[k]} "
                     f"(longest {v['longest']}, 99% fit in {v['p99']})" for k, v in cut.items())
  message = (f"{name}: examples will be truncated by TASK_FEATURE_LENGTHS ({detail}); {hint}, "
             f"set --gin.TASK_FEATURE_LENGTHS=\"{suggested}\"")
  if max(v["fraction"] for v in cut.values()) > max_fraction:
    raise TruncationError(f"{message}. (More than {max_fraction:.0%} truncated is an error; "
                        "accept it with --gin.train.max_truncated_fraction=1.0)")
  return message


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def batch_counts(batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
  """(examples, non-padding tokens) in a batch; packed rows hold several examples."""
  targets = batch["decoder_target_tokens"]
  if "decoder_segment_ids" in batch:
    examples = int(np.sum(np.max(batch["decoder_segment_ids"], axis=1)))
  else:
    examples = int(np.sum(np.any(targets > 0, axis=1)))
  tokens = int(np.sum(batch["encoder_input_tokens"] > 0) + np.sum(targets > 0))
  return examples, tokens
