"""The house's floors, read from the source: each floor imports only the floors below it
(base -> tasks/mixtures -> trainer -> jobs -> command line), no project modules import each
other in a cycle, and a private name (`_x`) is used only in its own module.

Every import statement counts, including those inside functions (an import in a function
is for a heavy optional dependency, never to dodge a cycle). Each test prints what it found.
"""

from __future__ import annotations

import ast
import dataclasses
import textwrap
from pathlib import Path
from typing import Mapping, Optional

REPO = Path(__file__).resolve().parents[1]
# Checkout folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGE_DIRS = {"recast": "recast", "tasks": "recast.tasks", "mixtures": "recast.mixtures",
                "trainer": "recast.trainer", "jobs": "recast.jobs"}
FLOOR_NAMES = ("base", "data", "trainer", "jobs", "command line")
COMMAND_LINE = {"recast.cli", "recast.__main__"}


def floor(module: str) -> int:
  """0 base (recast.errors, recast.gin_config, ...), 1 data (recast.tasks.*, recast.mixtures.*),
  2 recast.trainer.*, 3 recast.jobs.*, 4 the command line (recast.cli, recast.__main__)."""
  if module in COMMAND_LINE:
    return 4
  for prefix, rank in (("recast.jobs", 3), ("recast.trainer", 2), ("recast.tasks", 1),
                       ("recast.mixtures", 1)):
    if module == prefix or module.startswith(prefix + "."):
      return rank
  return 0


@dataclasses.dataclass(frozen=True)
class Import:
  """One import of a project module by another: `source` imports `target` at `line`."""
  source: str
  target: str
  line: int
  in_function: bool

  def __str__(self) -> str:
    where = " (inside a function)" if self.in_function else ""
    return f"{self.source} -> {self.target}  [{self.path}:{self.line}{where}]"

  @property
  def path(self) -> str:
    return _PATHS.get(self.source, self.source)


_PATHS: dict[str, str] = {}  # module -> its file, for messages


