"""`python -m benchmarks.startup`: how long the `recast` command takes to answer, against an
earlier revision of recast installed side by side.

`--before=REV` (default: the commit before this round's start-up work) is exported with
`git archive`, built into a wheel offline and installed with `pip install --target` into a
temporary folder; its processes run with that folder first on PYTHONPATH, so both versions
share this venv's dependencies. Every case is a fresh process, timed from start to exit (or
to a line of its output), the two versions interleaved:

  commands     `--help`, `train --help`, `tasks list`, a misspelt --gin_file; "now" cold is
               recast with RECAST_NO_OUTPUT_CACHE=1 (recast/output_cache.py off), warm is
               the same command run once before
  first step   a 3-step T5.1.1-tiny run: seconds from process start to its `step 1/3` line,
               with a cold JAX compilation cache (a fresh one) and a warm one

    python -m benchmarks.startup                         # ~5 min on 2 cores
    python -m benchmarks.startup --before=f0a504d --repetitions=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.tables import table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "f0a504d"  # main before the output cache, console and lazy gin checks
CASES = {
    "recast --help": ["--help"],
    "recast train --help": ["train", "--help"],
    "recast tasks list": ["tasks", "list"],
    "gin error (misspelt file)": ["train", "--gin_file=models/t5_1_1/tyni.gin",
                                  "--gin_file=runs/finetune.gin"],
}


def install_revision(rev: str, folder: Path) -> Path:
  """REV's wheel installed (no dependencies) under folder/site; returns that folder."""
  source, dist, site = folder / "source", folder / "dist", folder / "site"
  source.mkdir(parents=True)
  archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                           capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
  pip = [sys.executable, "-m", "pip"]
  subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", str(dist), str(source)], check=True, cwd=folder)
  (wheel,) = dist.glob("recast-*.whl")
  subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                  str(wheel)], check=True, cwd=folder)
  return site


def _env(cache: Path, site: Optional[Path], **extra) -> dict:
  env = {**os.environ, "RECAST_CACHE_DIR": str(cache), **extra}
  if site is not None:
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(":")
  return env


def _seconds(args, env, cwd, *, until: Optional[str] = None) -> float:
  """Wall seconds of `python -m recast ARGS`, to its exit or to its first line holding
  `until`."""
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", "recast", *args], env=env, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  seen = None
  for line in proc.stdout:
    if until and seen is None and until in line:
      seen = time.perf_counter() - start
  proc.wait()
  if until and seen is None:
    raise RuntimeError(f"`recast {' '.join(args)}` printed no line with {until!r}")
  return seen if until else time.perf_counter() - start


def command_rows(repetitions: int, site: Path, work: Path) -> list[list[str]]:
  rows = []
  for name, args in CASES.items():
    now = _env(work / "cache_now", None)
    _seconds(args, now, work)  # fills the output cache (and the page cache)
    _seconds(args, _env(work / "cache_before", site), work)
    before, cold, warm = [], [], []
    for _ in range(repetitions):
      before.append(_seconds(args, _env(work / "cache_before", site), work))
      cold.append(_seconds(args, _env(work / "cache_now", None, RECAST_NO_OUTPUT_CACHE="1"),
                           work))
      warm.append(_seconds(args, now, work))
    b, c, w = (statistics.median(x) for x in (before, cold, warm))
    rows.append([name, f"{b:.2f}", f"{c:.2f}", f"{w:.2f}", f"{b / max(w, 1e-9):.1f}x"])
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


def first_step_rows(site: Path, work: Path) -> list[list[str]]:
  tasks = _task_file(work)
  times = {}
  for version, where in (("before", site), ("now", None)):
    cache = work / f"jax_{version}"
    for kind in ("cold", "warm"):  # the second run finds the first's compilations
      model_dir = work / f"run_{version}_{kind}"
      times[(version, kind)] = _seconds([
          "train", f"--tasks_file={tasks}", "--gin_file=models/t5_1_1/tiny.gin",
          "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.MIXTURE_OR_TASK_NAME='startup_toy'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.TRAIN_STEPS=3",
          "--gin.BATCH_SIZE=8", "--gin.VOCABULARY='byte'", "--gin.train.stats_period=1"],
          _env(cache, where, JAX_COMPILATION_CACHE_DIR=str(cache)), work, until="step 1/3")
  return [[kind, f"{times[('before', kind)]:.1f}", f"{times[('now', kind)]:.1f}",
           f"{times[('before', kind)] / times[('now', kind)]:.2f}x"] for kind in ("cold", "warm")]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision to compare with")
  parser.add_argument("--repetitions", type=int, default=3)
  parser.add_argument("--skip_train", action="store_true")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    site = install_revision(args.before, work / "before")
    print(f"recast start-up: {args.before} (before) vs the working tree (now), "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; median of "
          f"{args.repetitions}, seconds per process")
    print(table(["command", "before", "now, cache off", "now", "before/now"],
                command_rows(args.repetitions, site, work)))
    if not args.skip_train:
      print("\nT5.1.1-tiny, 3 steps, batch 8, 32/8 tokens: seconds from start to `step 1/3`")
      print(table(["JAX compilation cache", "before", "now", "before/now"],
                  first_step_rows(site, work)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
