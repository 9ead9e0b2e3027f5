"""Packing on real fine-tuning data: how much of a packed batch is real tokens, and how many
real (non-padding) tokens per second recast trains on with packing, against Hugging Face
padding each batch to its longest example.

Worked example (rows of 8 input slots, three examples of 5, 3 and 4 tokens):

  packed (seqio EncDecFeatureConverter)   [a a a a a b b b] [c c c c 0 0 0 0]  12/16 = 75%
  padded to the longest (HF collator)     [a a a a a] [b b b 0 0] [c c c c 0]  12/15 = 80%

Packing wins when lengths vary and many examples share a row; padding to the longest is
fine when a batch's examples have similar lengths.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from benchmarks import measure
from benchmarks.train_step import HFTrainer, RecastTrainer
from recast.trainer import input_pipeline
from recast.trainer.network import T5Config

GLUE4 = ("glue_rte", "glue_mrpc", "glue_cola", "glue_sst2")
GLUE4_MIXTURE = "bench_glue4"


def register_glue4_mixture() -> str:
  """`bench_glue4`: RTE, MRPC, CoLA and SST-2, examples-proportional (T5's mixing, no cap);
  lengths range from 2-word CoLA sentences to 300-token RTE pairs."""
  import seqio
  from recast.mixtures import rates
  if GLUE4_MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(GLUE4_MIXTURE, list(GLUE4),
                              default_rate=rates.examples_proportional())
  return GLUE4_MIXTURE


def non_padding(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
  """Real-token and slot counts of one batch of encoder-decoder features.

  Returns {"inputs_tokens", "inputs_slots", "targets_tokens", "targets_slots", "examples"}.
  """
  inputs, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
  examples, _ = input_pipeline.batch_counts(batch)
  return {"inputs_tokens": int(np.sum(inputs > 0)), "inputs_slots": int(inputs.size),
          "targets_tokens": int(np.sum(targets > 0)), "targets_slots": int(targets.size),
          "examples": examples}


def _fractions(totals: Mapping[str, int], rows: int) -> dict[str, float]:
  tokens = totals["inputs_tokens"] + totals["targets_tokens"]
  slots = totals["inputs_slots"] + totals["targets_slots"]
  return {"inputs_non_padding": measure.ratio(totals["inputs_tokens"], totals["inputs_slots"]),
          "targets_non_padding": measure.ratio(totals["targets_tokens"],
                                               totals["targets_slots"]),
          "non_padding": measure.ratio(tokens, slots),
          "examples_per_row": measure.ratio(totals["examples"], rows)}


def _sum_counts(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, int]:
  totals: dict[str, int] = {}
  for batch in batches:
    for key, value in non_padding(batch).items():
      totals[key] = totals.get(key, 0) + value
  return totals


def packed_batches(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                   batch_size: int, num_batches: int, seed: int = 0,
                   packer: str = "first_fit") -> list[dict[str, np.ndarray]]:
  """The first `num_batches` batches `recast train` would see (recast.trainer.input_pipeline.train_dataset,
  packed by `packer`, shuffled)."""
  ds = input_pipeline.train_dataset(mixture_or_task_name=mixture_or_task_name,
                               task_feature_lengths=task_feature_lengths,
                               batch_size=batch_size, seed=seed, pack=True, packer=packer)
  return list(ds.take(num_batches).as_numpy_iterator())


def padded_batches(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                   batch_size: int, num_batches: int, seed: int = 0
                   ) -> list[dict[str, np.ndarray]]:
  """Hugging Face style: `batch_size` examples per batch, each batch padded to its longest
  inputs and longest targets (examples truncated to `task_feature_lengths` first).

  Returns recast feature names, int32 [batch_size, longest in the batch].
  """
  import seqio
  mixture_or_task = seqio.get_mixture_or_task(mixture_or_task_name)
  ds = mixture_or_task.get_dataset(dict(task_feature_lengths), split="train", shuffle=True,
                                   seed=seed, num_epochs=None)
  ds = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
  ds = ds.padded_batch(batch_size, drop_remainder=True)
  out = []
  for batch in ds.take(num_batches).as_numpy_iterator():
    targets = batch["targets"].astype(np.int32)
    decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    out.append({"encoder_input_tokens": batch["inputs"].astype(np.int32),
                "decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
                "decoder_loss_weights": (targets > 0).astype(np.int32)})
  return out


def packing_efficiency(*, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                       batch_size: int = 32, num_batches: int = 50,
                       padded_batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
  """Non-padding fractions of recast's packed batches (`batch_size` rows) and of HF-style
  batches of `padded_batch_size` examples padded to the longest, `num_batches` of each.

  Returns {"packed": {inputs_non_padding, targets_non_padding, non_padding,
  examples_per_row} (recast's first-fit packer), "seqio_packed" (seqio's packer, T5X's),
  "padded_to_longest": {the same}, and the setup}.
  """
  packed, seqio_packed = (
      packed_batches(mixture_or_task_name=mixture_or_task_name,
                     task_feature_lengths=task_feature_lengths, batch_size=batch_size,
                     num_batches=num_batches, seed=seed, packer=packer)
      for packer in ("first_fit", "seqio"))
  padded = padded_batches(mixture_or_task_name=mixture_or_task_name,
                          task_feature_lengths=task_feature_lengths,
                          batch_size=padded_batch_size, num_batches=num_batches, seed=seed)
  return {"mixture_or_task_name": mixture_or_task_name,
          "task_feature_lengths": dict(task_feature_lengths), "rows_per_batch": batch_size,
          "padded_batch_size": padded_batch_size, "num_batches": num_batches,
          "packed": _fractions(_sum_counts(packed), batch_size * len(packed)),
          "seqio_packed": _fractions(_sum_counts(seqio_packed), batch_size * len(seqio_packed)),
          "padded_to_longest": _fractions(_sum_counts(padded),
                                          padded_batch_size * len(padded))}


def useful_token_throughput(*, config: T5Config, mixture_or_task_name: str,
                            task_feature_lengths: Mapping[str, int], batch_size: int,
                            num_batches: int = 4, repetitions: int = 4, device: str = "cpu",
                            log=print) -> dict[str, Any]:
  """Real tokens (inputs + targets, no padding) trained on per second: recast with packed
  batches of `batch_size` rows against HF with batches of the same number of *examples*
  (so both make the same updates), padded to the longest. Batches are read first, then
  the steps are timed interleaved, cycling over the `num_batches` batches of each side.

  Returns {"recast_packed": {...}, "hf_padded": {...}, "ratio"} where each side has
  useful_tokens_per_s, slots_per_s (padding included), examples_per_s, median_s.
  """
  packed = packed_batches(mixture_or_task_name=mixture_or_task_name,
                          task_feature_lengths=task_feature_lengths, batch_size=batch_size,
                          num_batches=num_batches)
  per_row = _fractions(_sum_counts(packed), batch_size * len(packed))["examples_per_row"]
  examples_per_batch = max(1, round(per_row * batch_size))
  padded = padded_batches(mixture_or_task_name=mixture_or_task_name,
                          task_feature_lengths=task_feature_lengths,
                          batch_size=examples_per_batch, num_batches=num_batches)
  sides = {"recast_packed": (RecastTrainer(config), packed),
           "hf_padded": (HFTrainer(config, device=device, dtype=config.dtype), padded)}
  contenders, counts = {}, {}
  for name, (trainer, batches) in sides.items():
    device_batches = [trainer.device_batch(b) for b in batches]
    cursor = iter(range(10**9))
    contenders[name] = (lambda t=trainer, d=device_batches, c=cursor:
                        t.step(d[next(c) % len(d)]))
    counts[name] = _sum_counts(batches)
    log(f"  {name}: {len(batches)} batches of {batches[0]['encoder_input_tokens'].shape}")
  # Every batch once untimed (HF shapes vary; XLA compiles once), then timed passes.
  seconds = measure.interleaved_seconds(contenders, repetitions=repetitions * num_batches,
                                        warmup=num_batches)
  result: dict[str, Any] = {"mixture_or_task_name": mixture_or_task_name,
                            "task_feature_lengths": dict(task_feature_lengths),
                            "rows_per_packed_batch": batch_size,
                            "examples_per_padded_batch": examples_per_batch,
                            "model": config.to_dict()}
  for name, times in seconds.items():
    c, n = counts[name], len(sides[name][1])
    per_batch_s = float(np.sum(times)) / len(times)  # total time: batch sizes differ
    useful = (c["inputs_tokens"] + c["targets_tokens"]) / n
    slots = (c["inputs_slots"] + c["targets_slots"]) / n
    result[name] = dict(measure.summarize(times), mean_s=per_batch_s,
                        useful_tokens_per_s=useful / per_batch_s,
                        slots_per_s=slots / per_batch_s,
                        examples_per_s=c["examples"] / n / per_batch_s,
                        non_padding=useful / slots)
  result["ratio"] = measure.ratio(result["recast_packed"]["useful_tokens_per_s"],
                                  result["hf_padded"]["useful_tokens_per_s"])
  return result
