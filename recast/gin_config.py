"""T5X's configuration flags: repeatable `--gin_file`, `--gin.NAME=VALUE`, `--gin_search_paths`.

Every training-like subcommand parses its gin through here, so errors read the same
everywhere and the model directory always gets `config.gin` and `operative_config.gin`.
"""

from __future__ import annotations

import argparse
import importlib.util  # gin 0.5.0 needs it loaded for relative includes
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import gin

from recast import atomic_files, errors



def _gin_dir() -> Path:
  """recast's gin files: package data in an installed wheel (recast/gin/), the checkout's
  top-level gin/ folder in a source or editable install."""
  here = Path(__file__).resolve().parent
  for candidate in (here / "gin", here.parent / "gin"):
    if (candidate / "runs").is_dir():
      return candidate
  raise FileNotFoundError(f"recast's gin files are missing: neither {here / 'gin'} nor "
                          f"{here.parent / 'gin'} exists; reinstall recast")


GIN_DIR = _gin_dir()
_BINDING_FLAG = re.compile(r"^--gin\.([A-Za-z_][\w./]*)=(.*)$", re.S)


class GinConfigError(errors.UserError):
  """A gin file or binding that cannot be used; the message says what to change."""


def _python_package_file_exists(config_path: str) -> bool:
  """gin's check for includes inside Python packages ('pkg/sub/file.gin'), made safe.

  gin 0.5.0's own check (`gin.resource_reader.system_path_file_exists`) crashes with a
  TypeError when the include's folder resolves to a namespace package, which any folder of
  that name in the working directory does: after `recast demo` has written `runs/`, every
  `include 'runs/finetune.gin'` failed. It also logs every miss as an error. This one
  answers False for both and keeps what the check is for (files inside real packages).
  """
  head, filename = os.path.split(config_path)
  if not head:
    return False
  try:
    spec = importlib.util.find_spec(head.replace("/", "."))
  except (ImportError, ValueError):
    return False
  if spec is None or not spec.origin or not spec.has_location:
    return False
  return os.path.isfile(os.path.join(os.path.dirname(spec.origin), filename))


def _install_safe_package_reader() -> None:
  from gin import config as gin_config_module
  from gin import resource_reader
  readers = gin_config_module._FILE_READERS  # noqa: SLF001  (no public way to replace one)
  for i, (reader, exists) in enumerate(readers):
    if exists is resource_reader.system_path_file_exists:
      readers[i] = (reader, _python_package_file_exists)


_install_safe_package_reader()


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """Adds T5X's flags (`--gin.NAME=VALUE` is split off by `split_gin_bindings`)."""
  parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                      help="gin file to parse (repeatable; searched in --gin_search_paths "
                      "and recast's gin/ folder)")
  parser.add_argument("--gin_search_paths", action="append", default=[], metavar="DIRS",
                      help="comma-separated folders searched for gin files and includes")
  parser.add_argument("--tasks_file", action="append", default=[], metavar="YAML",
                      help="declarative task file to register before running (repeatable)")


