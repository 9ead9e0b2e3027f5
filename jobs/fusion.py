"""ColD Fusion (Don-Yehiya et al. 2022): rounds of parallel fine-tuning and weight averaging.

Each round, C contributors (tasks sampled from a pool) fine-tune the round's shared model
on their own task, each a `recast train` subprocess from INITIAL_CHECKPOINT_PATH = the
shared model; the next shared model is the average of their weights. Averaging is also a
checkpoint operation on its own, `recast fuse average CKPT... --out DST`:

    fused[name] = sum_i w_i * ckpt_i[name] / sum_i w_i      (float64 sums, stored float32)

read one tensor at a time from every input (orbax partial restore), so memory stays at
about one output model plus one tensor per input.

A fusion run's folder (FUSION_DIR):

    fusion.json                 the settings (checked when a run is resumed)
    events.jsonl                contributor_started / contributor_done / round_done
    metrics.jsonl               per round (step = round) and task: the fused model's scores
    scores.md, scores.csv, scores.png   the same, as a table and a plot (round 0 = base)
    round_0/fused/              the base as a parameter checkpoint; round_0/DONE
    round_R/contributors/TASK/  a contributor's MODEL_DIR; DONE when it finished
    round_R/fused/              the round's average (parameter checkpoint)
    round_R/scores.json, DONE   the fused model's validation scores; the round finished

A killed run started again with the same flags skips finished rounds and, in the first
unfinished one, finished contributors (a half-trained contributor resumes from its own
checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import seqio

from recast import atomic_files, errors, gin_config, metrics_writer, run_lock
from recast.jobs import launcher
from recast.mixtures import lookup
from recast.tasks import vocabularies
from recast.trainer import checkpoints, convert, evaluation, network
from recast.trainer.network import T5Config

RULES = ("mean", "examples")
# T5Config fields that change no parameter shape: they may differ between fused models.
NON_ARCHITECTURE_FIELDS = ("dropout_rate", "dtype", "attention_implementation")
DONE = checkpoints.FUSION_ROUND_DONE
SETTINGS_FILE = checkpoints.FUSION_SETTINGS_FILE
EVENTS_FILE = "events.jsonl"
SCORES_FILE = "scores.json"
INFERENCE_EXCLUDED = ("loss", "token_accuracy")
# score_rows' columns after the tasks: (column, the per-task key averaged over tasks).
SUMMARY_COLUMNS = (("average", "score"), ("rank_average", "rank_score"), ("loss", "loss"),
                   ("token_accuracy", "token_accuracy"))


class FusionError(errors.UserError):
  """Checkpoints that cannot be fused or a fusion run that cannot go on; says what to do."""


# ------------------------------------------------------------------------------------------
# Averaging checkpoints, one tensor at a time


@dataclasses.dataclass(frozen=True)
class FusionInput:
  """One checkpoint to average: where its parameter arrays are and what it records.

  `array_dir` is an orbax PyTree folder; the parameters sit under `prefix` in it (("params",)
  in a training checkpoint's train state, () in a parameter checkpoint).
  """
  path: Path
  array_dir: Path
  prefix: tuple[str, ...]
  meta: dict

  @property
  def config(self) -> dict:
    return self.meta.get("model") or {}

  @property
  def vocabulary(self) -> Optional[dict]:
    return self.meta.get("vocabulary")


def open_checkpoint(path: str | os.PathLike) -> FusionInput:
  """A parameter checkpoint, a run's MODEL_DIR (its newest checkpoint), a checkpoint_N or a
  FUSION_DIR (its last fused round)."""
  try:
    ref = checkpoints.resolve(path, what="fusion input")[-1]
  except checkpoints.CheckpointError as e:
    raise FusionError(str(e)) from None
  return FusionInput(Path(path), ref.array_dir, ref.params_prefix, ref.meta)


def param_structs(source: FusionInput) -> dict[str, jax.ShapeDtypeStruct]:
  """{"encoder/layers_0/attention/query": ShapeDtypeStruct} of a checkpoint; reads no data."""
  handler = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  tree = handler.metadata(source.array_dir).item_metadata.tree
  for key in source.prefix:
    tree = tree[key]
  return {"/".join(str(getattr(k, "key", k)) for k in path):
          jax.ShapeDtypeStruct(tuple(m.shape), m.dtype)
          for path, m in jax.tree_util.tree_leaves_with_path(tree)}


def read_param(source: FusionInput, name: str, struct: jax.ShapeDtypeStruct) -> np.ndarray:
  """Restores the one parameter `name` (e.g. "decoder/logits_dense") as numpy."""
  keys = (*source.prefix, *name.split("/"))
  item: Any = struct
  restore_args: Any = ocp.RestoreArgs(restore_type=np.ndarray)
  for key in reversed(keys):
    item, restore_args = {key: item}, {key: restore_args}
  handler = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  restored = handler.restore(source.array_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  for key in keys:
    restored = restored[key]
  return np.asarray(restored)


def check_fusable(sources: Sequence[FusionInput]) -> dict[str, jax.ShapeDtypeStruct]:
  """Raises FusionError unless all checkpoints share architecture, parameter shapes and
  vocabulary; returns the common {name: struct}."""
  if not sources:
    raise FusionError("no checkpoints to average; give at least one")
  first = sources[0]
  structs = param_structs(first)
  for other in sources[1:]:
    got = param_structs(other)
    problems = [f"{n}: {tuple(structs[n].shape)} vs {tuple(got[n].shape)}"
                for n in sorted(structs.keys() & got.keys())
                if tuple(structs[n].shape) != tuple(got[n].shape)]
    problems += [f"only in {first.path}: {n}" for n in sorted(structs.keys() - got.keys())]
    problems += [f"only in {other.path}: {n}" for n in sorted(got.keys() - structs.keys())]
    if problems:
      shown = "; ".join(problems[:6]) + (f"; ... {len(problems) - 6} more"
                                         if len(problems) > 6 else "")
      raise FusionError(
          f"cannot fuse {first.path} and {other.path}: their parameters differ ({shown}). "
          "Only models of one architecture (same model gin file) can be averaged")
    _check_same_vocabulary(first, other)
    arch = lambda c: {k: v for k, v in c.items() if k not in NON_ARCHITECTURE_FIELDS}
    if first.config and other.config and arch(first.config) != arch(other.config):
      diff = sorted(k for k in arch(first.config).keys() | arch(other.config).keys()
                    if first.config.get(k) != other.config.get(k))
      raise FusionError(
          f"cannot fuse {first.path} and {other.path}: their model configs differ in "
          f"{', '.join(diff)}; average models trained from one model gin file")
  return structs


def _check_same_vocabulary(a: FusionInput, b: FusionInput) -> None:
  va, vb = a.vocabulary or {}, b.vocabulary or {}
  diff = [f"{k} {va[k]!r} vs {vb[k]!r}" for k in ("type", "size", "extra_ids", "sha256")
          if va.get(k) is not None and vb.get(k) is not None and va[k] != vb[k]]
  if diff:
    raise FusionError(
        f"cannot fuse {a.path} and {b.path}: they use different vocabularies "
        f"({'; '.join(diff)}); a token id must mean the same in every averaged model")


def fusion_weights(weights: Optional[Sequence[float]], count: int) -> np.ndarray:
  """float64 [count] weights (uniform when None); FusionError for bad ones."""
  if weights is None:
    return np.ones(count, np.float64)
  w = np.asarray(weights, np.float64)
  if w.shape != (count,):
    raise FusionError(f"{len(w)} weights for {count} checkpoints; give one per checkpoint")
  if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise FusionError(f"weights {list(weights)} must be finite, >= 0 and not all 0")
  return w


def average_checkpoints(paths: Sequence[str | os.PathLike], *, out: str | os.PathLike,
                        weights: Optional[Sequence[float]] = None,
                        params_regex: Optional[str] = None) -> Path:
  """Writes the (weighted) average of checkpoints `paths` as a new parameter checkpoint.

  Args:
    paths: parameter checkpoints, runs' MODEL_DIRs or checkpoint_N folders; all of one
      architecture and vocabulary (else FusionError, nothing written).
    out: the new folder (written under a temporary name, renamed into place).
    weights: one per checkpoint (e.g. training examples); None: the plain mean.
    params_regex: average only parameters whose name ("encoder/layers_0/mlp/wi_0")
      matches (re.search); the others are copied from the first checkpoint.
  Returns:
    `out`. Each averaged tensor is sum_i(w_i x_i) / sum_i(w_i) computed in float64 and
    stored as float32, so N copies of one model average to that model bit for bit.
  """
  out = Path(out)
  if out.exists():
    raise FusionError(f"{out} already exists; choose a new --out or remove it first")
  sources = [open_checkpoint(p) for p in paths]
  structs = check_fusable(sources)
  w = fusion_weights(weights, len(sources))
  pattern = _compile(params_regex)
  selected = [n for n in structs if pattern is None or pattern.search(n)]
  if not selected:
    raise FusionError(f"--params {params_regex!r} matches no parameter; names look like "
                      f"{', '.join(sorted(structs)[:3])}")
  fused: dict = {}
  for name, struct in structs.items():
    if name in selected:
      total = np.zeros(struct.shape, np.float64)
      for source, weight in zip(sources, w):
        total += weight * read_param(source, name, struct).astype(np.float64)
      value = (total / w.sum()).astype(np.float32)
    else:
      value = read_param(sources[0], name, struct).astype(np.float32)
    _set(fused, name.split("/"), value)
  first = sources[0]
  config = T5Config(**first.config) if first.config else _config_error(first.path)
  vocab_file = checkpoints.vocabulary_file(first.path) if not first.prefix else None
  return checkpoints.save_param_checkpoint(out, fused, config=config,
                                           vocabulary=first.vocabulary,
                                           vocabulary_file=vocab_file)


def _compile(regex: Optional[str]) -> Optional[re.Pattern]:
  if not regex:
    return None
  try:
    return re.compile(regex)
  except re.error as e:
    raise FusionError(f"--params {regex!r} is not a regular expression: {e}") from e


def _set(tree: dict, keys: Sequence[str], value: np.ndarray) -> None:
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def _config_error(path: Path):
  raise FusionError(f"{path} records no model config; fuse checkpoints written by recast")


# ------------------------------------------------------------------------------------------
# Rounds


def sample_contributors(pool: Sequence[str], *, round_index: int, count: Optional[int],
                        seed: int) -> list[str]:
  """The round's contributors: `count` tasks drawn from `pool` without replacement with a
  generator seeded by (seed, round), in pool order; all of the pool when count is None."""
  if count is None or count == len(pool):
    return list(pool)
  rng = np.random.default_rng([seed, round_index])
  chosen = set(rng.choice(len(pool), size=count, replace=False).tolist())
  return [task for i, task in enumerate(pool) if i in chosen]


def check_settings(*, pool: Sequence[str], rounds: int, contributors_per_round: Optional[int],
                   contributor_steps: int, fusion_rule: str) -> None:
  if not pool:
    raise FusionError("the contributor pool is empty; set --gin.CONTRIBUTOR_POOL=\"['glue_rte', "
                      "'glue_mrpc', ...]\" (at least one task)")
  duplicates = sorted({t for t in pool if list(pool).count(t) > 1})
  if duplicates:
    raise FusionError(f"the contributor pool lists {', '.join(duplicates)} more than once")
  if contributors_per_round is not None and not 1 <= contributors_per_round <= len(pool):
    raise FusionError(
        f"CONTRIBUTORS_PER_ROUND={contributors_per_round} but the pool has {len(pool)} "
        f"tasks; use 1..{len(pool)} (None: every task each round)")
  if rounds < 1 or contributor_steps < 1:
    raise FusionError(f"ROUNDS={rounds} and CONTRIBUTOR_STEPS={contributor_steps} must be >= 1")
  if fusion_rule not in RULES:
    raise FusionError(f"FUSION_RULE={fusion_rule!r}: use one of {', '.join(RULES)}")


def is_done(folder: str | os.PathLike) -> bool:
  """Whether `folder` (a round, a contributor's or an eval-base run's MODEL_DIR) holds the
  DONE marker written once it finished; resumed jobs skip such folders."""
  return (Path(folder) / DONE).is_file()


def _event(fusion_dir: Path, event: str, **fields: Any) -> None:
  atomic_files.append_jsonl(fusion_dir / EVENTS_FILE,
                            [{"event": event, "time": time.time(), **fields}])


def architecture_bindings(config: T5Config) -> list[str]:
  """T5Config gin bindings that make a `recast train` run build `config`'s architecture
  (vocab_size stays with the task vocabulary; dropout and dtype with the run files)."""
  skip = set(NON_ARCHITECTURE_FIELDS) | {"vocab_size"}
  return [f"T5Config.{k}={v!r}" for k, v in config.to_dict().items() if k not in skip]


def pool_mixture_name(pool: Sequence[str]) -> str:
  """Registers (once) an equal-rate seqio mixture of the pool; returns its name."""
  if len(pool) == 1:
    return pool[0]
  name = "cold_fusion_pool_" + hashlib.sha1(",".join(pool).encode()).hexdigest()[:10]
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, list(pool), default_rate=1.0)
  return name


def task_scores(results: Mapping[str, Mapping[str, float]], tasks: Sequence[str]
                ) -> dict[str, dict[str, float]]:
  """Per task: its Evaluator metrics plus `score`, the mean of its decoded metrics
  (accuracy, f1, ...; not loss or token_accuracy), as T5's benchmark averages do, and
  `rank_score`, the mean of its rank-classification metrics (rank_accuracy, ...) when it
  has them."""
  scores = {}
  for task in tasks:
    values = dict(results.get(task, {}))
    metrics = [k for k in values if k not in INFERENCE_EXCLUDED]
    decoded = [values[k] for k in metrics if not k.startswith(evaluation.RANK_PREFIX)]
    ranked = [values[k] for k in metrics if k.startswith(evaluation.RANK_PREFIX)]
    values["score"] = float(np.mean(decoded)) if decoded else float("nan")
    if ranked:
      values["rank_score"] = float(np.mean(ranked))
    scores[task] = values
  return scores


@gin.configurable
def cold_fusion(*, fusion_dir: str = gin.REQUIRED, pool: Sequence[str] = gin.REQUIRED,
                task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                rounds: int = 5, contributors_per_round: Optional[int] = None,
                contributor_steps: int = 1000, base_checkpoint: Optional[str] = None,
                fusion_rule: str = "mean", fusion_params: Optional[str] = None,
                seed: int = 0, eval_num_examples: Optional[int] = None,
                eval_batch_size: int = 32, parallel: str = "auto",
                ray_address: Optional[str] = None,
                train_flags: Optional[launcher.TrainFlags] = None) -> list[dict]:
  """Runs (or resumes) ColD Fusion; returns the per-round score rows (round 0: the base).

  Args:
    fusion_dir: FUSION_DIR (layout in the module docstring).
    pool: the contributor tasks (CONTRIBUTOR_POOL).
    task_feature_lengths: for contributors' training and the rounds' evaluation.
    rounds, contributors_per_round: R rounds of C contributors (None: the whole pool).
    contributor_steps: fine-tuning steps per contributor (its TRAIN_STEPS).
    base_checkpoint: None (random init with SEED), a parameter checkpoint, a run's
      MODEL_DIR or a Hugging Face T5 folder (converted).
    fusion_rule: "mean" (uniform) or "examples" (weighted by train examples per task).
    fusion_params: a regex; average only matching parameters, keep the rest from the
      round's shared model.
    seed: contributor sampling, base init and contributors' SEED (seed + round).
    eval_num_examples, eval_batch_size: the fused models' validation on every pool task.
    parallel, ray_address: see launcher.run_jobs.
    train_flags: the driver's gin flags every contributor's `recast train` gets; set by
      `main`.
  """
  pool = list(pool)
  check_settings(pool=pool, rounds=rounds, contributors_per_round=contributors_per_round,
                 contributor_steps=contributor_steps, fusion_rule=fusion_rule)
  _compile(fusion_params)
  fusion_dir = Path(fusion_dir).resolve()
  train_flags = train_flags or launcher.TrainFlags(gin_files=())
  tasks = {name: lookup.get_mixture_or_task(name) for name in pool}
  vocabulary = lookup.output_vocabulary(tasks[pool[0]])
  for name, task in tasks.items():
    if "train" not in task.splits:
      raise FusionError(f"pool task {name} has no train split ({', '.join(task.splits)})")
  settings = {"pool": pool, "contributors_per_round": contributors_per_round,
              "contributor_steps": contributor_steps, "base_checkpoint": base_checkpoint,
              "fusion_rule": fusion_rule, "fusion_params": fusion_params, "seed": seed,
              "task_feature_lengths": dict(task_feature_lengths)}
  _check_resume_settings(fusion_dir, settings)
  with run_lock.hold(fusion_dir, what="FUSION_DIR"):  # one driver per fusion folder
    examples = ({n: _train_examples(t, n) for n, t in tasks.items()}
                if fusion_rule == "examples" else {})
    vocab_description = vocabularies.describe(vocabulary)
    base = prepare_base(fusion_dir / "round_0", base_checkpoint=base_checkpoint,
                         vocabulary=vocabulary, vocab_description=vocab_description, seed=seed)
    config = checkpoints.load_config(base)
    atomic_files.write_json(fusion_dir / SETTINGS_FILE, dict(settings, rounds=rounds))
    evaluator = _RoundEvaluator(pool=pool, task_feature_lengths=task_feature_lengths,
                                config=config, num_examples=eval_num_examples,
                                batch_size=eval_batch_size)
    try:
      _finish_round(fusion_dir, 0, base, evaluator)
      for r in range(1, rounds + 1):
        round_dir = fusion_dir / f"round_{r}"
        if is_done(round_dir):
          continue
        shared = fusion_dir / f"round_{r - 1}" / "fused"
        chosen = sample_contributors(pool, round_index=r, count=contributors_per_round,
                                     seed=seed)
        atomic_files.write_json(round_dir / "contributors.json", chosen)
        _run_contributors(fusion_dir, r, chosen, shared=shared, config=config,
                          train_flags=train_flags, steps=contributor_steps, seed=seed,
                          parallel=parallel, ray_address=ray_address)
        fused = round_dir / "fused"
        if not checkpoints.is_param_checkpoint(fused):
          shutil.rmtree(fused, ignore_errors=True)
          members = [round_dir / "contributors" / t for t in chosen]
          weights = [examples[t] for t in chosen] if examples else None
          if fusion_params:  # unselected parameters: the shared model's (weight 0 first)
            members = [shared, *members]
            weights = [0.0, *(weights or [1.0] * len(chosen))]
          average_checkpoints(members, out=fused, weights=weights,
                              params_regex=fusion_params)
        _finish_round(fusion_dir, r, fused, evaluator)
    finally:
      evaluator.close()
  rows = score_rows(fusion_dir)
  write_score_report(fusion_dir, rows)
  return rows


def _check_resume_settings(fusion_dir: Path, settings: dict) -> None:
  path = fusion_dir / SETTINGS_FILE
  if not path.is_file():
    return
  saved = json.loads(path.read_text())
  changed = sorted(k for k in settings if saved.get(k) != settings[k])
  if changed:
    shown = "; ".join(f"{k}: {saved.get(k)!r} -> {settings[k]!r}" for k in changed)
    raise FusionError(
        f"{fusion_dir} holds a fusion run with other settings ({shown}); resume it with its "
        "own settings (only ROUNDS may change) or choose a new FUSION_DIR")


def _train_examples(task, name: str) -> int:
  count = task.num_input_examples("train")
  if not count:
    raise FusionError(f"FUSION_RULE='examples' needs the number of train examples of {name}, "
                      "which its source does not know; use FUSION_RULE='mean'")
  return int(count)


def prepare_base(round_dir: Path, *, base_checkpoint: Optional[str], vocabulary: Any,
                  vocab_description: dict, seed: int) -> Path:
  """round_0/fused: the base as a parameter checkpoint (random init, a copy of a recast
  checkpoint, or converted from Hugging Face); checks its vocabulary against the pool's."""
  fused = round_dir / "fused"
  if checkpoints.is_param_checkpoint(fused):
    return fused
  if base_checkpoint is None:
    config = T5Config().with_vocab_size(vocabulary.vocab_size)
    params = network.init_params(config, jax.random.PRNGKey(seed))
    return checkpoints.save_param_checkpoint(fused, params, config=config,
                                             vocabulary=vocab_description)
  base = Path(base_checkpoint)
  if (base / convert.CONFIG_FILE).is_file() and not checkpoints.is_param_checkpoint(base):
    convert.hf_to_recast(base, fused)
    source = open_checkpoint(fused)
  else:
    source = open_checkpoint(base)
  config = T5Config(**source.config)
  if config.vocab_size < vocabulary.vocab_size:  # larger: padded, as T5's 32100 -> 32128
    shutil.rmtree(fused, ignore_errors=True)
    raise FusionError(
        f"base checkpoint {base} has vocab_size {config.vocab_size} but the pool's vocabulary "
        f"has {vocabulary.vocab_size} ids; set --gin.VOCABULARY to the base's vocabulary")
  checkpoints.check_vocabulary(source.vocabulary, vocab_description, source=str(base))
  if source.path != fused:
    average_checkpoints([base], out=fused)  # a copy, streamed
  return fused


def _run_contributors(fusion_dir: Path, round_index: int, chosen: Sequence[str], *,
                      shared: Path, config: T5Config, train_flags: launcher.TrainFlags,
                      steps: int,
                      seed: int, parallel: str, ray_address: Optional[str]) -> None:
  jobs = []
  for task in chosen:
    model_dir = fusion_dir / f"round_{round_index}" / "contributors" / task
    if is_done(model_dir):
      continue
    overrides = {"MODEL_DIR": str(model_dir), "MIXTURE_OR_TASK_NAME": task,
                 "INITIAL_CHECKPOINT_PATH": str(shared), "TRAIN_STEPS": steps,
                 "SEED": seed + round_index}
    command = train_flags.command(overrides, bindings=architecture_bindings(config))

    def on_done(task=task, model_dir=model_dir):
      if checkpoints.checkpoint_steps(model_dir)[-1:] != [steps]:
        raise FusionError(f"contributor {task} finished without a checkpoint at step {steps} "
                          f"in {model_dir}; see its output.log")
      atomic_files.write_json(model_dir / DONE, {"task": task, "steps": steps})
      _event(fusion_dir, "contributor_done", round=round_index, task=task)

    on_start = lambda task=task: _event(fusion_dir, "contributor_started", round=round_index,
                                        task=task)
    jobs.append(launcher.TrainJob(command, model_dir / launcher.LOG_FILE, on_start, on_done))
  launcher.run_jobs(jobs, parallel=parallel, ray_address=ray_address)


class _RoundEvaluator:
  """The fused models' validation scores on every pool task (one compiled Evaluator)."""

  def __init__(self, *, pool: Sequence[str], task_feature_lengths: Mapping[str, int],
               config: T5Config, num_examples: Optional[int], batch_size: int):
    self.pool = list(pool)
    self._kwargs = dict(mixture_or_task_name=pool_mixture_name(pool),
                        task_feature_lengths=dict(task_feature_lengths), config=config,
                        num_examples=num_examples, batch_size=batch_size)
    self._evaluator = None

  def evaluate(self, checkpoint: Path, *, round_index: int) -> dict[str, dict[str, float]]:
    if self._evaluator is None:
      self._evaluator = evaluation.Evaluator(**self._kwargs)
    params = checkpoints.load_params(checkpoint)
    return task_scores(self._evaluator.evaluate(params, step=round_index), self.pool)

  def close(self) -> None:
    if self._evaluator is not None:
      self._evaluator.close()


def _finish_round(fusion_dir: Path, round_index: int, fused: Path,
                  evaluator: _RoundEvaluator) -> None:
  """Evaluates the round's fused model, writes its scores and metrics rows, then DONE."""
  round_dir = fusion_dir / f"round_{round_index}"
  if is_done(round_dir):
    return
  scores = evaluator.evaluate(fused, round_index=round_index)
  atomic_files.write_json(round_dir / SCORES_FILE, scores)
  metrics_writer.drop_rows_after(fusion_dir, round_index - 1)
  writer = metrics_writer.MetricsWriter(fusion_dir)
  for task, values in scores.items():
    writer.write(round_index, "validation", task, values)
  average = {"score": float(np.mean([v["score"] for v in scores.values()]))}
  if all("rank_score" in v for v in scores.values()):
    average["rank_score"] = float(np.mean([v["rank_score"] for v in scores.values()]))
  writer.write(round_index, "validation", "average", average)
  writer.close()
  atomic_files.write_json(round_dir / DONE, {"round": round_index})
  _event(fusion_dir, "round_done", round=round_index,
         average=float(np.mean([v["score"] for v in scores.values()])))
  print(f"round {round_index}: " + " ".join(
      f"{t}={v['score']:.2f}" + (f" (rank {v['rank_score']:.2f})" if "rank_score" in v else "")
      for t, v in scores.items()), flush=True)


# ------------------------------------------------------------------------------------------
# Per-round report


def score_rows(fusion_dir: str | os.PathLike) -> list[dict]:
  """[{"round": r, TASK: score, ..., "average": mean score, "loss": mean teacher-forced
  loss, "token_accuracy": its mean}] for every finished round (scores 0-100)."""
  fusion_dir = Path(fusion_dir)
  rows = []
  r = 0
  while is_done(fusion_dir / f"round_{r}"):
    scores = json.loads((fusion_dir / f"round_{r}" / SCORES_FILE).read_text())
    row = {"round": r, **{t: v["score"] for t, v in scores.items()}}
    for name, key in SUMMARY_COLUMNS:
      if name != "rank_average" or all("rank_score" in v for v in scores.values()):
        row[name] = float(np.mean([v.get(key, np.nan) for v in scores.values()]))
    rows.append(row)
    r += 1
  return rows


def write_score_report(fusion_dir: str | os.PathLike, rows: Sequence[dict]) -> None:
  """scores.md, scores.csv and scores.png: the fused model's per-task scores by round."""
  fusion_dir = Path(fusion_dir)
  if not rows:
    return
  summary = [name for name, _ in SUMMARY_COLUMNS if name in rows[0]]
  tasks = [k for k in rows[0] if k != "round" and k not in summary]
  columns = ["round", *tasks, *summary]
  fmt = lambda v: str(v) if isinstance(v, int) else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
  md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  md += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in rows]
  base = rows[0]["average"]
  md += ["", "Scores: each task's mean decoded validation metric (0-100) of the round's "
         "fused model; rank_average: the mean over tasks of their rank-classification "
         "metrics; loss and token_accuracy: teacher-forced, mean over tasks.",
         "Round 0 is the base. Gain of each round's average over the base: " +
         ", ".join(f"round {row['round']}: {row['average'] - base:+.2f}" for row in rows[1:])]
  atomic_files.write_text(fusion_dir / "scores.md", "\n".join(md) + "\n")
  csv = [",".join(columns)] + [",".join(fmt(row[c]) for c in columns) for row in rows]
  atomic_files.write_text(fusion_dir / "scores.csv", "\n".join(csv) + "\n")
  _plot_scores(fusion_dir / "scores.png", rows, [*tasks, "average"])


