"""The `recast` command (also `python -m recast`): one entry point, one subcommand per job.

Each subcommand lives in the module that does the work; that module provides
`add_arguments(parser)` and `main(args) -> int`. Training-like subcommands take T5X's
flags (`--gin_file`, `--gin.NAME=VALUE`, `--gin_search_paths`) and `--tasks_file`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import tempfile
from typing import Optional, Sequence

from recast import errors, gin_config, output_cache  # light: no JAX or TensorFlow

# (module, one-line help, takes gin flags)
SUBCOMMANDS: dict[str, tuple[str, str, bool]] = {
    "train": ("recast.trainer.train", "train or fine-tune a model from gin files", True),
    "eval": ("recast.trainer.evaluation", "evaluate one or all checkpoints of a run", True),
    "infer": ("recast.trainer.infer", "predict or score with a checkpoint", True),
    "tasks": ("recast.tasks.inspect", "list tasks and mixtures, show rendered examples", True),
    "vocab": ("recast.tasks.vocab_build", "build a SentencePiece vocabulary", True),
    "convert": ("recast.trainer.convert", "convert checkpoints to and from Hugging Face T5 and T5X",
                False),
    "sweep": ("recast.jobs.sweep", "run a grid of runs with Ray", True),
    "study": ("recast.jobs.study", "run a study's stages of runs in order; compare its arms",
              True),
    "fuse": ("recast.jobs.fusion", "ColD Fusion rounds; average checkpoints", True),
    "eval-base": ("recast.jobs.eval_base", "model-recycling evaluation of a base model", True),
    "distill": ("recast.trainer.distillation", "distil a teacher into a student", True),
    "report": ("recast.jobs.report", "tables and plots from run folders", False),
    "demo": ("recast.jobs.demo", "the quickstart: a small study of two arms, no downloads", False),
}


# `recast train ... --num_hosts=N` is one job over N hosts: its driver (Ray placement, the
# workers' jax.distributed, restarts) runs instead of the trainer, which each worker runs.
MULTIHOST_MODULE = "recast.jobs.multihost"


def wants_multihost(command: Optional[str], argv: Sequence[str]) -> bool:
  """Whether `argv` asks for a multi-host `recast train` (a --num_hosts flag)."""
  return command == "train" and any(a == "--num_hosts" or a.startswith("--num_hosts=")
                                    for a in argv)


# What TF's CUDA stub prints from a library constructor when `import tensorflow` loads it on a
# machine without CUDA: before TF reads any log setting, so no environment variable stops it.
_TF_LOAD_NOISE = ("cudart_stub.cc", "All log messages before absl::InitializeLog() is called")


class _QuietTensorFlowLoad:
  """Import hook: the first `import tensorflow` runs with stderr (fd 2) captured, then replays
  all of it but `_TF_LOAD_NOISE` lines (real errors and warnings still show)."""

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_quietly(module):
      with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
          exec_module(module)
        finally:
          sys.stderr.flush()
          os.dup2(saved, 2)
          os.close(saved)
          captured.seek(0)
          lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
          sys.stderr.write("".join(l for l in lines if not any(n in l for n in _TF_LOAD_NOISE)))

    spec.loader.exec_module = exec_quietly
    return spec


# absl warnings that say nothing a user can act on: orbax reading a checkpoint written
# without its optional metadata file, and seqio noting evaluation lengths longer than the data.
_ABSL_NOISE = ("Metadata file does not exist", "sequence lengths are longer than necessary")


class _DropAbslNoise(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in _ABSL_NOISE)


def _configure_runtime() -> None:
  """Before JAX/TF load: a quiet start-up, no usage stats, and JAX's persistent compilation
  cache (runs of the same shapes, e.g. sweep trials and fusion contributors, compile once).

  TensorFlow only feeds input pipelines here, so it gets the CPU alone
  (`TF_ENABLED_DEVICE_TYPES=CPU`: no cuInit, and it never takes GPU memory from JAX) and no
  oneDNN notice. `JAX_PLATFORMS=cpu` is set only when no accelerator plugin for jaxlib is
  installed, so a CUDA jaxlib still finds its GPUs. Each variable already set is kept.
  """
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropAbslNoise) for f in absl_logger.filters):
    absl_logger.addFilter(_DropAbslNoise())
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  os.environ.setdefault("TF_ENABLED_DEVICE_TYPES", "CPU")
  if not (importlib.metadata.entry_points(group="jax_plugins")
          or importlib.util.find_spec("jax_plugins") or importlib.util.find_spec("libtpu")):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
  cache = os.environ.get("RECAST_CACHE_DIR") or os.path.expanduser("~/.cache/recast")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(cache, "jax"))
  if "tensorflow" not in sys.modules and not any(
      isinstance(f, _QuietTensorFlowLoad) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowLoad())


def build_parser(command: Optional[str] = None, argv: Sequence[str] = ()
                 ) -> tuple[argparse.ArgumentParser, object]:
  """The parser; only the chosen subcommand's module is imported (keeps --help fast).
  `argv` with --num_hosts makes `train` the multi-host driver's (`wants_multihost`)."""
  parser = argparse.ArgumentParser(
      prog="recast", description="Multi-task text-to-text training: SeqIO tasks, T5 in JAX, "
      "gin configs, Ray sweeps.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  module = None
  for name, (module_name, help_text, takes_gin) in SUBCOMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text)
    if name != command:
      continue
    if wants_multihost(name, argv):
      module_name = MULTIHOST_MODULE
    try:
      module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if e.name != module_name:
        raise
    if takes_gin:
      gin_config.add_gin_flags(p)
    elif module is not None:
      p.add_argument("--tasks_file", action="append", default=[], metavar="YAML",
                     help="declarative task file to register first (repeatable)")
    if module is not None:
      module.add_arguments(p)
  return parser, module


