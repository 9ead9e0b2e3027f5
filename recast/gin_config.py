"""T5X's configuration flags: repeatable `--gin_file`, `--gin.NAME=VALUE`, `--gin_search_paths`.

Every training-like subcommand parses its gin through here, so errors read the same
everywhere and the model directory always gets `config.gin` and `operative_config.gin`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util  # gin 0.5.0 needs it loaded for relative includes
import inspect
import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import gin
from gin import config as gin_internals  # its registry and file readers; no public API
from gin import resource_reader

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
_MACRO_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# Macros code reads with `gin.query_parameter` (tasks/sources.py, tasks/vocabularies.py,
# tasks/inspect.py), so every command knows them whether or not a gin file mentions them.
CODE_MACROS = ("DATA_DIR", "TASK_DATA_DIRS", "VOCABULARY", "TASK_FEATURE_LENGTHS")


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
  readers = gin_internals._FILE_READERS  # noqa: SLF001  (no public way to replace one)
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
  parser.epilog = ("--gin.NAME=VALUE (repeatable, anywhere on the line) binds a gin macro or "
                   "configurable parameter, as in T5X: --gin.TRAIN_STEPS=1000, "
                   "--gin.MODEL_DIR=/tmp/run, "
                   "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 114}\"")


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


def split_tasks_files(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--tasks_file PATH` / `--tasks_file=PATH` from the other arguments, wherever
  they stand (like `--gin.NAME=VALUE`: before or after a subcommand's own arguments).

  >>> split_tasks_files(["tasks", "show", "x", "--tasks_file", "t.yaml"])
  (['tasks', 'show', 'x'], ['t.yaml'])
  """
  rest, paths = [], []
  args = iter(argv)
  for arg in args:
    if arg == "--tasks_file":
      path = next(args, None)
      if path is None or path.startswith("-"):
        raise GinConfigError("--tasks_file needs the path of a YAML task file: "
                             "--tasks_file tasks.yaml")
      paths.append(path)
    elif arg.startswith("--tasks_file="):
      paths.append(arg.split("=", 1)[1])
    else:
      rest.append(arg)
  return rest, paths


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
  _parse_files(gin_files, gin_search_paths)
  _parse_bindings(bindings)
  if finalize:
    gin.finalize()


def _parse_files(gin_files: Sequence[str], gin_search_paths: Sequence[str]) -> None:
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
    moved = re.search(r"No module named '(trainer|tasks|mixtures)[.']", str(e))
    hint = (f"; recast 0.2 installs its modules under `recast.`: write `import recast."
            f"{moved.group(1)}...` in the gin file (e.g. `import recast.trainer.network`)"
            if moved else "")
    raise GinConfigError(f"invalid gin in {', '.join(gin_files) or 'files'}: "
                         f"{str(e).splitlines()[0] if str(e) else e}{hint}") from e


def _parse_bindings(bindings: Sequence[str]) -> None:
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      # gin's message goes on with the binding quoted over lines; its first line says it.
      reason = str(e).split("\n")[0].rstrip(".")
      hint = _configurable_hint(binding_name(binding))
      raise GinConfigError(
          f"invalid gin binding --gin.{binding}: {reason}" + (
              f"; {hint}" if hint else ". Bindings look like --gin.TRAIN_STEPS=1000 or "
              "--gin.MODEL_DIR=\"'/tmp/run'\"; names must be configurables or macros "
              "defined by the gin files")) from e


def binding_name(binding: str) -> str:
  """The name a "NAME=VALUE" binding sets (`--gin.NAME=VALUE` without its flag)."""
  return binding.split("=", 1)[0].strip()


def _configurable_hint(name: str) -> Optional[str]:
  """'did you mean ...?' for a `configurable.param` binding gin rejected, else None."""
  selector, _, param = name.rpartition("/")[2].rpartition(".")
  if not selector:
    return None
  try:
    configurable = gin.get_configurable(selector)
  except ValueError:
    registry = gin_internals._REGISTRY  # noqa: SLF001  (no public list of names)
    names = {n for full, _ in registry.items() for n in (full, full.rsplit(".", 1)[-1])}
    close = difflib.get_close_matches(selector, sorted(names), n=3)
    return f"did you mean {' or '.join(f'{c}.{param}' for c in close)}?" if close else None
  try:
    params = list(inspect.signature(configurable).parameters)
  except (TypeError, ValueError):
    return None
  close = difflib.get_close_matches(param, params, n=3)
  return f"did you mean {' or '.join(f'{selector}.{c}' for c in close)}?" if close else None


def macros_in_config(config_text: str) -> set[str]:
  """Macros a parsed gin config defines (`NAME = ...`) or refers to (`%NAME`)."""
  defined = re.findall(r"^([A-Za-z_]\w*)\s*=", config_text, flags=re.M)
  used = re.findall(r"%([A-Za-z_]\w*)", config_text)
  return set(defined) | set(used)


