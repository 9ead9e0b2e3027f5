"""recast's checkpoints: parameter checkpoints, a run's training checkpoints, and the one
resolver of the paths users give (INITIAL_CHECKPOINT_PATH, CHECKPOINT_PATH, fusion inputs).

A parameter checkpoint (`recast convert`, `recast fuse average`) is a folder:

    DST/
      recast_checkpoint.json   {"format": 1, "model": T5Config fields, "vocabulary": ...}
      params/                  orbax PyTree checkpoint of the float32 parameter tree
      spiece.model             the SentencePiece vocabulary (optional)

It is written under a temporary name and renamed into place, so a folder that exists is
complete. A run's training checkpoints (orbax; T5X's `checkpoint_<step>` names) are

    MODEL_DIR/checkpoint_1000/
      state/   the train state pytree (step, params, opt_state), sharded as in training
      meta/    JSON: {"format", "step", "data_position", "model", "vocabulary", ...}

`data_position` is the number of global batches the run has consumed, so a resumed run
skips exactly that many and continues the data stream: no batch repeated or skipped.
`resolve` turns any of the three forms a user may name (a parameter checkpoint, a run's
MODEL_DIR, one `checkpoint_N` folder) into checkpoint folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from recast import atomic_files, errors
from recast.trainer.network import T5Config

METADATA_FILE = "recast_checkpoint.json"
PARAMS_DIR = "params"
VOCAB_FILE = "spiece.model"
FORMAT_VERSION = 1
STEP_PREFIX = "checkpoint"
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
# A ColD Fusion run's folder (recast.jobs.fusion): FUSION_SETTINGS_FILE, and per finished
# round round_R/DONE with the round's average in round_R/fused (a parameter checkpoint).
FUSION_SETTINGS_FILE = "fusion.json"
FUSION_ROUND_DONE = "DONE"
_ROUND_DIR = re.compile(r"^round_(\d+)$")


class CheckpointError(errors.UserError):
  """A checkpoint that cannot be read or does not fit the model; says what to do."""


# ------------------------------------------------------------------------------------------
# Parameter checkpoints


def is_param_checkpoint(path: str | os.PathLike) -> bool:
  return (Path(path) / METADATA_FILE).is_file()


def save_param_checkpoint(path: str | os.PathLike, params: Any, *, config: T5Config,
                          vocabulary_file: Optional[str | os.PathLike] = None,
                          vocabulary: Optional[dict] = None,
                          step: Optional[int] = None) -> Path:
  """Writes `params` (a tree of arrays, boxes allowed) and metadata to a new folder `path`.

  `vocabulary` describes the vocabulary (e.g. {"type": "sentencepiece", "extra_ids": 100,
  "size": 32128}); `vocabulary_file` is copied to `spiece.model`; `step` (recorded when
  given) is the training step the parameters come from.
  """
  params = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
  with atomic_files.staged_dir(path) as tmp:
    ocp.PyTreeCheckpointer().save((tmp / PARAMS_DIR).resolve(), params)  # orbax: absolute
    meta = {"format": FORMAT_VERSION, "model": config.to_dict(), "vocabulary": vocabulary}
    if step is not None:
      meta["step"] = int(step)
    if vocabulary_file:
      shutil.copyfile(vocabulary_file, tmp / VOCAB_FILE)
    atomic_files.write_json(tmp / METADATA_FILE, meta)
  return Path(path)


def read_metadata(path: str | os.PathLike) -> dict:
  meta_path = Path(path) / METADATA_FILE
  if not meta_path.is_file():
    raise CheckpointError(
        f"{path} is not a recast parameter checkpoint (no {METADATA_FILE}); convert a "
        "Hugging Face model with `recast convert hf-to-recast SRC DST` or point at a "
        "folder written by recast")
  meta = json.loads(meta_path.read_text())
  if meta.get("format") != FORMAT_VERSION:
    raise CheckpointError(f"{meta_path}: format {meta.get('format')} is not supported "
                          f"(this recast reads format {FORMAT_VERSION})")
  return meta


def load_config(path: str | os.PathLike) -> T5Config:
  return T5Config(**read_metadata(path)["model"])


def vocabulary_file(path: str | os.PathLike) -> Optional[Path]:
  vocab = Path(path) / VOCAB_FILE
  return vocab if vocab.is_file() else None


def load_params(path: str | os.PathLike) -> Any:
  """Restores the parameter tree as numpy float32 arrays."""
  read_metadata(path)
  restored = ocp.PyTreeCheckpointer().restore(Path(path).resolve() / PARAMS_DIR)
  return jax.tree_util.tree_map(np.asarray, restored)


def check_params_match(params: Any, expected: Any, *, source: str) -> None:
  """Raises CheckpointError listing parameters whose names or shapes differ from `expected`.

  `expected` may hold arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).
  """
  got = {_key(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
  want = {_key(k): tuple(v.shape) for k, v in
          jax.tree_util.tree_leaves_with_path(nn.unbox(expected))}
  problems = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
  problems += [f"unexpected {k}" for k in sorted(got.keys() - want.keys())]
  problems += [f"{k}: checkpoint {got[k]} vs model {want[k]}"
               for k in sorted(want.keys() & got.keys()) if tuple(got[k]) != want[k]]
  if problems:
    shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8
                                       else "")
    raise CheckpointError(
        f"checkpoint {source} does not fit the model: {shown}. Use the model gin file the "
        "checkpoint was trained with (its recast_checkpoint.json lists the config)")


def _key(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


# ------------------------------------------------------------------------------------------
# A run's training checkpoints


def _handlers() -> dict:
  return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class RunCheckpoints:
  """Saves and restores the training checkpoints in `model_dir`.

  Args:
    model_dir: the run's folder (MODEL_DIR).
    keep: how many of the newest checkpoints to keep (None keeps all).
    async_save: write in a background thread while training continues; default: on
      accelerators, off on CPU.
  """

  def __init__(self, model_dir: str | os.PathLike, *, keep: Optional[int] = None,
               async_save: Optional[bool] = None):
    if async_save is None:
      async_save = jax.default_backend() != "cpu"
    self.model_dir = Path(model_dir).resolve()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, step_prefix=STEP_PREFIX, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.model_dir, options=options,
                                          item_handlers=_handlers())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, meta: dict) -> None:
    """Saves `state` (a pytree of jax arrays) and `meta` (JSON) as checkpoint `step`.

    `meta` should hold `data_position`, `model` (T5Config.to_dict()) and `vocabulary`.
    """
    meta = {"format": FORMAT_VERSION, "step": int(step), **meta}
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores checkpoint `step` into the structure, shapes and shardings of
    `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with `.sharding`)."""
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def wait(self) -> None:
    """Blocks until an asynchronous save has been committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
  """Steps of the committed training checkpoints in `model_dir` (oldest first).

  orbax writes a checkpoint under a temporary name and renames it to `checkpoint_N` once
  complete, so every `checkpoint_N` folder was committed; one damaged since is still listed
  (`find_resumable` sets it aside), so no later save collides with it."""
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    return []
  return sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(model_dir))
                if m and (model_dir / m.group(0)).is_dir())


def missing_files(step_dir: str | os.PathLike) -> list[str]:
  """The files every training checkpoint has that `step_dir` lacks (checked before orbax
  reads it: a read of a checkpoint without its manifest prints tracebacks from orbax's
  threads)."""
  step_dir = Path(step_dir)
  required = ["meta/metadata", "state/_METADATA"]
  if any(step_dir.glob("state/ocdbt.process_*")) or not (step_dir / "state").is_dir():
    required.append("state/manifest.ocdbt")
  return [name for name in required if not (step_dir / name).is_file()]


def read_meta(step_dir: str | os.PathLike) -> dict:
  """The JSON metadata saved with one training checkpoint folder (checkpoint_N)."""
  handler = ocp.Checkpointer(ocp.JsonCheckpointHandler())
  return handler.restore(Path(step_dir).resolve() / "meta")


def saved_param_shapes(step_dir: str | os.PathLike) -> dict:
  """{path: shape} tree of the `params` saved in a training checkpoint (no data read)."""
  handler = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  tree = handler.metadata(Path(step_dir).resolve() / "state").item_metadata.tree
  return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                                tree["params"])


def check_compatible(step_dir: str | os.PathLike, *, expected_params: Any,
                     vocabulary: Optional[dict]) -> dict:
  """Raises CheckpointError when a training checkpoint's parameter shapes or vocabulary
  differ from the model's; returns its metadata. Reads no array data."""
  meta = read_meta(step_dir)
  check_vocabulary(meta.get("vocabulary"), vocabulary, source=str(step_dir))
  shapes = saved_param_shapes(step_dir)
  check_params_match(shapes, expected_params, source=str(step_dir))
  return meta