def split_gin_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` flags (T5X's form) from the other arguments.

  >>> split_gin_bindings(["train", "--gin.TRAIN_STEPS=10", "--gin_file=a.gin"])
  (['train', '--gin_file=a.gin'], ['TRAIN_STEPS=10'])
  """
  rest, bindings = [], []
  for arg in argv:
    match = _BINDING_FLAG.match(arg)
    if match:
      bindings.append(f"{match.group(1)}={_quote_bare_string(match.group(2))}")
    elif arg.startswith("--gin.") and "=" not in arg:
      raise GinConfigError(f"{arg!r} has no value: write it as --gin.NAME=VALUE")
    else:
      rest.append(arg)
  return rest, bindings


def _quote_bare_string(value: str) -> str:
  """Quotes a value gin cannot read as a literal or reference (`/tmp/run` -> `'/tmp/run'`)."""
  text = value.strip()
  if not text or text[0] in "\"'@%[({" or text in ("None", "True", "False"):
    return value
  try:
    float(text)
    return value
  except ValueError:
    pass
  if re.fullmatch(r"-?\d+(e-?\d+)?", text):
    return value
  return repr(text)


def search_paths(extra: Iterable[str] = ()) -> list[str]:
  paths = []
  for entry in extra:
    paths.extend(p for p in entry.split(",") if p)
  paths.append(str(GIN_DIR))
  return paths


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], *,
              gin_search_paths: Sequence[str] = (), finalize: bool = True) -> None:
  """Clears gin, then parses files and bindings in T5X's order (files first).

  Raises GinConfigError naming the file or binding that failed.
  """
  gin.clear_config(clear_constants=False)
  for path in search_paths(gin_search_paths):
    gin.add_config_file_search_path(path)
  resolved = []
  for name in gin_files:
    path = _find_gin_file(name, gin_search_paths)
    if path is None:
      raise GinConfigError(
          f"gin file {name!r} not found; searched the working directory and "
          f"{', '.join(search_paths(gin_search_paths))}")
    resolved.append(path)
  try:
    gin.parse_config_files_and_bindings(resolved, None, finalize_config=False)
  except Exception as e:  # gin raises ValueError, IOError, ParseError, ...
    raise GinConfigError(f"invalid gin in {', '.join(gin_files) or 'files'}: {e}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(
          f"invalid gin binding --gin.{binding}: {e}. Bindings look like "
          "--gin.TRAIN_STEPS=1000 or --gin.MODEL_DIR=\"'/tmp/run'\"; names must be "
          "configurables or macros defined by the gin files") from e
  if finalize:
    gin.finalize()


def _find_gin_file(name: str, extra_paths: Sequence[str]) -> Optional[str]:
  """The path gin would read for `name`: as given, else under the search paths."""
  for candidate in [name] + [os.path.join(p, name) for p in search_paths(extra_paths)]:
    if os.path.isfile(candidate):
      return candidate
  return None


def macro_value(name: str, default: Any = gin.REQUIRED) -> Any:
  """The value bound to gin macro `name` (`default` when unbound)."""
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return default


def require_macros(names: Iterable[str], *, run_file: str = "the run file") -> None:
  """Raises GinConfigError naming every macro in `names` that is unset or REQUIRED."""
  missing = [n for n in names if _is_required(macro_value(n))]
  if missing:
    flags = " ".join(f"--gin.{n}=..." for n in missing)
    raise GinConfigError(
        f"{run_file} needs {', '.join(missing)} set; add {flags} or bind them in a gin file")


def _is_required(value: Any) -> bool:
  return value is gin.REQUIRED or repr(value) == "%gin.REQUIRED"


def parse_run_flags(args: argparse.Namespace, *, command: str,
                    required_macros: Iterable[str] = (), default_gin_files: Sequence[str] = (),
                    example: Optional[str] = None, finalize: bool = True) -> list[str]:
  """Every subcommand's opening: its gin files (or `default_gin_files`), parsed with the
  `--gin.NAME=VALUE` bindings and search paths, required macros checked, then finalized.

  Args:
    args: the parsed flags (`gin_file`, `gin_bindings`, `gin_search_paths`).
    command: the subcommand, for messages ("train").
    required_macros: macros that must be bound (e.g. MODEL_DIR).
    default_gin_files: used when no --gin_file is given (e.g. ["runs/eval.gin"]).
    example: when set and no gin file is given or defaulted, the GinConfigError names these
      flags as what to add (e.g. "--gin_file=models/t5_1_1/small.gin --gin_file=runs/...").
    finalize: lock the config (False for commands that bind more per run, e.g. fusion).
  Returns:
    The gin files parsed.
  """
  gin_files = list(args.gin_file) or list(default_gin_files)
  if not gin_files and example:
    raise GinConfigError(f"recast {command} needs gin files: a model and a run file, e.g. "
                         f"{example}")
  parse_gin(gin_files, args.gin_bindings, gin_search_paths=args.gin_search_paths,
            finalize=False)
  require_macros(required_macros, run_file=", ".join(gin_files) or "the gin files")
  if finalize:
    gin.finalize()
  return gin_files


def write_config_files(model_dir: str | os.PathLike, *, operative: bool) -> None:
  """Writes `config.gin` (as parsed) or `operative_config.gin` (as used) atomically."""
  name = "operative_config.gin" if operative else "config.gin"
  text = gin.operative_config_str() if operative else gin.config_str()
  atomic_files.write_text(Path(model_dir) / name, text)
