"""The one launcher of `recast train` processes: their argv, their environment, running one
with its log, and running many on Ray (one GPU each), for sweeps, fusion and eval-base.

    flags = TrainFlags(gin_files=["models/t5_1_1/small.gin", "runs/finetune.gin"])
    flags.command({"MODEL_DIR": "/runs/rte", "TRAIN_STEPS": 100})
    # [python, "-m", "recast", "train", "--gin_file=models/t5_1_1/small.gin", ...,
    #  "--gin.MODEL_DIR='/runs/rte'", "--gin.TRAIN_STEPS=100"]

Ray gives each task or Tune trial its own CUDA_VISIBLE_DEVICES; `train_environment` keeps
it and sets JAX's share of the GPU memory, so a train process sees and takes only its GPUs.
Sweeps schedule through Ray Tune (`recast.jobs.sweep`: its grid, retries from checkpoints);
`run_jobs` runs a plain list of jobs (fusion contributors, eval-base fine-tunings).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from recast import errors

LOG_FILE = "output.log"  # in each run's MODEL_DIR: the process's stdout + stderr (train.log is its own)
GPU_MEMORY_FRACTION = 0.9
POLL_SECONDS = 2.0
LOG_TAIL_LINES = 20
PARALLEL = ("auto", "ray", "sequential")


class TrainProcessError(errors.UserError):
  """A `recast train` process exited with an error; the message ends with its log's tail.
  `returncode`: its exit status (negative: killed by that signal)."""
  returncode: Optional[int] = None


# ------------------------------------------------------------------------------------------
# The argv


@dataclasses.dataclass(frozen=True)
class TrainFlags:
  """The `recast train` flags every run of a job shares; `command` adds one run's own.

  `gin_files` and `tasks_files` are made absolute where they exist relative to `cwd`
  (default: the working directory), so the process finds them from any folder; the others
  are searched on `gin_search_paths` by gin. `bindings` are "NAME=VALUE" gin strings.
  """
  gin_files: Sequence[str]
  bindings: Sequence[str] = ()
  gin_search_paths: Sequence[str] = ()
  tasks_files: Sequence[str] = ()
  cwd: Optional[str] = None
  python: str = sys.executable

  def command(self, overrides: Optional[Mapping[str, Any]] = None, *,
              bindings: Sequence[str] = (), subcommand: str = "train") -> list[str]:
    """`python -m recast train` (or another gin-taking `subcommand`, e.g. "fuse"): the
    shared flags, then `bindings` ("NAME=VALUE"), then `overrides` ({macro: python value});
    later bindings win, as on the command line."""
    cmd = [self.python, "-m", "recast", subcommand]
    cmd += [f"--gin_file={self._absolute(f)}" for f in self.gin_files]
    cmd += [f"--gin_search_paths={p}" for p in self.gin_search_paths]
    cmd += [f"--tasks_file={self._absolute(f)}" for f in self.tasks_files]
    cmd += [f"--gin.{b}" for b in (*self.bindings, *bindings)]
    cmd += [f"--gin.{name}={gin_literal(value)}" for name, value in (overrides or {}).items()]
    return cmd

  def _absolute(self, path: str) -> str:
    candidate = Path(self.cwd or os.getcwd()) / os.path.expanduser(str(path))
    return str(candidate.resolve()) if candidate.exists() else str(path)


def gin_literal(value: Any) -> str:
  """A python value as gin reads it (a Path as its string): 3 -> "3", "rte" -> "'rte'"."""
  return repr(str(value)) if isinstance(value, Path) else repr(value)


# ------------------------------------------------------------------------------------------
# One process


def train_environment(base: Mapping[str, str], *, gpus: float,
                      extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
  """A train process's environment: `base` (in a Ray worker, Ray set CUDA_VISIBLE_DEVICES
  to its GPUs), then `extra`, then JAX's GPU memory share.

  A run with whole GPUs lets XLA take 90% of each; runs sharing one GPU (gpus=0.5) take
  their share of that; a run without GPUs sees none.
  """
  extra = extra or {}
  env = {**base, **extra}
  if gpus <= 0:
    env["CUDA_VISIBLE_DEVICES"] = extra.get("CUDA_VISIBLE_DEVICES", "")
  else:
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION",
                   f"{GPU_MEMORY_FRACTION * min(gpus, 1.0):.3g}")
  return env


def on_this_node(command: Sequence[str]) -> list[str]:
  """`command` with this process's Python: a Ray worker's node may keep it elsewhere."""
  return [sys.executable, *command[1:]]


def _die_with_parent() -> None:
  """In the child before exec (Linux): SIGKILL it when its parent dies, so a killed driver
  or Ray worker leaves no training process behind."""
  ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_train_process(command: Sequence[str], *, log_file: str | os.PathLike,
                      env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                      header: Optional[str] = None, what: str = "`recast train`",
                      on_poll: Optional[Callable[[], None]] = None,
                      poll_seconds: float = POLL_SECONDS,
                      die_with_parent: bool = False) -> None:
  """Runs `command` to its end, its output appended to `log_file` after `header` (default
  "$ command"); calls `on_poll` every `poll_seconds` and once after it exited.

  Raises TrainProcessError (`what` exited with N, and the log's tail) when it fails; the
  process is killed if this function is interrupted. `die_with_parent` (Linux; for Ray
  workers, whose death would otherwise orphan the process) has the kernel SIGKILL it when
  this process dies; it runs code between fork and exec, so it is off in a driver that
  holds JAX's threads.
  """
  log_file = Path(log_file)
  log_file.parent.mkdir(parents=True, exist_ok=True)
  with open(log_file, "ab") as log:
    log.write(((header or "$ " + " ".join(command)) + "\n").encode())
    log.flush()
    proc = subprocess.Popen(list(command), env=dict(os.environ if env is None else env),
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent if die_with_parent and
                            sys.platform == "linux" else None)
    try:
      while True:
        returncode = proc.poll()
        if on_poll is not None:
          on_poll()
        if returncode is not None:
          break
        try:
          proc.wait(timeout=poll_seconds)
        except subprocess.TimeoutExpired:
          pass
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  if returncode != 0:
    tail = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    error = TrainProcessError(f"{what} exited with {returncode}; {log_file} ends with:\n" +
                              "\n".join(tail))
    error.returncode = returncode
    raise error


# ------------------------------------------------------------------------------------------
# Many processes, on Ray


def add_ray_arguments(parser) -> None:
  """The Ray flags of every command that schedules runs on Ray (sweep, study)."""
  parser.add_argument("--address", default=None,
                      help="join this Ray cluster ('auto' on a cluster node, or HOST:PORT); "
                      "default: start a local Ray, dashboard off")
  parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray")
  parser.add_argument("--num_gpus", type=float, default=None, help="GPUs of the local Ray")


def connect_ray(*, address: Optional[str] = None, num_cpus: Optional[int] = None,
                num_gpus: Optional[float] = None, log_to_driver: bool = True) -> None:
  """Joins the Ray at `address` ("auto", "ray://...", "host:port"), or starts a local one;
  does nothing when this process is already connected (a test's or a notebook's Ray).

  A local Ray starts with no dashboard, sends no usage statistics, and keeps Ray's token
  authentication on (its default for new local clusters; an explicit RAY_AUTH_MODE is
  respected). Ray's core services still bind every interface and advertise the machine's
  address: Ray has no switch for that (it turns a 127.0.0.1 node address back into the
  machine's own), so see docs/sweeps.md. The token file Ray writes, ~/.ray/auth_token
  (kept for later clusters), is made readable by its owner only.
  """
  import ray
  if ray.is_initialized():
    return
  os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
  if address:
    ray.init(address=address, log_to_driver=log_to_driver)
  else:
    ray.init(include_dashboard=False, dashboard_host="127.0.0.1", num_cpus=num_cpus,
             num_gpus=num_gpus, log_to_driver=log_to_driver)
  # Ray creates the token with the umask's mode (0644 under umask 022: every user of the
  # machine could read it and run code on the cluster); a RAY_AUTH_TOKEN_PATH file is the
  # user's own and left alone.
  token = Path.home() / ".ray" / "auth_token"
  if token.is_file() and not token.is_symlink() and token.stat().st_mode & 0o077:
    token.chmod(0o600)


@dataclasses.dataclass(frozen=True)
class TrainJob:
  """One `recast train` run: its argv, log file, and driver-side callbacks run when it is
  started (submitted, with Ray) and after it succeeded."""
  command: list[str]
  log_file: Path
  on_start: Callable[[], None] = lambda: None
  on_done: Callable[[], None] = lambda: None


def run_jobs(jobs: Sequence[TrainJob], *, parallel: str,
             ray_address: Optional[str] = None) -> None:
  """Runs `jobs`: in parallel as Ray tasks of one GPU each (parallel="ray", or "auto" with
  2+ GPUs or a Ray address), else one after another in this process (each inheriting its
  environment, GPUs shared with the driver).

  Raises the first failed job's TrainProcessError (the others of a Ray batch keep running
  to their end in their tasks; their on_done is not called).
  """
  if parallel not in PARALLEL:
    raise errors.UserError(f"parallel={parallel!r}: use one of {', '.join(PARALLEL)}")
  use_ray = parallel == "ray" or (parallel == "auto" and (ray_address or gpu_count() > 1))
  if not use_ray or len(jobs) < 2:
    for job in jobs:
      job.on_start()
      run_train_process(job.command, log_file=job.log_file)
      job.on_done()
    return
  import ray
  connect_ray(address=ray_address, log_to_driver=False)
  gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
  remote = ray.remote(num_gpus=gpus, num_cpus=1)(_run_in_ray_task)
  pending = {}
  for job in jobs:
    job.on_start()
    pending[remote.remote(job.command, str(job.log_file), gpus)] = job
  while pending:
    done, _ = ray.wait(list(pending), num_returns=1)
    ray.get(done[0])  # re-raises the job's TrainProcessError
    pending.pop(done[0]).on_done()


def _run_in_ray_task(command: list[str], log_file: str, gpus: float) -> None:
  run_train_process(on_this_node(command), log_file=log_file,
                    env=train_environment(os.environ, gpus=gpus), die_with_parent=True)


def gpu_count() -> int:
  """GPUs `nvidia-smi -L` lists on this machine (0 without nvidia-smi)."""
  if not shutil.which("nvidia-smi"):
    return 0
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
