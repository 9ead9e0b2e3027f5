"""`python -m benchmarks.startup`: how long the `recast` command takes to answer.

Each case is a fresh `recast` process, timed from start to exit, with the output cache
(recast/output_cache.py) cold (RECAST_NO_OUTPUT_CACHE=1: what every call cost before it) and
warm (the same command run once before), interleaved; and a 3-step T5.1.1-tiny run's time
to its first step as `recast train` prints it ("first step done N s after start"), with
JAX's compilation cache cold (a fresh RECAST_CACHE_DIR) and warm.

    python -m benchmarks.startup                 # ~3 min on 2 cores
    python -m benchmarks.startup --repetitions=1 --skip_train
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.tables import table

CASES = {
    "recast --help": ["--help"],
    "recast train --help": ["train", "--help"],
    "recast tasks list": ["tasks", "list"],
    "gin error (misspelt file)": ["train", "--gin_file=models/t5_1_1/tyni.gin",
                                  "--gin_file=runs/finetune.gin"],
}
FIRST_STEP = re.compile(r"first step done ([0-9.]+) s after start")


def _recast(args, env, cwd) -> tuple[float, str]:
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "recast", *args], env=env, cwd=cwd,
                        capture_output=True, text=True)
  return time.perf_counter() - start, done.stdout + done.stderr


def command_times(repetitions: int, cache_root: Path, cwd: Path) -> list[list]:
  env = {**os.environ, "RECAST_CACHE_DIR": str(cache_root)}
  cold_env = {**env, "RECAST_NO_OUTPUT_CACHE": "1"}
  rows = []
  for name, args in CASES.items():
    _recast(args, env, cwd)  # fills the output cache (and warms the page cache)
    cold, warm = [], []
    for _ in range(repetitions):
      cold.append(_recast(args, cold_env, cwd)[0])
      warm.append(_recast(args, env, cwd)[0])
    rows.append([name, statistics.median(cold), statistics.median(warm),
                 statistics.median(cold) / max(statistics.median(warm), 1e-9)])
  return rows


def _task_file(folder: Path) -> Path:
  rows = [{"text": f"the movie was {w}", "label": "pos" if w in ("good", "fine") else "neg"}
          for w in ("good", "bad", "fine", "awful") * 16]
  for split in ("train", "validation"):
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  path = folder / "tasks.yaml"
  path.write_text("tasks:\n  - name: startup_toy\n    files: {train: train.jsonl, validation: "
                  "validation.jsonl}\n    inputs: \"sentiment: {text}\"\n    targets: \"{label}\"\n"
                  "    labels: [pos, neg]\n")
  return path


def first_step_times(cache_root: Path, work: Path) -> list[list]:
  tasks = _task_file(work)
  rows = []
  for label, cache in (("cold (empty compilation cache)", work / "fresh_cache"),
                       ("warm (same shapes compiled before)", work / "fresh_cache")):
    model_dir = work / f"run_{len(rows)}"
    seconds, out = _recast([
        "train", f"--tasks_file={tasks}", "--gin_file=models/t5_1_1/tiny.gin",
        "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.MIXTURE_OR_TASK_NAME='startup_toy'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.TRAIN_STEPS=3",
        "--gin.BATCH_SIZE=8", "--gin.VOCABULARY='byte'"],
        {**os.environ, "RECAST_CACHE_DIR": str(cache)}, work)
    found = FIRST_STEP.search(out)
    if not found:
      raise RuntimeError(f"no 'first step done' line from recast train:\n{out[-2000:]}")
    rows.append([label, float(found.group(1)), seconds])
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repetitions", type=int, default=3)
  parser.add_argument("--skip_train", action="store_true")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    rows = command_times(args.repetitions, work / "cache", work)
    print(f"recast start-up, {os.cpu_count()} cores, median of {args.repetitions} "
          "(seconds, whole process)")
    print(table(["command", "cold", "warm", "cold/warm"],
                [[n, f"{c:.2f}", f"{w:.2f}", f"{r:.1f}x"] for n, c, w, r in rows]))
    if not args.skip_train:
      print("\nT5.1.1-tiny, 3 steps, batch 8, 32/8 tokens: time to the first step")
      print(table(["compilation cache", "first step (s after start)", "whole run (s)"],
                  [[n, f"{f:.1f}", f"{t:.1f}"] for n, f, t in first_step_times(
                      work / "cache", work)]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
