"""The `recast` command (also `python -m trainer`): one entry point, one subcommand per job.

Each subcommand lives in the module that does the work; that module provides
`add_arguments(parser)` and `main(args) -> int`. Training-like subcommands take T5X's
flags (`--gin_file`, `--gin.NAME=VALUE`, `--gin_search_paths`) and `--tasks_file`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

# (module, one-line help, takes gin flags)
SUBCOMMANDS: dict[str, tuple[str, str, bool]] = {
    "train": ("recast.trainer.train", "train or fine-tune a model from gin files", True),
    "eval": ("recast.trainer.evaluation", "evaluate one or all checkpoints of a run", True),
    "infer": ("recast.trainer.infer", "predict or score with a checkpoint", True),
    "tasks": ("recast.tasks.inspect", "list tasks and mixtures, show rendered examples", True),
    "vocab": ("recast.tasks.vocab_build", "build a SentencePiece vocabulary", True),
    "convert": ("recast.trainer.convert", "convert checkpoints to and from Hugging Face T5", False),
    "sweep": ("recast.jobs.sweep", "run a grid of runs with Ray", True),
    "fuse": ("recast.jobs.fusion", "ColD Fusion rounds; average checkpoints", True),
    "eval-base": ("recast.jobs.eval_base", "model-recycling evaluation of a base model", True),
    "distill": ("recast.trainer.distillation", "distil a teacher into a student", True),
    "report": ("recast.jobs.report", "tables and plots from run folders", False),
    "demo": ("recast.jobs.demo", "the quickstart: a small multitask study, no downloads", False),
}


def _configure_runtime() -> None:
  """Before JAX/TF load: quiet logs, no usage stats, and JAX's persistent compilation cache
  (runs of the same shapes, e.g. sweep trials and fusion contributors, compile once)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
  cache = os.environ.get("RECAST_CACHE_DIR") or os.path.expanduser("~/.cache/recast")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(cache, "jax"))


def build_parser(command: Optional[str] = None) -> tuple[argparse.ArgumentParser, object]:
  """The parser; only the chosen subcommand's module is imported (keeps --help fast)."""
  from recast import gin_config
  parser = argparse.ArgumentParser(
      prog="recast", description="Multi-task text-to-text training: SeqIO tasks, T5 in JAX, "
      "gin configs, Ray sweeps.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  module = None
  for name, (module_name, help_text, takes_gin) in SUBCOMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text)
    if name != command:
      continue
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
  from recast import errors, gin_config
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    argv, bindings = gin_config.split_gin_bindings(argv)
  except gin_config.GinConfigError as e:
    print(f"recast: error: {e}", file=sys.stderr)
    return 2
  command = next((a for a in argv if not a.startswith("-")), None)
  parser, module = build_parser(command if command in SUBCOMMANDS else None)
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 2
  if module is None:
    print(f"recast {args.command}: not built yet", file=sys.stderr)
    return 2
  args.gin_bindings = bindings
  if bindings and not SUBCOMMANDS[args.command][2]:
    parser.error(f"recast {args.command} takes no --gin.NAME=VALUE bindings")
  try:
    if getattr(args, "tasks_file", None):
      from recast.tasks import task_files
      for path in args.tasks_file:
        task_files.register_task_file(path)
    return int(module.main(args) or 0)
  except errors.UserError as e:
    print(f"recast {args.command}: error: {e}", file=sys.stderr)
    return 2

