"""The package's import graph, read with ast (deferred imports inside functions count too): no cycle, and
every import goes down the layers the architecture page lists."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unet_jax")
LAYERS = ("errors", "io", "scores", "network", "inference", "training", "reports", "explain", "export", "config",
          "tuning", "cli", "viewer")  # docs/architecture.md: each imports only from those before it, or within itself


def modules() -> dict[str, str]:
  """{'unet_jax.io.data': path, ...} of every module of the package."""
  found = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def imports(path: str, known: set[str]) -> set[str]:
  """The package modules `path` imports, anywhere in it (a `from p import m` of a module counts as m)."""
  targets = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return {t for t in targets if t in known}


def graph() -> dict[str, set[str]]:
  found = modules()
  return {m: imports(p, set(found)) - {m} for m, p in found.items()}


def layer(module: str) -> int:
  parts = module.split(".")
  return LAYERS.index(parts[1]) if len(parts) > 1 else -1  # the package's __init__ sits below everything


def test_no_cycles():
  edges = graph()
  state: dict[str, int] = {}
  def visit(node: str, path: list[str]) -> None:
    state[node] = 1
    for nxt in sorted(edges[node]):
      if state.get(nxt) == 1:
        pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 2
  for module in sorted(edges):
    if module not in state:
      visit(module, [module])


def test_imports_only_go_down_the_layers():
  assert sorted({m.split(".")[1] for m in modules() if m.count(".")}) == sorted(LAYERS[1:] + ("errors",))
  upward = [f"{m} imports {t}" for m, targets in graph().items() for t in targets if layer(t) > layer(m)]
  assert not upward, "\n".join(upward)


def test_the_checks_see_a_cycle(monkeypatch):
  fake = {"unet_jax.io.a": {"unet_jax.io.b"}, "unet_jax.io.b": {"unet_jax.io.a"}}
  monkeypatch.setitem(globals(), "graph", lambda: fake)
  with pytest.raises(pytest.fail.Exception, match="import cycle"):
    test_no_cycles()
  fake = {"unet_jax.io.a": {"unet_jax.cli.common"}, "unet_jax.cli.common": set()}
  monkeypatch.setitem(globals(), "graph", lambda: fake)
  monkeypatch.setitem(globals(), "modules", lambda: {"unet_jax.errors": "", **{
      f"unet_jax.{name}.x": "" for name in LAYERS[1:]}})
  with pytest.raises(AssertionError, match="unet_jax.io.a imports unet_jax.cli.common"):
    test_imports_only_go_down_the_layers()
