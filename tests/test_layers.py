"""The package's layers import downwards only, without cycles (DESIGN.md, "Layers").

The import graph is read from the source (every `import`, including those inside functions), so a
lazy import cannot hide an upward dependency.
"""
import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "safecomp"

# Lowest first. A module may import its own layer and the layers below it; entry points (the
# command-line programs) may import anything.
LAYERS = (
    ("constants", "errors", "config", "prompts"),
    ("models", "tokenizers", "spec"),
    ("rewards", "rl"),
    ("testbed",),
    ("data", "graders"),
    ("tasks",),
    ("parallel",),
    ("eval",),
    ("training",),
    ("train", "grade", "export", "datagen", "memory", "eval.cli", "eval.__main__"),
)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """{module: the safecomp modules it imports} (a `from pkg import name` of a submodule counts as that
  submodule, otherwise as the package)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING") for n in ast.walk(block)}
    for node in ast.walk(tree):
      if id(node) in type_only:  # annotations only: no import at run time
        continue
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(anchor + ([node.module] if node.module else []))
        for a in node.names:
          targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def layer_of(module: str) -> int | None:
  """The layer of a module: that of the longest name in `LAYERS` it is or lies under (the package
  itself is below every layer)."""
  if module == "safecomp":
    return -1
  rest = module.removeprefix("safecomp.")
  matches = [(len(n), level) for level, names in enumerate(LAYERS) for n in names
             if rest == n or rest.startswith(n + ".")]
  return max(matches)[1] if matches else None


def test_every_module_has_a_layer():
  assert not [m for m in import_graph() if layer_of(m) is None]


def test_imports_go_downwards():
  upward = sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, targets in import_graph().items() for b in targets if layer_of(b) > layer_of(a))
  assert not upward, "\n".join(upward)


def test_no_import_cycles():
  graph = import_graph()
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


HOST_SIDE = ("safecomp.config", "safecomp.spec", "safecomp.tokenizers", "safecomp.rewards.composite",
             "safecomp.rewards.mode_classifier", "safecomp.testbed", "safecomp.data", "safecomp.graders",
             "safecomp.tasks", "safecomp.eval", "safecomp.grade", "safecomp.datagen")


def test_host_side_modules_do_not_import_jax():
  """Each in a fresh interpreter (all at once), as a user's script would import it."""
  code = "import importlib, sys; importlib.import_module(sys.argv[1]); sys.exit('jax' in sys.modules)"
  procs = {m: subprocess.Popen([sys.executable, "-c", code, m], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for m in HOST_SIDE}
  failed = {m: p.communicate()[1][-500:] for m, p in procs.items() if p.wait() != 0}
  assert not failed, f"importing these loads jax (or fails): {failed}"