def modules_under(package_dirs: Mapping[Path, str]) -> dict[str, Path]:
  """Module name -> file, for every .py under each folder (`tasks/x.py` -> `recast.tasks.x`)."""
  found = {}
  for folder, package in package_dirs.items():
    for path in sorted(Path(folder).rglob("*.py")):
      parts = list(path.relative_to(folder).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts.pop()
      found[".".join([package, *parts])] = path
  return found


def _imports_in_functions(tree: ast.AST) -> set[int]:
  """Ids of the import nodes that sit inside a function body."""
  inside = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      inside |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
  return inside


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
  """The module an ImportFrom names, with relative imports (`from . import x`) resolved."""
  if not node.level:
    return node.module or ""
  parts = module.split(".") if is_package else module.split(".")[:-1]
  base = parts[:len(parts) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


@dataclasses.dataclass
class Scan:
  """What the walker read: every project-to-project import, and every private name one
  module takes from another (`from m import _x`, `m._x`)."""
  imports: list[Import]
  private_uses: list[str]


def scan(package_dirs: Mapping[Path, str]) -> Scan:
  modules = modules_under(package_dirs)
  imports, private_uses = [], []
  for module, path in modules.items():
    shown = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    _PATHS[module] = shown
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_function = _imports_in_functions(tree)
    aliases: dict[str, str] = {}  # local name -> project module it is bound to

    def add(target: str, node: ast.AST) -> None:
      if target in modules and target != module:
        imports.append(Import(module, target, node.lineno, id(node) in in_function))

    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for alias in node.names:
          add(_nearest_module(alias.name, modules), node)
          if alias.asname:
            aliases[alias.asname] = alias.name
          else:  # `import recast.tasks.x` binds `recast`
            top = alias.name.split(".")[0]
            aliases.setdefault(top, top)
      elif isinstance(node, ast.ImportFrom):
        origin = _absolute(module, path.name == "__init__.py", node)
        for alias in node.names:
          submodule = f"{origin}.{alias.name}"
          if submodule in modules:
            add(submodule, node)
            aliases[alias.asname or alias.name] = submodule
          else:
            add(_nearest_module(origin, modules), node)
            if (_is_private(alias.name) and _nearest_module(origin, modules) in modules
                and origin != module):
              private_uses.append(f"{module} imports {alias.name} from {origin}  "
                                  f"[{shown}:{node.lineno}]")
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and _is_private(node.attr):
        owner = _dotted(node.value)
        if owner is None or owner.split(".")[0] not in aliases:
          continue
        head, _, rest = owner.partition(".")
        target = ".".join(filter(None, [aliases[head], rest]))
        if target in modules and target != module:
          private_uses.append(f"{module} uses {target}.{node.attr}  [{shown}:{node.lineno}]")
  return Scan(imports, private_uses)


def _nearest_module(name: str, modules: Mapping[str, Path]) -> str:
  """The longest prefix of a dotted name that is a project module ('' when none)."""
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    if ".".join(parts[:end]) in modules:
      return ".".join(parts[:end])
  return ""


def _is_private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> Optional[str]:
  """`a.b.c` for a chain of attribute accesses on a name, else None."""
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    inner = _dotted(node.value)
    return None if inner is None else f"{inner}.{node.attr}"
  return None


def cycles(imports: list[Import]) -> list[list[Import]]:
  """One cycle (as the imports that close it) per strongly connected component of more
  than one module (Tarjan's algorithm over the import graph)."""
  graph: dict[str, list[Import]] = {}
  for imp in imports:
    graph.setdefault(imp.source, []).append(imp)
    graph.setdefault(imp.target, [])
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def connect(node: str) -> None:  # recursion depth <= number of modules (~60)
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for imp in graph[node]:
      if imp.target not in index:
        connect(imp.target)
        low[node] = min(low[node], low[imp.target])
      elif imp.target in on_stack:
        low[node] = min(low[node], index[imp.target])
    if low[node] == index[node]:
      component = set()
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.add(member)
        if member == node:
          break
      if len(component) > 1:
        components.append(component)

  for node in sorted(graph):
    if node not in index:
      connect(node)
  return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: Mapping[str, list[Import]], component: set[str]) -> list[Import]:
  """A shortest path from the component's first module back to itself, inside it."""
  start = min(component)
  paths = {start: []}
  frontier = [start]
  while frontier:
    next_frontier = []
    for node in frontier:
      for imp in sorted(graph[node], key=lambda i: (i.target, i.line)):
        if imp.target not in component:
          continue
        if imp.target == start:
          return paths[node] + [imp]
        if imp.target not in paths:
          paths[imp.target] = paths[node] + [imp]
          next_frontier.append(imp.target)
    frontier = next_frontier
  raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def climbing(imports: list[Import]) -> list[Import]:
  """Imports of a module on a higher floor than the importer's."""
  return [i for i in imports if floor(i.target) > floor(i.source)]


def _report(title: str, lines: list[str]) -> str:
  text = f"{title}: {len(lines)}" + "".join(f"\n  {line}" for line in lines)
  print(text)
  return text


def _project() -> Scan:
  return scan({REPO / folder: package for folder, package in PACKAGE_DIRS.items()})


# ------------------------------------------------------------------------------- the house


def test_the_walker_sees_every_floor():
  found = modules_under({REPO / folder: package for folder, package in PACKAGE_DIRS.items()})
  assert {"recast.errors", "recast.cli", "recast.tasks.task_files", "recast.mixtures.lookup",
          "recast.trainer.train", "recast.jobs.sweep"} <= set(found)
  assert {floor(m) for m in found} == {0, 1, 2, 3, 4}
  assert len(_project().imports) > 50  # the walker reads imports at all


def test_no_import_climbs_a_floor():
  offending = climbing(_project().imports)
  message = _report("imports that climb a floor", [
      f"{i}  ({FLOOR_NAMES[floor(i.source)]} imports {FLOOR_NAMES[floor(i.target)]})"
      for i in sorted(offending, key=str)])
  assert not offending, message


def test_no_import_cycles():
  found = cycles(_project().imports)
  message = _report("import cycles", [
      " -> ".join([cycle[0].source] + [i.target for i in cycle]) + "".join(
          f"\n      {i}" for i in cycle) for cycle in found])
  assert not found, message


def test_private_names_stay_in_their_module():
  uses = sorted(set(_project().private_uses))
  message = _report("private names used outside their module", uses)
  assert not uses, message


# ---------------------------------------------------------------- the walker can say no


def _write(folder: Path, files: Mapping[str, str]) -> None:
  for name, text in files.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text))


def test_the_walker_finds_a_cycle_a_climb_and_a_private_name(tmp_path):
  _write(tmp_path / "toy", {
      "__init__.py": "",
      "a.py": "from toy import b\n",
      "b.py": """\
          import os

          def late():
            from toy import a  # a function-level import still closes the cycle
            return a._hidden, os.sep
          """,
      "c.py": "from toy.a import _secret\nfrom toy import d\n",
      "d.py": "",
  })
  found = scan({tmp_path / "toy": "toy"})
  (cycle,) = cycles(found.imports)
  assert [(i.source, i.target, i.in_function) for i in cycle] == [
      ("toy.a", "toy.b", False), ("toy.b", "toy.a", True)]
  assert sorted(p.split("  [")[0] for p in found.private_uses) == [
      "toy.b uses toy.a._hidden", "toy.c imports _secret from toy.a"]

  _write(tmp_path / "house", {"tasks/x.py": "from recast.jobs import sweep\n",
                              "jobs/sweep.py": "from recast.tasks import x\n"})
  house = scan({tmp_path / "house/tasks": "recast.tasks", tmp_path / "house/jobs": "recast.jobs"})
  assert [(i.source, i.target) for i in climbing(house.imports)] == [
      ("recast.tasks.x", "recast.jobs.sweep")]
  assert len(cycles(house.imports)) == 1
