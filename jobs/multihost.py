"""One training run over several hosts: `recast train ... --num_hosts=N`, launched and kept
alive by Ray.

The job's driver (this module, on the machine where the command is typed, or a sweep
trial) reserves N bundles of a Ray placement group at once (gang scheduling: all hosts or
none), starts one Ray actor per bundle, and each actor runs one `recast train` process:
worker 0's node and a free port are the `jax.distributed` coordinator, every worker gets
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, and the trainer does the
rest (each process reads its own shard of the data, process 0 writes metrics and logs).

    recast train --gin_file=models/t5_1_1/base.gin --gin_file=runs/pretrain.gin \\
        --gin.MODEL_DIR=/mnt/shared/runs/c4 --num_hosts=2 --gpus_per_host=8 \\
        --placement_strategy=STRICT_SPREAD --address=auto

Failures: when any worker ends with an error (a killed process, a lost node, a crash),
all are stopped and the job starts again, all N together, from the newest checkpoint in
MODEL_DIR, up to `max_failures` times. A worker that ends with a user error (exit status
2: bad flags, a batch that does not fit, a non-finite loss) stops the job at once, as a
retry would fail the same way. A killed driver started again with the same command
resumes the same way (its workers die with it). The MODEL_DIR lock (recast.run_lock) is
the driver's: workers are told through RECAST_JOB_LOCK that the job holds it.

Logs: worker 0's output goes to MODEL_DIR/output.log, worker i's to output.host<i>.log (the
trainer's train.log is process 0's);
MODEL_DIR/multihost_attempts.jsonl has a line per start (nodes, coordinator, the
checkpoint step it resumes). Walkthrough (Ray cluster, SLURM, TPU VMs): docs/multihost.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from recast import atomic_files, errors, run_lock
from recast.jobs import launcher

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
ATTEMPTS_FILE = "multihost_attempts.jsonl"
USER_ERROR_EXIT = 2  # `recast` exits with 2 on a UserError (recast/cli.py)
LAUNCH_KEYS = ("num_hosts", "cpus_per_host", "gpus_per_host", "resources_per_host",
               "placement_strategy", "max_failures", "placement_timeout_s")


class MultihostError(errors.UserError):
  """A multi-host job that cannot be placed, or whose workers failed."""


class PlacementTimeoutError(MultihostError):
  """The cluster could not reserve every host's bundle in time."""


# ------------------------------------------------------------------------------------------
# What to reserve


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
  """How one run is spread over hosts.

  Attributes:
    num_hosts: worker processes, one per bundle (a host, or a group of its GPUs).
    cpus_per_host, gpus_per_host: each bundle's CPUs and GPUs (Ray gives each worker
      CUDA_VISIBLE_DEVICES for its GPUs; JAX in that worker uses them all).
    resources_per_host: other Ray resources per bundle, e.g. {"TPU": 4} on TPU VMs.
    placement_strategy: Ray's placement group strategy. SPREAD (default) puts bundles on
      different nodes where it can and still places them all on one node; STRICT_SPREAD
      (real multi-host runs) insists on one node per bundle; PACK fills nodes first.
    max_failures: restarts of the whole job after a worker failed (0: none).
    placement_timeout_s: how long to wait for the bundles before giving up with an error
      that names the missing resources (a cluster autoscaler may need minutes: raise it).
  """
  num_hosts: int = 1
  cpus_per_host: float = 1.0
  gpus_per_host: float = 0.0
  resources_per_host: Mapping[str, float] = dataclasses.field(default_factory=dict)
  placement_strategy: str = "SPREAD"
  max_failures: int = 3
  placement_timeout_s: float = 60.0

  def __post_init__(self):
    if not isinstance(self.num_hosts, int) or isinstance(self.num_hosts, bool) or \
        self.num_hosts < 1:
      raise MultihostError(f"num_hosts={self.num_hosts!r}: use a whole number >= 1")
    if self.placement_strategy not in STRATEGIES:
      raise MultihostError(f"placement_strategy={self.placement_strategy!r}: use one of "
                           f"{', '.join(STRATEGIES)}")
    for name in ("cpus_per_host", "gpus_per_host", "placement_timeout_s"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise MultihostError(f"{name}={value!r}: use a number >= 0")
    if self.gpus_per_host > 1 and self.gpus_per_host != int(self.gpus_per_host):
      raise MultihostError(f"gpus_per_host={self.gpus_per_host}: above 1, use a whole "
                           "number of GPUs")
    if not isinstance(self.max_failures, int) or self.max_failures < 0:
      raise MultihostError(f"max_failures={self.max_failures!r}: use a whole number >= 0")

  def bundle(self) -> dict[str, float]:
    """One host's Ray resources: {"CPU": 4, "GPU": 8} (zero amounts left out)."""
    out = {"CPU": float(self.cpus_per_host), "GPU": float(self.gpus_per_host),
           **{k: float(v) for k, v in self.resources_per_host.items()}}
    return {k: v for k, v in out.items() if v}


def launch_spec(block: Optional[Mapping[str, Any]], *, where: str = "launch") -> LaunchSpec:
  """A LaunchSpec from a sweep spec's `launch:` block ({num_hosts: 2, gpus_per_host: 8,
  ...}); MultihostError naming an unknown key."""
  block = dict(block or {})
  unknown = sorted(set(block) - set(LAUNCH_KEYS))
  if unknown:
    raise MultihostError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(LAUNCH_KEYS)}")
  return LaunchSpec(**block)


