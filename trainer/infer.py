"""`recast infer`: predictions or target log-likelihoods for a task split or a file of inputs.

Inputs come from a task's split (MIXTURE_OR_TASK_NAME) or from INPUT_FILE: plain text, one
input per line, or JSONL with an "inputs" field (and "targets" for scoring). Output is one
JSONL file, written atomically, one row per input in input order:

    predict: {"inputs": "mrpc sentence1: ...", "prediction": "equivalent", "score": -0.11}
             (task split: also "target" and "postprocessed_prediction")
    score:   {"inputs": "...", "targets": "equivalent", "score": -0.11}   (log-likelihood)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Mapping, Optional

import gin
import jax
import numpy as np
import seqio

from recast import atomic_files, errors, gin_config
from recast.mixtures import lookup
from recast.trainer import checkpoints, decoding, evaluation, network, partitioning

MODES = ("predict", "score")
REQUIRED_MACROS = ("CHECKPOINT_PATH", "TASK_FEATURE_LENGTHS", "INFER_OUTPUT_DIR")


class InferError(errors.UserError):
  """Inference cannot run as configured; the message says what to change."""


def read_input_file(path: str | Path) -> list[dict[str, str]]:
  """[{"inputs": ..., optional "targets": ...}] from a .jsonl file or a text file (one input
  per line; blank lines skipped)."""
  path = Path(path)
  if not path.is_file():
    raise InferError(f"INPUT_FILE {path} does not exist")
  rows = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    if path.suffix != ".jsonl":
      rows.append({"inputs": line})
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise InferError(f"{path}:{number} is not JSON ({e}); give one JSON object per line, "
                       "or a .txt file with one input per line") from e
    if not isinstance(row, dict) or "inputs" not in row:
      raise InferError(f"{path}:{number} has no \"inputs\" field")
    rows.append({k: str(v) for k, v in row.items() if k in ("inputs", "targets")})
  return rows



def _model_features(inputs: list[int], targets: list[int], lengths: Mapping[str, int]
                    ) -> dict[str, np.ndarray]:
  """EncDecFeatureConverter's unpacked features for one example (token ids cut to the
  feature lengths, padded with 0)."""
  def padded(ids, length):
    ids = list(ids)[:length]
    return np.array(ids + [0] * (length - len(ids)), np.int32)
  targets = padded(targets, lengths["targets"])
  return {"encoder_input_tokens": padded(inputs, lengths["inputs"]),
          "decoder_target_tokens": targets,
          "decoder_input_tokens": np.concatenate([[0], targets[:-1]]).astype(np.int32),
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def _text_ids(text: str, vocabulary: seqio.Vocabulary) -> list[int]:
  return vocabulary.encode(text) + [vocabulary.eos_id]


def _task_rows(task: seqio.Task, *, split: str, lengths: Mapping[str, int],
               num_examples: Optional[int]) -> tuple[list[dict], list[dict]]:
  """(text rows, task examples) of a task split, in order."""
  if split not in task.splits:
    raise InferError(f"task {task.name!r} has no split {split!r}; available: "
                     f"{', '.join(task.splits)}")
  ds = task.get_dataset(dict(lengths), split=split, shuffle=False, num_epochs=1)
  ds = ds.take(num_examples) if num_examples else ds
  examples = list(ds.as_numpy_iterator())
  rows = [{"inputs": evaluation.example_text(ex, "inputs", task.output_features),
           "targets": evaluation.example_text(ex, "targets", task.output_features)}
          for ex in examples]
  return rows, examples


def _batched(features: list[dict[str, np.ndarray]], batch_size: int):
  """(real rows, batch) of `batch_size` rows; the last one padded with zero rows."""
  for start in range(0, len(features), batch_size):
    chunk = features[start:start + batch_size]
    yield evaluation.pad_batch({k: np.stack([f[k] for f in chunk]) for k in chunk[0]},
                               batch_size)


@gin.configurable
def infer(*, checkpoint_path: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          output_dir: str = gin.REQUIRED, mixture_or_task_name: Optional[str] = None,
          input_file: Optional[str] = None, split: str = "validation", mode: str = "predict",
          batch_size: int = 32, num_examples: Optional[int] = None,
          decoding_options: Optional[decoding.DecodingOptions] = None) -> Path:
  """Writes `<output_dir>/<task or input file>-<split>-<mode>.jsonl`; returns its path.

  Args:
    checkpoint_path: a parameter checkpoint, a checkpoint_N folder or a run (its newest).
    task_feature_lengths: {"inputs": N, "targets": M}; inputs are cut to N tokens and
      predictions to M.
    mixture_or_task_name: a task whose `split` is read (and whose vocabulary is used).
    input_file: instead of a task: .txt (one input per line) or .jsonl ("inputs",
      "targets"); the vocabulary is the checkpoint's.
    mode: "predict" (decode) or "score" (log-likelihood of the given targets).
  """
  if mode not in MODES:
    raise InferError(f"INFER_MODE={mode!r}: use one of {', '.join(MODES)}")
  if (mixture_or_task_name is None) == (input_file is None):
    raise InferError("set exactly one of MIXTURE_OR_TASK_NAME (predict for a task split) "
                     "and INPUT_FILE (a .txt or .jsonl file of inputs)")
  lengths = dict(task_feature_lengths)
  ref = checkpoints.resolve(checkpoint_path, what="CHECKPOINT_PATH")[-1]
  with evaluation.checkpoint_vocabulary(ref) as vocabulary:
    examples = None
    if mixture_or_task_name is not None:
      task = lookup.get_mixture_or_task(mixture_or_task_name)
      if not isinstance(task, seqio.Task):
        raise InferError(f"{mixture_or_task_name} is a mixture; `recast infer` reads one task "
                         f"(one of {', '.join(t.name for t in seqio.get_subtasks(task))})")
      rows, examples = _task_rows(task, split=split, lengths=lengths, num_examples=num_examples)
      name = f"{task.name}-{split}"
    else:
      rows = read_input_file(input_file)[:num_examples]
      if mode == "score" and any("targets" not in r for r in rows):
        raise InferError(f"score mode needs targets: give {input_file} as JSONL with "
                         "\"inputs\" and \"targets\" fields")
      name = Path(input_file).stem
    if not rows:
      raise InferError(f"no inputs in {input_file or mixture_or_task_name}")
  config, params = evaluation.load_checkpoint(ref, vocabulary=vocabulary)
  config = config.with_vocab_size(vocabulary.vocab_size)
  partitioner = partitioning.Partitioner()
  params = evaluation.shard_params(params, config, partitioner)
  model = network.Transformer(config)
  batch_size = -(-batch_size // partitioner.num_data_shards) * partitioner.num_data_shards
  if examples is not None:  # the task's own tokens (objectives' inputs are not plain text)
    features = [_model_features(ex["inputs"], ex["targets"], lengths) for ex in examples]
  else:
    features = [_model_features(_text_ids(r["inputs"], vocabulary),
                                _text_ids(r.get("targets", ""), vocabulary), lengths)
                for r in rows]

  if mode == "score":
    score = evaluation.partitioned(decoding.make_score_fn(model), partitioner)
    scores = [s for n, b in _batched(features, batch_size) for s in score(params, b)[:n]]
    out_rows = [dict(r, score=float(s)) for r, s in zip(rows, scores)]
  else:
    options = decoding_options or decoding.DecodingOptions()
    predict = evaluation.partitioned(decoding.make_predict_fn(model, options), partitioner)
    rng = jax.random.PRNGKey(options.seed)
    out_rows = []
    for i, (n, batch) in enumerate(_batched(features, batch_size)):
      tokens, scores = predict(params, batch, jax.random.fold_in(rng, i))
      for r in range(n):
        row = rows[len(out_rows)]
        prediction = vocabulary.decode([int(t) for t in tokens[r]])
        out = {"inputs": row["inputs"], "prediction": prediction, "score": float(scores[r])}
        if examples is not None:
          out["target"] = row["targets"]
          out["postprocessed_prediction"] = evaluation.to_json_value(task.postprocess_fn(
              prediction, example=examples[len(out_rows)], is_target=False))
        out_rows.append(out)
  path = Path(output_dir) / f"{name}-{mode}.jsonl"
  if jax.process_index() == 0:
    atomic_files.write_jsonl(path, out_rows)
    print(f"wrote {len(out_rows)} rows to {path}", flush=True)
  return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
  del parser  # everything is gin: --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=...


def main(args: argparse.Namespace) -> int:
  """`recast infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=... ...`."""
  gin_config.parse_run_flags(args, command="infer", required_macros=REQUIRED_MACROS,
                             default_gin_files=["runs/infer.gin"])
  infer()
  return 0
