"""The import graph of zsfinercam follows its layers, has no cycle, and the backend registry lists
names without torch.

Every import statement counts, at any depth (a function-level import is still an edge), except
those under `if TYPE_CHECKING:`, which never run.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "zsfinercam"


def module_names() -> dict[str, Path]:
    """Dotted name -> file for every module of the package (a package is its __init__)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import submodule` depends on the submodule, `from pkg import name` on pkg
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], else None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# The layers, lowest first: a module may import modules of its own layer and of the layers before
# it, never of a later one. A layer is a list of modules or packages (a package holds its modules).
LAYERS = (
    ("foundation: values every layer uses", ("zsfinercam._version", "zsfinercam.errors", "zsfinercam.config",
                                             "zsfinercam.options", "zsfinercam._registry",
                                             "zsfinercam.core.bases.registry")),
    ("images in, files out", ("zsfinercam.io",)),
    ("the maths", ("zsfinercam.core",)),
    ("backends", ("zsfinercam.backends",)),
    ("the concept head", ("zsfinercam.concepts",)),
    ("the public face", ("zsfinercam.result", "zsfinercam.compare", "zsfinercam.localizer",
                          "zsfinercam.zoom")),
    ("test and benchmark references", ("zsfinercam.testing",)),
    ("applications", ("zsfinercam.synthetic", "zsfinercam.evaluation", "zsfinercam.batch", "zsfinercam.bench",
                      "zsfinercam.lab")),
    ("the command line", ("zsfinercam.cli", "zsfinercam.__main__")),
    ("the package's lazy names", ("zsfinercam",)),
)


def layer_of(module: str) -> int:
    """Index in LAYERS of the layer holding `module` (the longest matching prefix)."""
    best = None
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and (best is None or len(member) > best[1]):
                best = (index, len(member))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a module in a later layer than the importer's."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"zsfinercam.core.engine": {"zsfinercam.localizer"}}) == [
        "zsfinercam.core.engine -> zsfinercam.localizer"]
    assert upward_imports({"zsfinercam.localizer": {"zsfinercam.core.engine", "zsfinercam.options"}}) == []


def test_no_module_imports_a_later_layer():
    names = module_names()
    graph = {name: imports_of(name, path, set(names)) for name, path in names.items()}
    assert graph["zsfinercam.localizer"] >= {"zsfinercam.core.engine"}  # the walker sees edges
    assert upward_imports(graph) == []


def test_the_package_root_holds_at_most_a_dozen_files():
    assert len(list(PACKAGE.glob("*.py"))) <= 12


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle():
    names = module_names()
    graph = {name: imports_of(name, path, set(names)) for name, path in names.items()}
    assert graph["zsfinercam.backends.open_clip"] >= {"zsfinercam.backends.open_clip_timm"}  # the walker sees edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_backend_registry_lists_names_without_importing_torch():
    """The registry and the backends package, loaded without the package's own __init__ (which
    loads the Localizer): no torch, and the built-ins are listed."""
    code = (
        "import sys, types; sys.modules['torch'] = None\n"  # any `import torch` now fails
        f"pkg = types.ModuleType('zsfinercam'); pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['zsfinercam'] = pkg\n"
        "from zsfinercam.backends import list_backends, get_backend\n"
        "print(list_backends())\n"
        "try:\n    get_backend('nope')\nexcept ValueError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['hf', 'open_clip']", "unknown backend 'nope'; choose one of: hf, open_clip"]