def _plot_scores(path: Path, rows: Sequence[dict], series: Sequence[str]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  rounds = [row["round"] for row in rows]
  for name in series:
    ax.plot(rounds, [row[name] for row in rows], marker="o",
            linewidth=2.5 if name == "average" else 1.2, label=name)
  ax.set_xlabel("round (0 = base)")
  ax.set_ylabel("validation score")
  ax.set_xticks(rounds)
  ax.set_title("ColD Fusion: fused model per round")
  ax.legend(fontsize="small")
  fig.tight_layout()
  tmp = path.with_name(f".{path.name}.tmp.png")
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("action", nargs="*", metavar="average CKPT...",
                      help="`average CKPT... --out DST` averages checkpoints; without it, "
                      "runs ColD Fusion rounds as the gin files say "
                      "(experiments/cold_fusion.gin)")
  parser.add_argument("--out", help="average: the new parameter checkpoint")
  parser.add_argument("--weights", nargs="+", type=float,
                      help="average: one weight per checkpoint (e.g. training examples)")
  parser.add_argument("--params", metavar="REGEX",
                      help="average: only parameters whose name matches; the rest are the "
                      "first checkpoint's")


def main(args: argparse.Namespace) -> int:
  """`recast fuse average CKPT... --out DST` or `recast fuse --gin_file=... (rounds)`."""
  if args.action:
    if args.action[0] != "average":
      raise FusionError(f"unknown fuse action {args.action[0]!r}; use `recast fuse average "
                        "CKPT... --out DST`, or gin flags alone for ColD Fusion rounds")
    if args.gin_bindings or args.gin_file:
      raise FusionError("`recast fuse average` takes no gin flags")
    if not args.out or len(args.action) < 2:
      raise FusionError("usage: recast fuse average CKPT [CKPT ...] --out DST")
    out = average_checkpoints(args.action[1:], out=args.out, weights=args.weights,
                              params_regex=args.params)
    print(f"wrote {out}")
    return 0
  # Not finalized: MODEL_DIR and MIXTURE_OR_TASK_NAME are set per contributor run.
  gin_files = gin_config.parse_run_flags(
      args, command="fuse", finalize=False, example="--gin_file=models/t5_1_1/small.gin "
      "--gin_file=experiments/cold_fusion.gin")
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # GPUs are contributors'
  cold_fusion(train_flags=launcher.TrainFlags(
      gin_files=gin_files, bindings=args.gin_bindings,
      gin_search_paths=args.gin_search_paths, tasks_files=args.tasks_file))
  return 0
