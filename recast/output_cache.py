"""Start-up without TensorFlow, seqio or JAX for commands whose output is a function of the
code: `recast SUBCOMMAND --help` and `recast tasks list`.

Listing tasks means registering every task (seqio, hence TensorFlow: ~7 s on 2 cores), and a
subcommand's flags live in the module that does its work. Their output depends only on
recast's own files, the files named on the command line and the environment, so the first
run's output is kept under the recast cache dir (RECAST_CACHE_DIR or ~/.cache/recast,
`output/`) under a key of all of those, and a later identical command prints it in a
fraction of a second. Any change to a recast source file, a gin or task file named on the
command line (for a task file, also the data files its tasks name), the interpreter, the
working directory or a RECAST_/TFDS_/JAX_/TF_ variable is a new key; `./f.yaml` and `f.yaml`
are one file. Only runs that exit 0 are kept.

    code = output_cache.run(["tasks", "list"], real_main)   # real_main(argv) -> int
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from recast import atomic_files, gin_config

_PACKAGES = ("recast", "recast.tasks", "recast.mixtures", "recast.trainer", "recast.jobs")
_SOURCE_SUFFIXES = (".py", ".gin", ".yaml", ".yml", ".json", ".txt", ".md")
_ENV_PREFIXES = ("RECAST_", "TFDS_", "JAX_", "TF_", "XLA_")
_MAX_FILES_BESIDE = 2000
DISABLE_VARIABLE = "RECAST_NO_OUTPUT_CACHE"  # set (to anything) to always run for real


def cacheable(argv: Sequence[str]) -> bool:
  """`recast SUBCOMMAND ... --help` and `recast tasks list ...`."""
  words = [a for a in argv if not a.startswith("-")]
  if not words or os.environ.get(DISABLE_VARIABLE):
    return False
  if "-h" in argv or "--help" in argv:
    return True
  return words[:2] == ["tasks", "list"]


def cache_dir() -> Path:
  root = os.environ.get("RECAST_CACHE_DIR") or os.path.expanduser("~/.cache/recast")
  return Path(root) / "output"


def _package_dirs() -> list[Path]:
  dirs = [gin_config.GIN_DIR]
  for name in _PACKAGES:
    try:
      spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
      spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
      dirs.append(Path(location))
  return dirs


def _stat(path: Path) -> list:
  try:
    st = path.stat()
  except OSError:
    return [str(path), None]
  return [str(path), st.st_mtime_ns, st.st_size]


def _named_files(argv: Sequence[str]) -> list[list]:
  """Every existing file an argument names (`--x=PATH` or `PATH`), and for task files the
  files beside them (their data)."""
  out = []
  for arg in argv:
    value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
    path = Path(value).expanduser()
    if not value or not path.is_file():
      continue
    path = path.resolve()
    out.append(_stat(path))
    if path.suffix in (".yaml", ".yml"):
      data = _task_file_data(path)
      out += [_stat(p) for p in (data if data is not None else _files_beside(path.parent))]
  return out


def _task_file_data(path: Path) -> Optional[list[Path]]:
  """The data files a task file names (its tasks' `files:`), or None when it can't be read
  as one (then every file beside it counts)."""
  try:
    import yaml  # light, and only for task files
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    found = []
    for task in spec.get("tasks") or []:
      files = task.get("files") or {}
      for value in (files.values() if isinstance(files, dict) else [files]):
        found.append((path.parent / str(value)).resolve())
    return sorted(found)
  except Exception:  # noqa: BLE001  (any oddity: fall back to the folder)
    return None


def _files_beside(folder: Path, depth: int = 2) -> list[Path]:
  """Files under `folder` (a task file's data), at most `depth` folders down, hidden
  folders left out (e.g. a cache), at most _MAX_FILES_BESIDE of them."""
  found = []
  for root, subdirs, files in os.walk(folder):
    level = len(Path(root).relative_to(folder).parts)
    subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if level < depth else []
    found += [Path(root) / f for f in sorted(files)]
    if len(found) >= _MAX_FILES_BESIDE:
      break
  return found[:_MAX_FILES_BESIDE]


def _normalised(arg: str) -> str:
  """An argument naming an existing file, as its resolved path (`./f.yaml` = `f.yaml`)."""
  flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
  if value and Path(value).expanduser().is_file():
    return f"{flag}{eq}{Path(value).expanduser().resolve()}"
  return arg


def key(argv: Sequence[str]) -> str:
  """The cache key of running `recast *argv` here and now."""
  sources = []
  for directory in _package_dirs():
    for root, subdirs, files in os.walk(directory):
      subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
      sources += [_stat(Path(root) / f) for f in sorted(files) if f.endswith(_SOURCE_SUFFIXES)]
  material = {
      "argv": [_normalised(a) for a in argv], "cwd": os.getcwd(), "python": [sys.executable, sys.version],
      "env": sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)),
      "sources": sources, "named": _named_files(argv)}
  return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class _Tee(io.TextIOBase):
  """Writes through to `stream` and keeps a copy."""

  def __init__(self, stream):
    self.stream, self.copy = stream, io.StringIO()

  def write(self, text: str) -> int:
    self.copy.write(text)
    return self.stream.write(text)

  def flush(self) -> None:
    self.stream.flush()

  def isatty(self) -> bool:
    return False  # the kept copy must not depend on the terminal

  def fileno(self) -> int:
    return self.stream.fileno()


def lookup(argv: Sequence[str]) -> Optional[dict]:
  """The kept output of this command ({"code", "stdout"}), or None."""
  try:
    return json.loads((cache_dir() / f"{key(argv)}.json").read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def run(argv: Sequence[str], real_main: Callable[[list[str]], int]) -> int:
  """`real_main(argv)`, or its kept output when the command is cacheable and was run before
  with the same code, files and environment."""
  if not cacheable(argv):
    return real_main(list(argv))
  kept = lookup(argv)
  if kept is not None and kept.get("code") == 0:
    sys.stdout.write(kept["stdout"])
    sys.stdout.flush()
    return 0
  cache_key = key(argv)  # before running: what the output was made from
  tee, saved = _Tee(sys.stdout), sys.stdout
  sys.stdout = tee
  code: object = 1
  try:
    code = real_main(list(argv))
  except SystemExit as e:  # argparse's --help
    code = e.code if e.code is not None else 0
    raise
  finally:
    sys.stdout = saved
    if code == 0:
      try:
        atomic_files.write_json(cache_dir() / f"{cache_key}.json",
                                {"code": 0, "stdout": tee.copy.getvalue()})
      except OSError:
        pass  # an unwritable cache only costs speed
  return code  # type: ignore[return-value]
