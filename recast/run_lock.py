"""One writer per run folder: an exclusive lock on MODEL_DIR (or a sweep's or fusion's folder)
for as long as a run writes there.

The lock is `fcntl.flock` on `<folder>/.recast.lock`, so the kernel releases it when the
holder dies however it dies (SIGKILL included): a lock file left by a dead process is taken
over, with a message naming it. The file records the holder (host, pid, start time, command)
for the error a second writer gets:

    recast train: error: /runs/rte is in use by pid 4242 on host-a (recast train ...,
    started 2026-12-01 20:01:03); wait for it to finish or stop it, or choose another MODEL_DIR

flock works on local filesystems and on NFSv4 (where it maps to byte-range locks); on
filesystems without locks the lock is advisory at best.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator, Optional

from recast import errors

LOCK_FILE = ".recast.lock"
# Set by a multi-host job's driver (recast.jobs.multihost) in its workers' environment to
# the MODEL_DIR whose lock it holds: the workers neither check nor take that lock.
JOB_LOCK_ENV = "RECAST_JOB_LOCK"


class RunLockError(errors.UserError):
  """Another process writes to this folder."""


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join(["recast", *sys.argv[1:2]])}


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
          f"({holder.get('command', 'recast')}, started {holder.get('started', '?')})")


def _read_holder(path: Path) -> Optional[dict]:
  try:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if text.strip() else None
  except (OSError, ValueError):
    return None


def _try_lock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return False
    raise


def held_by_job(folder: str | os.PathLike) -> bool:
  """Whether this process is a worker of a job whose driver holds `folder`'s lock
  (JOB_LOCK_ENV names that folder)."""
  held = os.environ.get(JOB_LOCK_ENV)
  return bool(held) and Path(held).resolve() == Path(folder).resolve()


def _busy_error(folder: Path, holder: Optional[dict], what: str) -> RunLockError:
  by = _describe(holder) if holder else "another process"
  return RunLockError(f"{folder} is in use by {by}; wait for it to finish or stop it, or "
                      f"choose another {what}")


def check_free(folder: str | os.PathLike, *, what: str = "MODEL_DIR") -> None:
  """Raises RunLockError when a live process holds `folder`'s lock; creates nothing (a
  run calls this first, so a second writer fails before any slow validation)."""
  path = Path(folder) / LOCK_FILE
  if not path.is_file() or held_by_job(folder):
    return
  fd = os.open(path, os.O_RDONLY)
  try:
    if not _try_lock(fd):
      raise _busy_error(Path(folder), _read_holder(path), what)
  finally:
    os.close(fd)  # closing drops the probe's lock


@contextlib.contextmanager
def hold(folder: str | os.PathLike, *, what: str = "MODEL_DIR",
         enabled: bool = True) -> Iterator[None]:
  """Holds `folder`'s lock inside the block (creating the folder); RunLockError at once when
  a live process holds it. `enabled=False` (processes other than 0 of a multi-process run:
  the job holds the lock, not each worker) holds nothing, and so does a worker of a job
  whose driver holds it (`held_by_job`)."""
  if not enabled or held_by_job(folder):
    yield
    return
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    if not _try_lock(fd):
      raise _busy_error(folder, _read_holder(path), what)
    previous = _read_holder(path)
    if previous and previous.get("pid") != os.getpid():
      print(f"{folder}: taking over the lock left by {_describe(previous)}, which is no "
            "longer running", file=sys.stderr, flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder(), sort_keys=True) + "\n").encode("utf-8"), 0)
    os.fsync(fd)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)  # a clean exit leaves no holder behind
  finally:
    os.close(fd)
