"""Where results go: `MODEL_DIR/metrics.jsonl` (one JSON object per value) and TensorBoard.

Each row is {"step", "split", "task", "metric", "value"}; `split` is "train", "validation",
"test", ...; `task` is a task or mixture name ("" for run-wide values such as the learning
rate). TensorBoard event files go to `MODEL_DIR/<split>/` with tags `task/metric`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional

from recast import atomic_files

METRICS_FILE = "metrics.jsonl"
# Rows of a majority-class baseline (trainer.evaluation.Evaluator.majority_baseline), step 0.
BASELINE_SPLIT = "baseline"


class MetricsWriter:
  """Appends rows to metrics.jsonl and scalars to TensorBoard (process 0 only writes)."""

  def __init__(self, model_dir: str | os.PathLike, *, tensorboard: bool = True,
               enabled: bool = True, purge_step: Optional[int] = None):
    """`purge_step`: the first step this writer writes after a resume; TensorBoard then
    drops the earlier event files' values from that step on, so no step shows twice."""
    self.model_dir = Path(model_dir)
    self.enabled = enabled
    self.tensorboard = tensorboard
    self.purge_step = purge_step
    self._tb_writers: dict = {}

  @property
  def path(self) -> Path:
    return self.model_dir / METRICS_FILE

  def write(self, step: int, split: str, task: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled or not metrics:
      return
    rows = [{"step": int(step), "split": split, "task": task, "metric": name,
             "value": _to_json_number(value)} for name, value in sorted(metrics.items())]
    atomic_files.append_jsonl(self.path, rows)
    if self.tensorboard:
      writer = self._tb_writer(split)
      for name, value in sorted(metrics.items()):
        tag = f"{task}/{name}" if task else name
        writer.add_scalar(tag, float(value), int(step))
      writer.flush()

  def _tb_writer(self, split: str):
    if split not in self._tb_writers:
      from tensorboardX import SummaryWriter  # writes TensorBoard event files, no TF needed
      self._tb_writers[split] = SummaryWriter(str(self.model_dir / split),
                                              purge_step=self.purge_step)
    return self._tb_writers[split]

  def close(self) -> None:
    for writer in self._tb_writers.values():
      writer.close()
    self._tb_writers.clear()


def _to_json_number(value) -> Optional[float]:
  value = float(value)
  return value if math.isfinite(value) else None


def read_metrics(model_dir: str | os.PathLike) -> list[dict]:
  """All rows of MODEL_DIR/metrics.jsonl (a torn last line from a kill is skipped)."""
  path = Path(model_dir) / METRICS_FILE
  return atomic_files.read_jsonl(path) if path.exists() else []


def drop_rows_after(model_dir: str | os.PathLike, step: int) -> int:
  """Removes metrics.jsonl rows past `step` (the checkpoint a run restarts from; -1 for a
  run starting from scratch: every row) and a torn last line, atomically; they are written
  again by the run. Returns how many rows were removed."""
  path = Path(model_dir) / METRICS_FILE
  if not path.exists():
    return 0
  rows = read_metrics(model_dir)
  kept = [r for r in rows if r["step"] <= step]
  torn = path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
  if len(kept) != len(rows) or torn:  # a torn last line would glue onto the next append
    atomic_files.write_jsonl(path, kept)
  return len(rows) - len(kept)
