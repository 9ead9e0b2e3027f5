"""Training checkpoints of a run: model, optimizer and data position under MODEL_DIR.

Layout (orbax; T5X's `checkpoint_<step>` names):

    MODEL_DIR/checkpoint_1000/
      state/   the train state pytree (step, params, opt_state), sharded as in training
      meta/    JSON: {"format", "step", "data_position", "model", "vocabulary", ...}

`data_position` is the number of global batches the run has consumed, so a resumed run
skips exactly that many and continues the data stream: no batch repeated or skipped.
Parameter checkpoints (`trainer.checkpoints`, e.g. from `recast convert`) are the other
kind of `INITIAL_CHECKPOINT_PATH`; `load_initial_params` reads either.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from recast.trainer import checkpoints
from recast.trainer.checkpoints import CheckpointError

STEP_PREFIX = "checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")


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
  """Steps of the committed training checkpoints in `model_dir` (oldest first)."""
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    return []
  steps = []
  for child in model_dir.iterdir():
    match = _STEP_DIR.match(child.name)
    if match and (child / "meta").is_dir() and (child / "state").is_dir():
      steps.append(int(match.group(1)))
  return sorted(steps)


def _step_dir(path: Path) -> Optional[Path]:
  """The checkpoint folder `path` names: itself (checkpoint_N) or a run's newest one."""
  if _STEP_DIR.match(path.name) and (path / "state").is_dir():
    return path
  steps = checkpoint_steps(path)
  return path / f"{STEP_PREFIX}_{steps[-1]}" if steps else None


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
  checkpoints.check_params_match(shapes, expected_params, source=str(step_dir))
  return meta


def check_vocabulary(saved: Optional[dict], current: Optional[dict], *, source: str) -> None:
  """Raises a UserError when the vocabulary a checkpoint was trained with (its saved
  `tasks.vocabularies.describe`) is not the task's; unknown on either side: accepted."""
  if saved and current:
    from recast.tasks import vocabularies
    vocabularies.check_compatible(saved, current, what=f"checkpoint {source}")


def load_initial_params(path: str | os.PathLike, *, expected_params: Any,
                        vocabulary: Optional[dict]) -> Any:
  """Parameters for INITIAL_CHECKPOINT_PATH as numpy float32 arrays.

  `path` is a parameter checkpoint (trainer.checkpoints format, e.g. from `recast convert`),
  a run's MODEL_DIR (its newest checkpoint) or one `checkpoint_N` folder. Raises
  CheckpointError (nothing is written) when it is none of these or does not fit the model
  (`expected_params`: the model's parameter tree or its `jax.eval_shape`).
  """
  path = Path(path)
  if checkpoints.is_param_checkpoint(path):
    meta = checkpoints.read_metadata(path)
    check_vocabulary(meta.get("vocabulary"), vocabulary, source=str(path))
    params = checkpoints.load_params(path)
    checkpoints.check_params_match(params, expected_params, source=str(path))
    return params
  step_dir = _step_dir(path) if path.is_dir() else None
  if step_dir is None:
    raise CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {path} holds no checkpoint: point it at a parameter "
        f"checkpoint (with {checkpoints.METADATA_FILE}, e.g. from `recast convert`), a run's "
        f"MODEL_DIR or one of its {STEP_PREFIX}_N folders")
  check_compatible(step_dir, expected_params=expected_params, vocabulary=vocabulary)
  handler = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  state = handler.restore(step_dir.resolve() / "state")
  return jax.tree_util.tree_map(np.asarray, state["params"])