def check_macro_bindings(bindings: Sequence[str], *, gin_files: Sequence[str],
                         known_macros: Iterable[str] = ()) -> None:
  """Rejects a binding of a macro that nothing reads: a typo, which gin would accept by
  defining a new macro. Call it after parsing `gin_files` and before parsing `bindings`.

  A macro (`NAME`, capitals, no dot) is known when a parsed gin file defines it or refers to
  it (`%NAME`), when a binding refers to it, when code reads it (CODE_MACROS), or when it is
  in `known_macros` (e.g. the command's required macros). `configurable.param` bindings
  are left to gin, which knows its configurables.

  >>> check_macro_bindings(["TRAIN_STEP=5"], gin_files=["runs/finetune.gin"])  # doctest: +SKIP
  GinConfigError: --gin.TRAIN_STEP=5: gin macro TRAIN_STEP is neither defined nor used by
  runs/finetune.gin; did you mean TRAIN_STEPS?
  """
  known = (macros_in_config(gin.config_str()) | set(CODE_MACROS) | set(known_macros) |
           {m for b in bindings for m in re.findall(r"%([A-Za-z_]\w*)", b.split("=", 1)[-1])})
  for binding in bindings:
    name = binding_name(binding)
    if not _MACRO_NAME.fullmatch(name) or name in known:
      continue
    candidates = sorted(m for m in known if _MACRO_NAME.fullmatch(m))
    close = difflib.get_close_matches(name, candidates, n=3)
    files = ", ".join(gin_files) or "any gin file (none given)"
    raise GinConfigError(
        f"--gin.{binding}: gin macro {name} is neither defined nor used by {files}; " + (
            f"did you mean {' or '.join(close)}?" if close else
            f"known macros: {', '.join(candidates) or 'none'}"))


def _flag_values(argv: Sequence[str], flag: str) -> list[str]:
  """The values of a repeatable `--flag=V` / `--flag V` in a raw argv."""
  values = []
  for i, arg in enumerate(argv):
    if arg.startswith(flag + "="):
      values.append(arg.split("=", 1)[1])
    elif arg == flag and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def check_gin_files(argv: Sequence[str]) -> None:
  """GinConfigError for a `--gin_file` that does not exist, with the closest recast gin
  files; run on the raw argv before a subcommand's (heavy) module is imported."""
  extra = _flag_values(argv, "--gin_search_paths")
  for name in _flag_values(argv, "--gin_file"):
    if _find_gin_file(name, extra) is not None:
      continue
    known = sorted({str(f.relative_to(root)) for root in map(Path, search_paths(extra))
                    if root.is_dir() for f in root.rglob("*.gin")})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    raise GinConfigError(
        f"gin file {name!r} not found; searched the working directory and "
        f"{', '.join(search_paths(extra))}" + (f"; did you mean {' or '.join(close)}?"
                                                  if close else ""))


def _find_gin_file(name: str, extra_paths: Sequence[str]) -> Optional[str]:
  """The path gin would read for `name`: as given, else under the search paths."""
  for candidate in [name] + [os.path.join(p, name) for p in search_paths(extra_paths)]:
    if os.path.isfile(candidate):
      return candidate
  return None


def macro_value(name: str, default: Any = gin.REQUIRED) -> Any:
  """The value bound to gin macro `name`, following `%OTHER` macro references; `default`
  when it is unbound or (at the end of its references) `%gin.REQUIRED`."""
  seen = set()
  while name not in seen:
    seen.add(name)
    try:
      value = gin.query_parameter(f"{name}/macro.value")
    except ValueError:
      return default
    if _is_required(value):
      return default
    reference = repr(value) if isinstance(value, gin.config.ConfigurableReference) else ""
    if not re.fullmatch(r"%[A-Za-z_]\w*", reference):
      return value
    name = reference[1:]
  return default


def parameter_value(key: str, default: Any = gin.REQUIRED) -> Any:
  """The value bound to configurable parameter `key` (e.g. "train.task_feature_lengths"),
  following a `%MACRO` reference (`macro_value`); `default` when unbound or REQUIRED."""
  try:
    value = gin.query_parameter(key)
  except ValueError:
    return default
  reference = repr(value) if isinstance(value, gin.config.ConfigurableReference) else ""
  macro = re.fullmatch(r"%([A-Za-z_]\w*)", reference)
  if macro:
    return macro_value(macro.group(1), default)
  return default if _is_required(value) else value


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
  `--gin.NAME=VALUE` bindings and search paths, each binding of a macro checked against
  the macros the files define or use (`check_macro_bindings`), required macros checked,
  then finalized.

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
  required_macros = list(required_macros)
  _parse_files(gin_files, args.gin_search_paths)
  check_macro_bindings(args.gin_bindings, gin_files=gin_files, known_macros=required_macros)
  _parse_bindings(args.gin_bindings)
  require_macros(required_macros, run_file=", ".join(gin_files) or "the gin files")
  if finalize:
    gin.finalize()
  return gin_files


def write_config_files(model_dir: str | os.PathLike, *, operative: bool) -> None:
  """Writes `config.gin` (as parsed) or `operative_config.gin` (as used) atomically."""
  name = "operative_config.gin" if operative else "config.gin"
  text = gin.operative_config_str() if operative else gin.config_str()
  atomic_files.write_text(Path(model_dir) / name, text)
