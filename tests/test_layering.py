"""The package's structure, read off its source: the import graph has no cycle, the lower
layers import nothing above them, only the task registry reads the model kind, and the
third-party imports are the declared dependencies."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "ebt_jax"
# Layers that must not reach up (DESIGN.md, conventions), and what they must not import.
LOWER = ("ebt_jax.models", "ebt_jax.thinking", "ebt_jax.parallel")
UPPER = ("ebt_jax.tasks", "ebt_jax.training", "ebt_jax.inference", "ebt_jax.data",
         "ebt_jax.config", "ebt_jax.commands", "ebt_jax.tools", "ebt_jax.cli",
         "ebt_jax.checkpoint", "ebt_jax.official_hparams")


def _module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
  """The project module an imported name lives in (a module, or its package's attribute)."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def import_graph() -> dict[str, set[str]]:
  """module -> the project modules it imports (anywhere in the file, lazy imports too)."""
  files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  modules = set(files)
  graph = {}
  for name, path in files.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        targets = [f"{base}.{a.name}" for a in node.names]
      else:
        continue
      edges |= {t for t in (_resolve(x, modules) for x in targets) if t and t != name}
    graph[name] = edges
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of the graph, or None (iterative DFS with colours)."""
  state, parent = {}, {}
  for root in graph:
    if root in state:
      continue
    stack = [(root, iter(sorted(graph[root])))]
    state[root] = "open"
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        state[node] = "done"
        stack.pop()
      elif state.get(child) == "open":
        cycle = [child, node]
        while cycle[-1] != child:
          cycle.append(parent[cycle[-1]])
        return cycle[::-1]
      elif child not in state:
        state[child], parent[child] = "open", node
        stack.append((child, iter(sorted(graph[child]))))
  return None


@pytest.fixture(scope="module")
def graph():
  return import_graph()


def test_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) is not None
  assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_the_imports(graph):
  # A sanity check that the parser reads both import forms (or the tests below prove nothing).
  assert "ebt_jax.tasks.base" in graph["ebt_jax.tasks.text"]
  assert "ebt_jax.tasks" in graph["ebt_jax.training.program"]


def test_no_import_cycle(graph):
  assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_lower_layers_import_nothing_above(graph):
  for module, imports in graph.items():
    if module.startswith(LOWER):
      bad = sorted(i for i in imports if i.startswith(UPPER))
      assert not bad, f"{module} imports {bad}"


def test_config_knows_no_model_code(graph):
  config = graph["ebt_jax.config"]
  assert not any(i.startswith(("ebt_jax.models", "ebt_jax.tasks", "ebt_jax.thinking"))
                 for i in config), config
  assert "ebt_jax.official_hparams" not in config   # it imports the config, not both ways


def test_only_the_registry_reads_the_model_kind():
  hits = [(p.relative_to(PACKAGE.parent), line) for p in sorted(PACKAGE.rglob("*.py"))
          for line in p.read_text().splitlines() if re.search(r"\.kind\b", line)]
  assert len(hits) <= 5, hits
  allowed = {"ebt_jax/tasks/__init__.py", "ebt_jax/tasks/base.py", "ebt_jax/config.py",
             "ebt_jax/official_hparams.py"}
  assert {str(p) for p, _ in hits} <= allowed, hits


def _third_party_imports(root: Path) -> set[str]:
  """Top-level names of the non-standard, non-project modules the files under root import."""
  names = set()
  for path in root.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names.update(a.name.split(".")[0] for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module.split(".")[0])
  return {n for n in names if n not in sys.stdlib_module_names and n != "ebt_jax"}


# Packages of the official EBT repository, which tools/official_side_by_side.py imports from
# the checkout it is given.
OFFICIAL_REPO_PACKAGES = {"model"}


def _distribution(requirement: str) -> str:
  return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_package_imports_exactly_its_declared_dependencies():
  """Every third-party module the package imports belongs to a declared dependency (core or
  an extra), and every core dependency is imported: none undeclared, none unused."""
  project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
  core = {_distribution(r) for r in project["dependencies"]}
  extras = {_distribution(r) for rs in project["optional-dependencies"].values() for r in rs}
  installed = importlib.metadata.packages_distributions()
  used = set()
  for name in _third_party_imports(PACKAGE) - OFFICIAL_REPO_PACKAGES:
    # Modules of extras missing from this environment (torch) go by their own name.
    dists = {_distribution(d) for d in installed.get(name, [name])}
    assert dists & (core | extras), f"ebt_jax imports {name} ({dists}): not in pyproject.toml"
    used |= dists
  assert core <= used, f"declared but never imported: {sorted(core - used)}"