def find_resumable(model_dir: str | os.PathLike, *, expected_params: Any,
                   vocabulary: Optional[dict], exclude: Sequence[int] = ()
                   ) -> tuple[Optional[int], Optional[dict], list[tuple[int, str]]]:
  """(step, metadata) of the newest checkpoint in `model_dir` whose metadata and parameter
  layout read completely, walking back past damaged ones, and [(step, why)] of each one
  passed over (newest first); (None, None, skipped) when none is readable.

  A checkpoint that reads but does not fit the model or vocabulary is not damage: its
  CheckpointError is raised (the run's flags are wrong, not the checkpoint). Reads no array
  data (`restore_train_state` does, and a failure there is handled the same way)."""
  skipped = []
  for step in reversed(checkpoint_steps(model_dir)):
    if step in exclude:
      continue
    step_dir = Path(model_dir) / f"{STEP_PREFIX}_{step}"
    missing = missing_files(step_dir)
    if missing:
      skipped.append((step, f"missing {', '.join(missing)}"))
      continue
    try:
      meta = read_meta(step_dir)
      shapes = saved_param_shapes(step_dir)
    except Exception as e:  # orbax/tensorstore/json raise many types for a damaged file
      skipped.append((step, damage_reason(e)))
      continue
    check_vocabulary(meta.get("vocabulary"), vocabulary, source=str(step_dir))
    check_params_match(shapes, expected_params, source=str(step_dir))
    return step, meta, skipped
  return None, None, skipped


