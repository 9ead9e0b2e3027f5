"""Atomic writes for result files: a reader sees the old file or the new one, never half.

Each write goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target (rename is atomic on POSIX filesystems).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _make_ordinary(root: Path) -> None:
  """Folders under `root` (itself included) to 0777, files to 0666, less the umask."""
  mask = _umask()
  os.chmod(root, 0o777 & ~mask)
  for folder, dirs, files in os.walk(root):
    for names, mode in ((dirs, 0o777), (files, 0o666)):
      for name in names:
        path = os.path.join(folder, name)
        if not os.path.islink(path):  # a link's target is not ours to change
          os.chmod(path, mode & ~mask)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
  write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
  """Appends complete lines and fsyncs; a torn last line from a crash is ignored by readers."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
  with open(path, "a", encoding="utf-8") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads JSON lines, skipping a final line left incomplete by a killed writer."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.endswith("\n"):
        break
      if line.strip():
        rows.append(json.loads(line))
  return rows


class staged_dir:
  """Context manager: build a folder under a temporary name, rename it into place on success.

  On success every folder in it gets mode 0777 and every file 0666, less the umask (0755
  and 0644 under umask 022): mkdtemp makes the staged folder 0700, and a checkpoint or a
  converted model is for other users too. On error the temporary folder is removed and
  `final` is left as it was (absent).
  """

  def __init__(self, final: str | os.PathLike):
    self.final = Path(final)

  def __enter__(self) -> Path:
    if self.final.exists():
      raise FileExistsError(f"{self.final} already exists; choose another destination or "
                            "remove it first")
    self.final.parent.mkdir(parents=True, exist_ok=True)
    self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=self.final.parent))
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      _make_ordinary(self.tmp)
      os.replace(self.tmp, self.final)
    else:
      shutil.rmtree(self.tmp, ignore_errors=True)
    return False