def check_batch_split(batch_size: Any, *, num_hosts: int,
                      devices_per_host: Optional[int]) -> None:
  """MultihostError when the global batch does not split over the hosts (and, when known,
  their devices): checked by the driver before any worker starts."""
  if not isinstance(batch_size, int) or isinstance(batch_size, bool):
    return  # not a literal the driver can check; the workers' partitioner checks it
  devices = num_hosts * (devices_per_host or 1)
  if batch_size % devices:
    where = (f"{num_hosts} hosts x {devices_per_host} devices" if devices_per_host
             else f"{num_hosts} hosts")
    raise MultihostError(f"BATCH_SIZE={batch_size} does not split over {devices} "
                         f"data-parallel devices ({where}); use a multiple of {devices}")


def devices_per_host(spec: LaunchSpec, env: Mapping[str, str]) -> Optional[int]:
  """Devices each worker's JAX will see, where the driver can tell: whole GPUs, or CPU
  devices (JAX_NUM_CPU_DEVICES, which JAX puts before XLA_FLAGS'
  --xla_force_host_platform_device_count, else 1); None for TPUs."""
  if spec.gpus_per_host >= 1:
    return int(spec.gpus_per_host)
  if spec.resources_per_host.get("TPU"):
    return None
  count = env.get("JAX_NUM_CPU_DEVICES", "").strip()
  if count.isdigit() and int(count) > 0:  # JAX's -1 (unset) falls back to the flag
    return int(count)
  match = re.search(r"--xla_force_host_platform_device_count=(\d+)", env.get("XLA_FLAGS", ""))
  return int(match.group(1)) if match else 1


# ------------------------------------------------------------------------------------------
# Placement


def reserve(spec: LaunchSpec) -> Any:
  """A ready placement group of `spec.num_hosts` bundles; PlacementTimeoutError (and
  nothing left reserved) when Ray cannot place them all in `placement_timeout_s`."""
  import ray
  from ray.util import placement_group, remove_placement_group
  bundles = [spec.bundle() for _ in range(spec.num_hosts)]
  pg = placement_group(bundles, strategy=spec.placement_strategy)
  ready, _ = ray.wait([pg.ready()], timeout=spec.placement_timeout_s)
  if not ready:
    remove_placement_group(pg)
    raise PlacementTimeoutError(placement_message(spec))
  return pg


def placement_message(spec: LaunchSpec) -> str:
  """`2 bundles of {CPU: 1, GPU: 8} could not be placed in 60 s (SPREAD): the cluster has
  1 node: 10.0.0.5 {CPU: 2}; ...` with what to change."""
  import ray
  nodes = [n for n in ray.nodes() if n.get("Alive")]
  described = "; ".join(f"{n.get('NodeManagerAddress', '?')} "
                        f"{_resources(n.get('Resources', {}))}" for n in nodes)
  total: dict[str, float] = {}
  for node in nodes:
    for name, amount in node.get("Resources", {}).items():
      total[name] = total.get(name, 0.0) + amount
  missing = {k: v * spec.num_hosts - total.get(k, 0.0) for k, v in spec.bundle().items()}
  short = {k: v for k, v in missing.items() if v > 0}
  why = (f"short of {_resources(short)} in total" if short else
         f"no {spec.num_hosts} placements fit the strategy {spec.placement_strategy}"
         if spec.placement_strategy.startswith("STRICT") else
         "they are in use by other jobs or do not fit on single nodes")
  return (f"{spec.num_hosts} bundles of {_resources(spec.bundle())} could not be placed in "
          f"{spec.placement_timeout_s:g} s ({spec.placement_strategy}): the cluster has "
          f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {described or 'none'} "
          f"({why}); lower --num_hosts or the per-host resources, add nodes, or raise "
          "--placement_timeout_s while an autoscaler adds them")