def main(argv: Optional[Sequence[str]] = None) -> int:
  _configure_runtime()
  argv = list(sys.argv[1:] if argv is None else argv)
  return output_cache.run(argv, _run)  # --help and `tasks list` kept once run


def _run(argv: list[str]) -> int:
  try:
    argv, bindings = gin_config.split_gin_bindings(argv)
    argv, tasks_files = gin_config.split_tasks_files(argv)  # accepted anywhere, as --gin.X
  except gin_config.GinConfigError as e:
    print(f"recast: error: {e}", file=sys.stderr)
    return errors.USAGE_EXIT
  command = next((a for a in argv if not a.startswith("-")), None)
  if command in SUBCOMMANDS and SUBCOMMANDS[command][2]:
    try:  # a misspelt gin file is reported before the subcommand's module loads (fast)
      gin_config.check_gin_files(argv)
    except gin_config.GinConfigError as e:
      print(f"recast {command}: error: {e}", file=sys.stderr)
      return errors.USAGE_EXIT
  parser, module = build_parser(command if command in SUBCOMMANDS else None, argv)
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return errors.USAGE_EXIT
  if module is None:
    print(f"recast {args.command}: not built yet", file=sys.stderr)
    return errors.USAGE_EXIT
  args.gin_bindings = bindings
  if tasks_files and not hasattr(args, "tasks_file"):
    parser.error(f"recast {args.command} takes no --tasks_file")
  if hasattr(args, "tasks_file"):
    args.tasks_file = list(args.tasks_file) + tasks_files
  if bindings and not SUBCOMMANDS[args.command][2]:
    parser.error(f"recast {args.command} takes no --gin.NAME=VALUE bindings")
  try:
    if getattr(args, "tasks_file", None):
      from recast.tasks import task_files  # heavy (TensorFlow, seqio): only when asked
      for path in args.tasks_file:
        task_files.register_task_file(path)
    return int(module.main(args) or 0)
  except errors.UserError as e:
    message = str(e).split("\n  In call to configurable")[0]  # the line gin appends
    print(f"recast {args.command}: error: {message}", file=sys.stderr)
    return errors.USAGE_EXIT