def damage_reason(error: BaseException) -> str:
  """One line saying why a checkpoint did not read (the first line of the error)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def set_aside(model_dir: str | os.PathLike, step: int, reason: str) -> Path:
  """Renames a damaged `checkpoint_N` to `checkpoint_N.damaged` (kept for a look, out of the
  way of the run that saves step N again) and says so on stderr."""
  source = Path(model_dir) / f"{STEP_PREFIX}_{step}"
  target = source.with_name(source.name + ".damaged")
  n = 1
  while target.exists():
    n += 1
    target = source.with_name(f"{source.name}.damaged{n}")
  os.replace(source, target)
  print(f"warning: {source} is damaged ({reason}); moved it to {target.name} and resuming "
        "from the checkpoint before it", file=sys.stderr, flush=True)
  return target


def restore_train_state(model_dir: str | os.PathLike, step: int, abstract_state: Any) -> Any:
  """Reads checkpoint `step`'s train state into the structure, shapes and shardings of
  `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with `.sharding`)."""
  step_dir = (Path(model_dir) / f"{STEP_PREFIX}_{step}").resolve()
  with _orbax_errors_left_to_the_caller(), ocp.StandardCheckpointer() as checkpointer:
    # Every array read here, so damaged data raises now, inside the caller's handler.
    return jax.block_until_ready(checkpointer.restore(step_dir / "state", abstract_state))


# A failed restore's sibling reads: coroutines of orbax's array (de)serialization.
_ORBAX_READS = os.path.join("orbax", "checkpoint", "_src", "serialization", "")


def _from_orbax_reads(error: Optional[BaseException], *files: str) -> bool:
  frames = traceback.extract_tb(error.__traceback__) if error is not None else []
  return any(_ORBAX_READS in f for f in files) or any(_ORBAX_READS in f.filename
                                                       for f in frames)


class _DropOrbaxErrors(logging.Filter):
  """Drops orbax's ERROR records: its own logs (absl), and asyncio's "Task exception was
  never retrieved" for the sibling read tasks of a failed restore (logged whenever such a
  task is garbage collected, which can be long after the restore returned)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    if record.name == "asyncio":
      error = record.exc_info[1] if record.exc_info else None
      # "future: <Task finished name=... coro=<async_deserialize() done, defined at FILE:N>"
      defined = re.findall(r"coro=<.*?defined at (.+?):\d+>", record.getMessage())
      return not _from_orbax_reads(error, *defined)
    return "orbax" not in record.pathname


_ORBAX_ERRORS = _DropOrbaxErrors()


def _read_into_closed_loop(unraisable) -> bool:
  """asyncio's "Event loop is closed" from `call_soon_threadsafe`, raised in no Python
  caller (`object` None): a tensorstore read completing, in its own thread, into the event
  loop a failed restore has closed. Reported through the unraisable hook as a bare
  traceback, during the restore or after it."""
  error = unraisable.exc_value
  if (unraisable.object is not None or not isinstance(error, RuntimeError)
      or "Event loop is closed" not in str(error)):
    return False
  return any(f.name == "call_soon_threadsafe" and f.filename.endswith(
      os.path.join("asyncio", "base_events.py"))
             for f in traceback.extract_tb(error.__traceback__))


def _unraisable_hook_without_orbax(hook):
  """`sys.unraisablehook` that passes over orbax's read coroutines closed while raising (a
  failed restore's sibling reads, "Exception ignored in: <coroutine ...>") and reads
  completing into its closed event loop (`_read_into_closed_loop`), and hands on the rest."""

  def hook_without_orbax(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if not (_from_orbax_reads(unraisable.exc_value, getattr(code, "co_filename", ""))
            or _read_into_closed_loop(unraisable)):
      hook(unraisable)

  hook_without_orbax.passes_over_orbax = True
  return hook_without_orbax


@contextlib.contextmanager
def _orbax_errors_left_to_the_caller():
  """While restoring: orbax's own ERROR logs (with tracebacks, from its worker threads) are
  dropped; the error itself still raises, and a damaged checkpoint is then reported in one
  line (`set_aside`). A failed restore's sibling reads are reported at no fixed time: when
  they complete into its closed event loop (while it is still raising, or later) and when
  their tasks are collected. So from the first restore on, the process drops asyncio's and
  the unraisable hook's reports of orbax's reads (nothing else)."""
  logging.getLogger("asyncio").addFilter(_ORBAX_ERRORS)  # a set: added once
  if not getattr(sys.unraisablehook, "passes_over_orbax", False):
    sys.unraisablehook = _unraisable_hook_without_orbax(sys.unraisablehook)
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_ORBAX_ERRORS)
  try:
    yield
  except BaseException:
    gc.collect()  # collects the failed restore's tasks now, while absl's filter is on
    raise
  finally:
    absl_logger.removeFilter(_ORBAX_ERRORS)


def check_vocabulary(saved: Optional[dict], current: Optional[dict], *, source: str) -> None:
  """Raises a UserError when the vocabulary a checkpoint was trained with (its saved
  `tasks.vocabularies.describe`) is not the task's; unknown on either side: accepted."""
  if saved and current:
    # Imported here: recast.tasks registers every built-in task on import (seconds), which
    # `recast convert` and `fuse average` never need.
    from recast.tasks import vocabularies
    vocabularies.check_compatible(saved, current, what=f"checkpoint {source}")


def load_initial_params(path: str | os.PathLike, *, expected_params: Any,
                        vocabulary: Optional[dict]) -> Any:
  """Parameters for INITIAL_CHECKPOINT_PATH as numpy float32 arrays.

  `path` is anything `resolve` takes (its newest checkpoint). Raises CheckpointError
  (nothing is written) when it holds no checkpoint or does not fit the model
  (`expected_params`: the model's parameter tree or its `jax.eval_shape`).
  """
  ref = resolve(path, what="INITIAL_CHECKPOINT_PATH")[-1]
  if ref.is_param_checkpoint:
    meta = read_metadata(ref.folder)
    check_vocabulary(meta.get("vocabulary"), vocabulary, source=str(ref.folder))
    params = load_params(ref.folder)
    check_params_match(params, expected_params, source=str(ref.folder))
    return params
  check_compatible(ref.folder, expected_params=expected_params, vocabulary=vocabulary)
  handler = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  state = handler.restore(ref.array_dir)
  return jax.tree_util.tree_map(np.asarray, state["params"])


def store_run_vocabulary(model_dir: str | os.PathLike, vocabulary: dict) -> Optional[Path]:
  """Copies a run's SentencePiece model (`vocabulary`: its `describe`) to
  MODEL_DIR/spiece.model, so its checkpoints carry it wherever the run folder goes; None for
  a byte vocabulary. An existing copy with the same sha256 is kept."""
  source = vocabulary.get("path")
  if not source:
    return None
  target = Path(model_dir) / VOCAB_FILE
  if target.is_file() and _sha256(target) == vocabulary.get("sha256"):
    return target
  with open(source, "rb") as f:  # local path or anything open() reads
    data = f.read()
  atomic_files.write_bytes(target, data)
  return target


def _sha256(path: Path) -> str:
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# The one resolver


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """One checkpoint folder: a parameter checkpoint or a run's `checkpoint_N`."""
  step: int
  folder: Path
  is_param_checkpoint: bool

  @property
  def meta(self) -> dict:
    """Its JSON metadata (model config, vocabulary, ...)."""
    return read_metadata(self.folder) if self.is_param_checkpoint else read_meta(self.folder)

  @property
  def vocabulary_file(self) -> Optional[Path]:
    """The SentencePiece model it carries: its own spiece.model, else its run's."""
    folders = [self.folder] if self.is_param_checkpoint else [self.folder, self.folder.parent]
    return next((f / VOCAB_FILE for f in folders if (f / VOCAB_FILE).is_file()), None)

  @property
  def array_dir(self) -> Path:
    """The orbax PyTree folder holding its arrays."""
    return (self.folder / (PARAMS_DIR if self.is_param_checkpoint else "state")).resolve()

  @property
  def params_prefix(self) -> tuple[str, ...]:
    """Keys from the PyTree's root to the parameter tree (a train state nests `params`)."""
    return () if self.is_param_checkpoint else ("params",)


def fused_rounds(fusion_dir: str | os.PathLike) -> list[int]:
  """The finished rounds of a FUSION_DIR (round 0: the base), ascending."""
  rounds = []
  for child in Path(fusion_dir).iterdir():
    match = _ROUND_DIR.match(child.name)
    if (match and (child / FUSION_ROUND_DONE).is_file()
        and is_param_checkpoint(child / "fused")):
      rounds.append(int(match.group(1)))
  return sorted(rounds)


def is_step_dir(path: str | os.PathLike) -> bool:
  """True for one training checkpoint folder (`checkpoint_N` with state/ and meta/)."""
  path = Path(path)
  return (path / "state").is_dir() and (path / "meta").is_dir()


def resolve(path: str | os.PathLike, *, mode: str = "latest",
            what: str = "the checkpoint path") -> list[CheckpointRef]:
  """The checkpoint folders `path` names, oldest first: a parameter checkpoint (its step
  from the metadata, else 0), one `checkpoint_N` folder, a run's MODEL_DIR (its newest
  checkpoint with mode="latest", every one with mode="all"), or a ColD Fusion FUSION_DIR
  (its finished rounds' fused models, step = round: the last one with mode="latest").

  Raises CheckpointError naming `what` (e.g. "CHECKPOINT_PATH") when `path` holds none.
  """
  if mode not in ("all", "latest"):
    raise CheckpointError(f"{what}: mode={mode!r}; use 'all' or 'latest'")
  path = Path(path)
  if is_param_checkpoint(path):
    return [CheckpointRef(int(read_metadata(path).get("step", 0)), path, True)]
  if is_step_dir(path):
    return [CheckpointRef(int(read_meta(path)["step"]), path, False)]
  if (path / FUSION_SETTINGS_FILE).is_file():
    rounds = fused_rounds(path)
    if not rounds:
      raise CheckpointError(f"{what} {path} is a ColD Fusion folder with no finished round "
                            "yet: run `recast fuse` to the end of a round first")
    rounds = rounds if mode == "all" else rounds[-1:]
    return [CheckpointRef(r, path / f"round_{r}" / "fused", True) for r in rounds]
  steps = checkpoint_steps(path)
  if not steps:
    raise CheckpointError(
        f"{what} {path} holds no checkpoint: point it at a run's MODEL_DIR, one of its "
        f"{STEP_PREFIX}_N folders, or a parameter checkpoint (with {METADATA_FILE}, e.g. "
        "from `recast convert`)")
  steps = steps if mode == "all" else steps[-1:]
  return [CheckpointRef(s, path / f"{STEP_PREFIX}_{s}", False) for s in steps]