def _resources(amounts: Mapping[str, float]) -> str:
  shown = {k: v for k, v in sorted(amounts.items())
           if k in ("CPU", "GPU", "TPU") or not (k.startswith("node:") or
                                                  k.endswith("memory") or "group" in k)}
  return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


# ------------------------------------------------------------------------------------------
# The workers


class HostWorker:
  """A Ray actor on one bundle: tells the coordinator address, then runs its `recast
  train` process (killed with the actor)."""

  def coordinator_address(self) -> str:
    import ray
    with socket.socket() as s:
      s.bind(("", 0))
      port = s.getsockname()[1]
    return f"{ray.util.get_node_ip_address()}:{port}"

  def node(self) -> str:
    import ray
    return ray.util.get_node_ip_address()

  def run(self, command: Sequence[str], *, env: Mapping[str, str], gpus: float,
          log_file: str, header: str, cwd: Optional[str]) -> dict:
    """Runs the process; {"returncode": 0} or {"returncode": N, "message": ...}."""
    full_env = launcher.train_environment(os.environ, gpus=gpus, extra=env)
    try:
      launcher.run_train_process(launcher.on_this_node(command), log_file=log_file,
                                 env=full_env, header=header, die_with_parent=True,
                                 cwd=cwd if cwd and os.path.isdir(cwd) else None)
    except launcher.TrainProcessError as e:
      return {"returncode": e.returncode, "message": str(e),
              "error_line": _error_line(log_file)}
    return {"returncode": 0}


def _error_line(log_file: str) -> Optional[str]:
  """The last `recast ...: error: ...` line of a log's last attempt (a UserError's
  one-line message)."""
  try:
    lines = Path(log_file).read_text(errors="replace").splitlines()
  except OSError:
    return None
  starts = [i for i, l in enumerate(lines) if l.startswith("=== attempt ")]
  lines = lines[starts[-1]:] if starts else lines
  found = [l for l in lines if re.match(r"recast [\w-]+: error: ", l)]
  return found[-1] if found else None


def log_file(model_dir: Path, host: int) -> Path:
  """Worker `host`'s stdout and stderr: output.log for worker 0 (where a one-host run's
  goes; the trainer's own train.log is process 0's), else output.host<i>.log."""
  name = Path(launcher.LOG_FILE)
  return model_dir / (name.name if host == 0 else f"{name.stem}.host{host}{name.suffix}")


@dataclasses.dataclass(frozen=True)
class JobOutcome:
  attempts: int  # starts of the whole job (1: no failure)
  nodes: list[str]  # the last attempt's node of each worker


def run_job(command: Sequence[str], *, model_dir: str | os.PathLike, spec: LaunchSpec,
            env: Optional[Mapping[str, str]] = None, address: Optional[str] = None,
            batch_size: Any = None, cwd: Optional[str] = None,
            placement: Optional[tuple[Any, int]] = None, hold_lock: bool = True,
            on_poll: Optional[Callable[[], None]] = None) -> JobOutcome:
  """Runs `command` (`python -m recast train ...`) as one job of `spec.num_hosts` workers
  to its end, restarting all of them after a failure up to `spec.max_failures` times.

  Args:
    command: a `recast train` argv (launcher.TrainFlags.command); each worker runs it with
      its node's Python.
    model_dir: the run's MODEL_DIR (the driver holds its lock; the logs go there).
    env: extra environment of every worker (e.g. XLA_FLAGS).
    address: the Ray to join (launcher.connect_ray); this process's Ray if connected.
    batch_size: the global batch, when the driver knows it: checked against the hosts
      (and their devices) before anything starts.
    placement: (placement group, first bundle index) to use instead of reserving one (a
      sweep trial whose bundles Tune reserved).
    hold_lock: the driver takes the MODEL_DIR lock (False where a caller holds it).
    on_poll: called every launcher.POLL_SECONDS while workers run (a sweep trial reports
      its metrics to Tune).
  Raises:
    PlacementTimeoutError, or MultihostError naming the failed worker and its log.
  """
  env = dict(env or {})
  model_dir = Path(model_dir).resolve()
  check_batch_split(batch_size, num_hosts=spec.num_hosts,
                    devices_per_host=devices_per_host(spec, {**os.environ, **env}))
  if hold_lock:
    run_lock.check_free(model_dir)
  launcher.connect_ray(address=address, log_to_driver=False)
  own_pg = placement is None
  pg, first = (reserve(spec), 0) if own_pg else placement  # before anything is written
  try:
    with run_lock.hold(model_dir) if hold_lock else contextlib.nullcontext():
      attempt = 0
      while True:
        attempt += 1
        failure, nodes = _attempt(command, model_dir=model_dir, spec=spec, env=env, pg=pg,
                                  first=first, attempt=attempt, cwd=cwd, on_poll=on_poll)
        if failure is None:
          return JobOutcome(attempts=attempt, nodes=nodes)
        host, result = failure
        line = result.get("error_line")
        if result.get("returncode") == USER_ERROR_EXIT and line:
          raise MultihostError(f"host {host}: {line.split(': error: ', 1)[1]} (log: "
                               f"{log_file(model_dir, host)})")
        if attempt > spec.max_failures:
          raise MultihostError(
              f"host {host} failed on attempt {attempt} (max_failures={spec.max_failures} "
              f"restarts used up): {result.get('message', '')}")
        print(f"multihost: host {host} failed ({_short(result)}); restarting all "
              f"{spec.num_hosts} hosts from the newest checkpoint (restart {attempt} of "
              f"{spec.max_failures})", file=sys.stderr, flush=True)
  finally:
    if own_pg:
      from ray.util import remove_placement_group
      remove_placement_group(pg)


def _short(result: Mapping[str, Any]) -> str:
  code = result.get("returncode")
  if code is None:
    return result.get("message", "its worker died")
  return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"


def _attempt(command: Sequence[str], *, model_dir: Path, spec: LaunchSpec,
             env: Mapping[str, str], pg: Any, first: int, attempt: int,
             cwd: Optional[str], on_poll: Optional[Callable[[], None]] = None
             ) -> tuple[Optional[tuple[int, dict]], list[str]]:
  """One start of all workers; (None, nodes) when all finished, else ((host, result) of
  the first failure, nodes) with every worker stopped."""
  import ray
  from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
  actor_class = ray.remote(HostWorker)
  bundle = spec.bundle()
  extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
  actors = [actor_class.options(
      num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), resources=extra,
      max_restarts=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
          pg, placement_group_bundle_index=first + i)).remote()
      for i in range(spec.num_hosts)]
  try:
    coordinator = ray.get(actors[0].coordinator_address.remote())
    nodes = ray.get([a.node.remote() for a in actors])
    from recast.trainer import checkpoints  # the trainer's floor is below jobs
    steps = checkpoints.checkpoint_steps(model_dir) if model_dir.is_dir() else []
    records = model_dir / ATTEMPTS_FILE
    earlier = len(atomic_files.read_jsonl(records)) if records.is_file() else 0
    atomic_files.append_jsonl(records, [{  # attempt: this driver's; start: the run's
        "attempt": attempt, "start": earlier + 1, "started": time.time(),
        "num_hosts": spec.num_hosts,
        "nodes": nodes, "coordinator": coordinator,
        "resumes_step": steps[-1] if steps else None}])
    runs = {}
    for i, actor in enumerate(actors):
      worker_env = {**env, "JAX_COORDINATOR_ADDRESS": coordinator,
                    "JAX_NUM_PROCESSES": str(spec.num_hosts), "JAX_PROCESS_ID": str(i),
                    run_lock.JOB_LOCK_ENV: str(model_dir)}
      ref = actor.run.remote(list(command), env=worker_env, gpus=bundle.get("GPU", 0),
                             log_file=str(log_file(model_dir, i)), cwd=cwd,
                             header=f"\n=== attempt {attempt}, host {i} of "
                             f"{spec.num_hosts}: {' '.join(command)}")
      runs[ref] = i
    pending = list(runs)
    while pending:
      done, pending = ray.wait(pending, num_returns=1, timeout=launcher.POLL_SECONDS)
      if on_poll is not None:
        on_poll()
      if not done:
        continue
      host = runs[done[0]]
      try:
        result = ray.get(done[0])
      except ray.exceptions.RayActorError as e:
        result = {"returncode": None, "message": f"its Ray worker died: {e}".split("\n")[0]}
      if result["returncode"] != 0:
        return (host, result), nodes
    return None, nodes
  finally:
    for actor in actors:
      ray.kill(actor, no_restart=True)  # its train process dies with it (die_with_parent)


# ------------------------------------------------------------------------------------------
# Command line: `recast train ... --num_hosts=N` (recast/cli.py sends it here)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--num_hosts", type=int, required=True,
                      help="run this training over N worker processes placed by Ray")
  parser.add_argument("--cpus_per_host", type=float, default=1.0, help="CPUs per worker")
  parser.add_argument("--gpus_per_host", type=float, default=0.0,
                      help="GPUs per worker (all of a node's, for one worker per node)")
  parser.add_argument("--tpus_per_host", type=float, default=0.0,
                      help="TPU chips per worker (Ray's TPU resource of a TPU VM)")
  parser.add_argument("--placement_strategy", choices=STRATEGIES, default="SPREAD",
                      help="Ray placement group strategy (STRICT_SPREAD: one node per "
                      "worker, what a real multi-host run wants)")
  parser.add_argument("--max_failures", type=int, default=3,
                      help="restarts of all workers after one failed")
  parser.add_argument("--placement_timeout_s", type=float, default=60.0,
                      help="give up when the workers cannot all be placed in this time")
  parser.add_argument("--address", default=None,
                      help="the Ray cluster to join (auto, host:port); default: a local Ray")
  parser.add_argument("--host_env", action="append", default=[], metavar="NAME=VALUE",
                      help="environment variable of every worker (repeatable)")
  parser.add_argument("--multiprocess", action="store_true",
                      help="(implied: every worker joins the job's jax.distributed)")


def _host_env(pairs: Sequence[str]) -> dict[str, str]:
  env = {}
  for pair in pairs:
    name, sep, value = pair.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name):
      raise MultihostError(f"--host_env={pair!r}: write it as NAME=VALUE")
    env[name] = value
  return env


@dataclasses.dataclass(frozen=True)
class JobPlan:
  """What `recast train --num_hosts=N` runs: the workers' argv, MODEL_DIR, the launch."""
  command: list[str]
  model_dir: str
  spec: LaunchSpec
  env: dict
  batch_size: Any


def plan_from_args(args: argparse.Namespace) -> JobPlan:
  """The job of `recast train ... --num_hosts=N`: its gin parsed as the trainer will parse
  it (GinConfigError before anything starts), the workers' argv without the launch flags."""
  import gin
  from recast import gin_config
  from recast.trainer import train as train_lib  # registers train.*: the gin checks below
  spec = LaunchSpec(
      num_hosts=args.num_hosts, cpus_per_host=args.cpus_per_host,
      gpus_per_host=args.gpus_per_host,
      resources_per_host={"TPU": args.tpus_per_host} if args.tpus_per_host else {},
      placement_strategy=args.placement_strategy, max_failures=args.max_failures,
      placement_timeout_s=args.placement_timeout_s)
  env = _host_env(args.host_env)
  gin_config.parse_run_flags(
      args, command="train", required_macros=train_lib.REQUIRED_MACROS,
      example="--gin_file=models/t5_1_1/small.gin --gin_file=runs/finetune.gin")
  try:
    batch_size = gin.query_parameter("train.batch_size")
  except ValueError:
    batch_size = None
  if isinstance(batch_size, gin.config.ConfigurableReference):
    batch_size = gin_config.macro_value(repr(batch_size)[1:], None)
  flags = launcher.TrainFlags(gin_files=args.gin_file, bindings=args.gin_bindings,
                              gin_search_paths=args.gin_search_paths,
                              tasks_files=getattr(args, "tasks_file", []))
  return JobPlan(command=flags.command(), model_dir=str(gin_config.macro_value("MODEL_DIR")),
                 spec=spec, env=env, batch_size=batch_size)


def main(args: argparse.Namespace) -> int:
  """`recast train --gin_file=... --gin.MODEL_DIR=... --num_hosts=N`: the job's driver."""
  plan = plan_from_args(args)
  outcome = run_job(plan.command, model_dir=plan.model_dir, spec=plan.spec, env=plan.env,
                    address=args.address, batch_size=plan.batch_size,
                    cwd=os.getcwd())  # relative paths in bindings, where this folder exists
  print(f"multihost: done on {plan.spec.num_hosts} hosts ({', '.join(outcome.nodes)}) "
        f"after {outcome.attempts} start{'s' if outcome.attempts > 1 else ''}", flush=True)
  return 0
